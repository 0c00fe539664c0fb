"""Evaluate a model on cases with ground truth, next to simple PET threshold baselines.

The model is an exported ONNX model (its manifest .json, run by the engine) or a training checkpoint
(.pt, run in PyTorch). Both go through the engine's `segment_study` — the same resampling, normalisation,
sliding window (overlap 0.25, uniform logit averaging, as the reference) and mapping back to the scan grids
as in the Slicer extension; a checkpoint only swaps the ONNX session for a torch forward.

Cases come from a prepared data set (a folder with dataset.json; `split` picks e.g. the test split), the
AutoPET-II nnU-Net raw layout, a `veloxseg-train synth` output folder, or a folder with one sub-folder per
case (CT, PET in SUV, label). Metrics are computed on the label's own grid (see `metrics`).

Site accuracy (models with an organ output, cases with an organ map, e.g. phantoms): for every true lesion
the model finds, the site the engine names for the predicted lesion overlapping it most is compared with
the site of the organ code most frequent under the true lesion (data/organs.py SITE_NAMES).

Threshold baselines, on the same grid, restricted to the body (CT > -500 HU; the whole image if the CT
shows no body):
- suv2.5: SUV >= 2.5.          - suv4.0: SUV >= 4.0.
- suv41: SUV >= 41 % of the case's SUVmax within the body (one threshold per case; on a whole-body scan
  SUVmax is often the brain or bladder, so this is a deliberately simple, per-case rule).
- suv41_cc: per lesion candidate, the clinical 41 % rule: each 18-connected component of SUV >= 2.5 keeps
  its voxels >= 41 % of that component's own SUVmax.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the library's conventional alias
from scipy import ndimage

from .metrics import SIZE_BINS_ML, case_metrics, json_safe, summarize

BODY_CT_HU = -500.0
BASELINES = ("suv2.5", "suv4.0", "suv41", "suv41_cc")
DEFAULT_SPACING_XYZ_MM = (2.036, 2.036, 3.0)
METRIC_COLUMNS = ["dice", "hd95_mm", "precision", "recall", "fp_volume_ml", "fn_volume_ml", "true_volume_ml",
                  "pred_volume_ml", "tp_voxels", "fp_voxels", "fn_voxels", "true_lesions", "found_lesions",
                  *[f"{what}_lesions_{size}" for _, _, size in SIZE_BINS_ML for what in ("true", "found")],
                  "pred_components", "reported_lesions"]


class EvaluationError(ValueError):
    """The model or the cases cannot be evaluated; the message says which and why."""


@dataclass
class EvalCase:
    name: str
    source: str
    ct: sitk.Image  # HU
    pet: sitk.Image  # SUV
    label: sitk.Image  # 0/1 ground truth
    organs: Optional[sitk.Image] = None  # organ codes (data/organs.py), where the case has a map


# --------------------------------------------------------------------------- models
class TorchModel:
    """A checkpoint behind the engine's model interface (manifest, run, device, threads)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", threads: int = 1,
                 spacing_xyz_mm: Optional[Sequence[float]] = None):
        import torch

        from VeloxSegSlicerLib.engine import Manifest

        from .checkpoint import load_checkpoint, model_from_checkpoint

        payload = load_checkpoint(checkpoint)
        self.network = model_from_checkpoint(payload).eval()
        self.torch_device = torch.device("cuda" if device == "cuda" else "cpu")
        self.network.to(self.torch_device)
        if threads and self.torch_device.type == "cpu":
            torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # denormals slow real-data CPU inference ~10x (see trainer.py)
        extra = payload.get("extra") or {}
        spacing = spacing_xyz_mm or extra.get("spacing_xyz_mm")
        self.spacing_note = "" if spacing else (
            f"the checkpoint records no grid spacing; using {DEFAULT_SPACING_XYZ_MM} mm (pass --spacing)")
        normalization = payload.get("normalization") or {}
        if not all(m in normalization for m in ("CT", "PET")):
            raise EvaluationError(f"{checkpoint} holds no CT/PET normalisation constants")
        organ_entries = {}
        if self.network.cfg.n_organs:  # the same entries export writes: the engine names sites from them
            from .data.organs import ORGAN_NAMES, SITE_NAMES

            organ_entries = dict(organ_output="organs", organ_downsampling=self.network.cfg.patch_size,
                                 organ_names=tuple(ORGAN_NAMES), organ_sites=tuple(SITE_NAMES[n] for n in ORGAN_NAMES))
        self.manifest = Manifest(
            path=Path(checkpoint), model_name="VeloxSeg", model_version="checkpoint", onnx_path=Path(),
            onnx_sha256="", input_name="image", output_name="logits", dynamic_batch=True,
            patch_size_zyx=tuple(int(s) for s in self.network.cfg.input_size),
            spacing_xyz_mm=tuple(float(s) for s in (spacing or DEFAULT_SPACING_XYZ_MM)),
            modalities=("CT", "PET"), class_names=("background", "lesion"),
            normalization={m: {k: float(normalization[m][k]) for k in ("clip_low", "clip_high", "mean", "std")}
                           for m in ("CT", "PET")}, **organ_entries)
        self.device = "gpu" if self.torch_device.type == "cuda" else "cpu"
        self.threads = threads
        self.fallback_reason = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
            return self.network(x).float().cpu().numpy()

    def run_with_organs(self, batch: np.ndarray) -> tuple:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
            logits, organs = self.network.forward_with_organs(x)
            return logits.float().cpu().numpy(), organs.float().cpu().numpy()


