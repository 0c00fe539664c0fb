"""Turn raw cases (AutoPET-II, case folders, phantoms) into the prepared dataset training reads.

Per case: validate; build the engine's model grid (axis-aligned, the body plus 10 mm, at least one patch,
grown if needed to hold every lesion voxel); resample CT (linear, -1000 HU outside) and PET (linear, 0
outside) onto it with the engine's function, the label and the organ map (where the case has one) by
nearest neighbour; save.
Then split, and compute the normalisation constants from the training split only.
Every bad case is reported; none is dropped unless the user asks for it (`skip_bad`), and then the
dropped cases are listed in dataset.json.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .case import CaseFiles, DataError
from .normstats import CaseStats, case_stats, normalization
from .prepared import CASES_DIR, DATASET_FILE, FORMAT, save_case
from .splits import assign_splits

NAME_PREFIX = {"synthetic": "synth", "real_background": "realbg", "ibsi": "ibsi", "autopet": "autopet",
               "folder": "case"}

IBSI_ATTRIBUTION = (
    "Real FDG-PET/CT cases: IBSI validation data set (Image Biomarker Standardisation Initiative), derived "
    "from the TCIA Soft-tissue-Sarcoma collection, CC BY 3.0. Please cite: "
    "Vallieres M, Freeman CR, Skamene SR, El Naqa I (2015). A radiomics model from joint FDG-PET and MRI "
    "texture features for the prediction of lung metastases in soft-tissue sarcomas of the extremities. "
    "The Cancer Imaging Archive. DOI: 10.7937/K9/TCIA.2015.7GO2GSKS; "
    "Vallieres M, Freeman CR, Skamene SR, El Naqa I (2015). A radiomics model from joint FDG-PET and MRI "
    "texture features for the prediction of lung metastases in soft-tissue sarcomas of the extremities. "
    "Physics in Medicine and Biology 60(14):5471. DOI: 10.1088/0031-9155/60/14/5471; "
    "Clark K, Vendt B, Smith K, et al. The Cancer Imaging Archive (TCIA): Maintaining and Operating a "
    "Public Information Repository. Journal of Digital Imaging 26(6):1045-1057, 2013. "
    "DOI: 10.1007/s10278-013-9622-7."
).replace("Vallieres", "Valli\u00e8res")
AUTOPET_ATTRIBUTION = (
    "AutoPET-II data: the FDG-PET-CT-Lesions collection of The Cancer Imaging Archive "
    "(Gatidis S, Kuestner T, DOI: 10.7937/gkr0-xv29; Gatidis S et al., Scientific Data 9:601, 2022); "
    "use it under the collection's licence and cite it."
)
SYNTHETIC_ATTRIBUTION = "Synthetic whole-body PET/CT phantoms from `veloxseg-train synth` (no patient data)."
FOLDER_ATTRIBUTION = "Cases from user-supplied folders: check and cite their licences."


@dataclass(frozen=True)
class PrepareOptions:
    spacing_xyz: Tuple[float, float, float] = (2.036, 2.036, 3.0)
    patch_size_zyx: Tuple[int, int, int] = (96, 96, 96)  # as at inference: grids at least one patch wide
    compress: bool = False
    pet_clip_high: float = 30.0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0
    workers: int = 1
    skip_bad: bool = False
    # Constants to keep instead of computing them (a resumed run must see its inputs scaled as before).
    normalization: Optional[dict] = None


class DatasetError(ValueError):
    """Some cases are unusable; `errors` lists one message per case."""

    def __init__(self, errors: List[str]):
        self.errors = errors
        super().__init__(f"{len(errors)} case(s) cannot be used:\n  " + "\n  ".join(errors))


def output_names(cases: Sequence[CaseFiles]) -> List[str]:
    """Unique, file-system-safe names: source prefix + case name (+ _2, _3 ... on a clash)."""
    names, seen = [], set()
    for case in cases:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{NAME_PREFIX[case.source]}_{case.name}")
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append(name)
    return names


def prepare_case(files: CaseFiles, name: str, out_dir: Path, options: PrepareOptions) -> Tuple[dict, CaseStats]:
    """Validate, resample, crop and save one case; returns its dataset.json record and its statistics."""
    import SimpleITK as sitk

    from VeloxSegSlicerLib.engine import CT_AIR_HU, IDENTITY, PET_OUTSIDE, InputError, model_grid, resample_to_grid

    from .geometry import body_mask, foreground_box, grid_covering
    from .validate import load_case, read_image

    case = load_case(files)
    threads = 1 if options.workers > 1 else 0
    try:
        grid = model_grid(case.ct, case.pet, options.spacing_xyz, options.patch_size_zyx)
    except InputError as exc:
        raise DataError(files.name, str(exc)) from None
    lesion_box = foreground_box(case.label)
    if lesion_box is not None:
        grid = grid_covering(grid, lesion_box)  # the body crop must never cut a lesion off
    ct = sitk.GetArrayFromImage(resample_to_grid(case.ct, grid, CT_AIR_HU, threads))
    pet = sitk.GetArrayFromImage(resample_to_grid(case.pet, grid, PET_OUTSIDE, threads))
    label = sitk.GetArrayFromImage(resample_to_grid(case.label, grid, 0, threads, sitk.sitkNearestNeighbor,
                                                    sitk.sitkUInt8))
    original_lesion = int(np.count_nonzero(sitk.GetArrayViewFromImage(case.label)))
    if original_lesion and not label.any():
        raise DataError(files.name, f"its {original_lesion} lesion voxels vanish on the "
                                    f"{options.spacing_xyz} mm model grid (lesions smaller than a voxel)")
    np.maximum(pet, 0.0, out=pet)  # interpolation can undershoot; SUV is never negative
    organs = None
    if files.organs is not None:
        organ_image = read_image(files.name, "organ map", files.organs)
        organs = sitk.GetArrayFromImage(resample_to_grid(organ_image, grid, 0, threads, sitk.sitkNearestNeighbor,
                                                         sitk.sitkUInt8))
    save_case(out_dir / CASES_DIR / f"{name}.npz", ct, pet, label, grid.spacing, grid.origin, IDENTITY,
              compress=options.compress, organs=organs)
    lesion_voxels = int(np.count_nonzero(label))
    record = {"name": name, "source": files.source, "split": None, "file": f"{CASES_DIR}/{name}.npz",
              "shape_zyx": list(label.shape), "lesion_voxels": lesion_voxels, "lesion_free": lesion_voxels == 0,
              "organs": organs is not None,
              "original": {"case": files.name, "ct": str(files.ct), "pet": str(files.pet),
                           "label": str(files.label), "organs": str(files.organs) if files.organs else None}}
    return record, case_stats(ct, pet, body_mask(ct), options.pet_clip_high)


def _worker(job):
    files, name, out_dir, options = job
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1 if options.workers > 1 else 0)
    try:
        return prepare_case(files, name, out_dir, options)
    except DataError as exc:
        return str(exc)


def _attribution(sources: set) -> str:
    if "real_background" in sources:  # synthetic lesions inserted into IBSI studies
        sources = set(sources) | {"ibsi"}
    parts = [text for source, text in (("ibsi", IBSI_ATTRIBUTION), ("autopet", AUTOPET_ATTRIBUTION),
                                       ("synthetic", SYNTHETIC_ATTRIBUTION), ("folder", FOLDER_ATTRIBUTION))
             if source in sources]
    return "\n".join(parts)


def prepare_dataset(cases: Sequence[CaseFiles], out_dir: Path, options: Optional[PrepareOptions] = None,
                    progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Prepare every case, split, compute the constants, write dataset.json; returns its content."""
    options = options or PrepareOptions()
    if not cases:
        raise DatasetError(["no cases given"])
    out_dir = Path(out_dir)
    (out_dir / CASES_DIR).mkdir(parents=True, exist_ok=True)
    names = output_names(cases)
    jobs = [(files, name, out_dir, options) for files, name in zip(cases, names)]
    results: list = []
    if options.workers > 1 and len(jobs) > 1:
        with multiprocessing.Pool(min(options.workers, len(jobs))) as pool:
            for result in pool.imap(_worker, jobs):
                results.append(result)
                if progress:
                    progress(len(results), len(jobs))
    else:
        for job in jobs:
            results.append(_worker(job))
            if progress:
                progress(len(results), len(jobs))

    errors = [r for r in results if isinstance(r, str)]
    if errors and not options.skip_bad:
        raise DatasetError(errors)
    done = [r for r in results if not isinstance(r, str)]
    if not done:
        raise DatasetError(errors or ["no case could be prepared"])
    records = [record for record, _ in done]
    stats: Dict[str, CaseStats] = {record["name"]: s for record, s in done}

    splits = assign_splits([(r["name"], r["source"], r["lesion_free"]) for r in records],
                           options.val_fraction, options.test_fraction, options.seed)
    total = CaseStats()
    for record in records:
        record["split"] = splits[record["name"]]
        if record["split"] == "train":
            total += stats[record["name"]]

    counts = {split: sum(r["split"] == split for r in records) for split in ("train", "val", "test")}
    dataset = {
        "format": FORMAT,
        "spacing_xyz_mm": [float(s) for s in options.spacing_xyz],
        "normalization": options.normalization or normalization(total, options.pet_clip_high),
        "normalization_method": ("given (prepare --normalization), not computed from these cases; "
                                 if options.normalization else "")
        + "CT: clip to p0.5/p99.5 of HU over the body voxels of the train split, then their mean/std; PET: clip "
          "to [0, clip_high] SUV, mean/std over the same voxels. Apply as (clip(x, low, high) - mean) / std.",
        "statistics": {"train_body_voxels": int(total.pet_count), "splits": counts,
                       "seed": options.seed, "val_fraction": options.val_fraction,
                       "test_fraction": options.test_fraction},
        "attribution": _attribution({r["source"] for r in records}),
        "excluded": errors,
        "cases": records,
    }
    (out_dir / DATASET_FILE).write_text(json.dumps(dataset, indent=1, ensure_ascii=False), encoding="utf-8")
    return dataset