def load_any_model(path: str | Path, device: str = "cpu", threads: int = 1,
                   spacing_xyz_mm: Optional[Sequence[float]] = None):
    """An ONNX manifest (.json) through the engine, or a checkpoint (.pt) as a TorchModel."""
    path = Path(path)
    if path.suffix == ".json":
        from VeloxSegSlicerLib.engine import load_model

        return load_model(path, device="gpu" if device == "cuda" else "cpu", threads=threads)
    if path.suffix in (".pt", ".pth"):
        return TorchModel(path, device, threads, spacing_xyz_mm)
    raise EvaluationError(f"{path}: give a checkpoint (.pt) or an ONNX model's manifest (.json)")


# --------------------------------------------------------------------------- cases
def _prepared_cases(root: Path, split: Optional[str]) -> Iterator[EvalCase]:
    from .training_data import check_case, read_case, read_dataset

    dataset = read_dataset(root)
    cases = [c for c in dataset.cases if split is None or c.split == split]
    if not cases:
        raise EvaluationError(f"{root}: no cases" + (f" in split '{split}'" if split else ""))
    for case in cases:
        prepared = read_case(case)
        check_case(case.name, prepared.ct, prepared.pet, prepared.label, case.shape_zyx, case.lesion_free)
        yield EvalCase(case.name, case.source or "prepared", prepared.to_image(prepared.ct),
                       prepared.to_image(prepared.pet), prepared.to_image(prepared.label),
                       prepared.to_image(prepared.organs) if prepared.organs is not None else None)


def iter_cases(root: str | Path, split: Optional[str] = None) -> Iterator[EvalCase]:
    """Cases of any supported layout (see the module docstring), loaded and checked one at a time."""
    from .data.sources import SYNTHETIC_MANIFEST, find_autopet_cases, find_folder_cases, find_synthetic_cases
    from .data.validate import load_case, read_image

    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"{root} is not a folder of cases")
    if (root / "dataset.json").is_file():
        yield from _prepared_cases(root, split)
        return
    if split:
        raise EvaluationError(f"--split only applies to a prepared data set (dataset.json); {root} is not one")
    if (root / "imagesTr").is_dir():
        files = find_autopet_cases(root)
    elif (root / SYNTHETIC_MANIFEST).is_file():
        files = find_synthetic_cases(root)
    else:
        files = find_folder_cases(root)
    for entry in files:
        loaded = load_case(entry)
        organs = read_image(entry.name, "organ map", entry.organs) if entry.organs is not None else None
        yield EvalCase(loaded.name, loaded.source, loaded.ct, loaded.pet, loaded.label, organs)


# --------------------------------------------------------------------------- predictions
def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def on_grid(image: sitk.Image, reference: sitk.Image, default: float, nearest: bool = False) -> np.ndarray:
    """(z, y, x) array of `image` on `reference`'s grid (a copy; resampled only when the grids differ)."""
    if not _same_grid(image, reference):
        image = sitk.Resample(image, reference, sitk.Transform(),
                              sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, float(default),
                              image.GetPixelID() if nearest else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(image)


def threshold_baselines(pet: np.ndarray, ct: np.ndarray) -> Dict[str, np.ndarray]:
    """The baseline masks of the module docstring, on the grid of the given SUV and HU arrays."""
    body = ct > BODY_CT_HU
    if not body.any():
        body = np.ones_like(body)
    suv = np.where(body, pet, 0.0)
    suv_max = float(suv.max())
    masks = {
        "suv2.5": suv >= 2.5,
        "suv4.0": suv >= 4.0,
        "suv41": (suv >= 0.41 * suv_max) & body if suv_max > 0 else np.zeros_like(body),
    }
    candidates, n = ndimage.label(suv >= 2.5, structure=ndimage.generate_binary_structure(3, 2))
    if n:
        component_max = ndimage.maximum(suv, candidates, index=np.arange(n + 1))
        component_max[0] = np.inf  # background never passes
        masks["suv41_cc"] = (candidates > 0) & (suv >= 0.41 * component_max[candidates])
    else:
        masks["suv41_cc"] = np.zeros_like(body)
    return masks


@dataclass(frozen=True)
class TableRule:
    """Which lesions the lesion table reports: at least `min_ml` (MTV) and an SUVmax of at least `min_suv_max`."""

    min_ml: float = 0.0
    min_suv_max: float = 0.0

    @property
    def name(self) -> str:
        return f"model[ml>={self.min_ml:g},suvmax>={self.min_suv_max:g}]"

    def keeps(self, lesion) -> bool:
        return lesion.mtv_ml >= self.min_ml and lesion.suv_max >= self.min_suv_max


def predict_lesions(case: EvalCase, model, overlap: float, blending: str):
    """(lesion ids on the label grid, the engine's per-lesion statistics): every lesion the network finds."""
    from VeloxSegSlicerLib.engine import SegmentOptions, VeloxSegError, segment_study

    try:
        # no lesion-table rule here: the engine's default one would hide what "model" and each --rule score
        options = SegmentOptions(overlap=overlap, blending=blending, min_lesion_ml=0.0, min_suv_max=0.0)
        result = segment_study(case.ct, case.pet, model, options)
    except VeloxSegError as error:
        raise EvaluationError(f"case {case.name}: {error}") from None
    source = result.label_ct if _same_grid(case.label, case.ct) else result.label_pet
    return on_grid(source, case.label, 0, nearest=True), result.lesions


def site_agreement(ids: np.ndarray, lesions, truth: np.ndarray, organs: Optional[np.ndarray]) -> Dict[str, int]:
    """{site_correct, site_judged} over the true lesions the model found (module docstring); both 0 when the
    model names no sites or the case has no organ map."""
    site_of = {lesion.id: getattr(lesion, "site", "") for lesion in lesions}
    if organs is None or not any(site_of.values()):
        return {"site_correct": 0, "site_judged": 0}
    from .data.organs import ORGAN_NAMES, SITE_NAMES

    components, n = ndimage.label(truth, structure=ndimage.generate_binary_structure(3, 2))
    correct = judged = 0
    for index, region in enumerate(ndimage.find_objects(components), start=1):
        inside = components[region] == index
        hit = ids[region][inside]
        hit = hit[hit > 0]
        if hit.size == 0:
            continue  # missed: counted by the lesion sensitivity, not here
        predicted = site_of.get(int(np.bincount(hit).argmax()), "")
        code = int(np.bincount(organs[region][inside].astype(np.int64)).argmax())
        expected = SITE_NAMES[ORGAN_NAMES[code]] if code < len(ORGAN_NAMES) else ""
        judged += 1
        correct += predicted == expected
    return {"site_correct": correct, "site_judged": judged}


def apply_rule(ids: np.ndarray, lesions, rule: TableRule):
    """(mask, reported lesion count) of the lesions `rule` keeps."""
    kept = [lesion.id for lesion in lesions if rule.keeps(lesion)]
    return np.isin(ids, kept) if kept else np.zeros(ids.shape, bool), len(kept)


def predict_on_label_grid(case: EvalCase, model, overlap: float, min_lesion_ml: float,
                          blending: str) -> np.ndarray:
    ids, lesions = predict_lesions(case, model, overlap, blending)
    return apply_rule(ids, lesions, TableRule(min_lesion_ml))[0]


# --------------------------------------------------------------------------- the whole evaluation
def evaluate(model_path: str | Path, cases_dir: str | Path, out_dir: str | Path, device: str = "cpu",
             threads: int = 1, split: Optional[str] = None, overlap: float = 0.25, min_lesion_ml: float = 0.0,
             blending: str = "uniform", spacing_xyz_mm: Optional[Sequence[float]] = None,
             log=print, min_suv_max: float = 0.0,
             rules: Sequence[TableRule] = ()) -> Dict[str, Dict[str, float]]:
    """Write per_case.csv, summary.csv and summary.json into out_dir; return the summary.

    "model" keeps the lesions of (min_lesion_ml, min_suv_max); each of `rules` adds a method that keeps
    those of its own rule, from the same network output (one run per case)."""
    model = load_any_model(model_path, device, threads, spacing_xyz_mm)
    if getattr(model, "spacing_note", ""):
        log(f"Warning: {model.spacing_note}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, object]] = []
    for case in iter_cases(cases_dir, split):
        truth = sitk.GetArrayFromImage(case.label) > 0
        spacing_zyx = tuple(reversed(case.label.GetSpacing()))
        started = time.perf_counter()
        ids, lesions = predict_lesions(case, model, overlap, blending)
        seconds = time.perf_counter() - started
        reported = {}
        masks = {}
        sites = {}  # per model method: the site agreement of the lesions its rule keeps
        organs = on_grid(case.organs, case.label, 0, nearest=True) if case.organs is not None else None
        for rule in [TableRule(min_lesion_ml, min_suv_max), *rules]:
            name = "model" if not masks else rule.name
            masks[name], reported[name] = apply_rule(ids, lesions, rule)
            sites[name] = site_agreement(np.where(masks[name], ids, 0), lesions, truth, organs)
        pet = on_grid(case.pet, case.label, 0.0)
        ct = on_grid(case.ct, case.label, -1000.0)
        masks.update(threshold_baselines(pet, ct))
        for method, mask in masks.items():
            row = {"case": case.name, "source": case.source, "method": method,
                   **case_metrics(mask, truth, spacing_zyx)}
            row["reported_lesions"] = reported.get(method, row["pred_components"])
            row["seconds"] = seconds if method == "model" else ""
            row.update(sites.get(method, {"site_correct": "", "site_judged": ""}))
            rows.append(row)
        model_row = rows[-len(masks)]
        log(f"{case.name} ({case.source}): Dice {model_row['dice']:.3f}, FP {model_row['fp_volume_ml']:.2f} mL, "
            f"FN {model_row['fn_volume_ml']:.2f} mL, {seconds:.1f} s")
    if not rows:
        raise EvaluationError(f"{cases_dir}: no cases to evaluate")
    _write_csv(out_dir / "per_case.csv", ["case", "source", "method", *METRIC_COLUMNS, "site_correct",
                                          "site_judged", "seconds"], rows)

    summary: Dict[str, Dict[str, float]] = {}
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    sources = sorted({str(r["source"]) for r in rows})
    groups = ["all"] + (sources if len(sources) > 1 else [])
    for group in groups:
        for method in methods:
            chosen = [r for r in rows if r["method"] == method and (group == "all" or r["source"] == group)]
            summary[f"{group}/{method}"] = summarize(chosen)
    summary_rows = [{"group": key.split("/")[0], "method": key.split("/")[1], **values}
                    for key, values in summary.items()]
    columns = ["group", "method", *summary_rows[0].keys() - {"group", "method"}]
    columns = ["group", "method"] + sorted(columns[2:], key=_summary_order)
    _write_csv(out_dir / "summary.csv", columns, summary_rows)
    (out_dir / "summary.json").write_text(json.dumps({
        "model": str(model_path), "cases": str(cases_dir), "split": split, "overlap": overlap,
        "min_lesion_ml": min_lesion_ml, "min_suv_max": min_suv_max, "rules": [r.name for r in rules],
        "blending": blending, "summary": json_safe(summary)}, indent=2))
    log(format_table(summary))
    return summary


SUMMARY_ORDER = ["cases", "positive_cases", "negative_cases", "dice", "dice_pos", "hd95_mm", "hd95_mm_pos",
                 "precision", "recall", "recall_pos", "lesion_sensitivity", "lesion_sensitivity_lt1ml",
                 "lesion_sensitivity_1to5ml", "lesion_sensitivity_ge5ml", "site_accuracy", "fp_volume_ml",
                 "fp_volume_ml_neg",
                 "reported_lesions", "reported_lesions_neg", "fn_volume_ml", "fn_volume_ml_pos"]


def _summary_order(key: str) -> int:
    return SUMMARY_ORDER.index(key) if key in SUMMARY_ORDER else len(SUMMARY_ORDER)


def format_table(summary: Dict[str, Dict[str, float]]) -> str:
    """A plain-text table: one line per group/method."""
    keys = ["cases", "dice_pos", "dice", "lesion_sensitivity", "fp_volume_ml_neg", "reported_lesions_neg",
            "fp_volume_ml", "reported_lesions", "hd95_mm_pos", "site_accuracy"]
    width = max([28] + [len(name) + 2 for name in summary])
    lines = ["group/method".ljust(width) + "".join(k.rjust(21) for k in keys)]
    for name, values in summary.items():
        cells = []
        for key in keys:
            value = values.get(key, math.nan)
            cells.append(("-" if isinstance(value, float) and math.isnan(value) else f"{value:.4g}").rjust(21))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def _write_csv(path: Path, columns: List[str], rows: List[Dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

