"""Synthetic lesions inserted into real PET/CT studies, away from their own tumour.

The phantoms teach what lesions look like against one generator's idea of anatomy; real studies show the
real texture, noise and physiological uptake that a whole-body model must leave alone. Each generated case
takes one real study (CT, PET in SUV and its tumour mask, on one grid, as the IBSI cases are), keeps its
tumour labelled, and adds 1-4 lesions at least `MIN_TUMOUR_GAP_MM` from it: an ellipsoid (sometimes
lobulated) of uptake above the local background, blurred to PET resolution with matching count noise, and a
soft-tissue density on CT. Deterministic by (seed, index).

Only studies of the training split are used as backgrounds (`training_backgrounds`), so the studies held
out by `prepare` with the same split settings stay unseen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .case import CaseFiles
from .sources import SYNTHETIC_FORMAT, SYNTHETIC_MANIFEST, find_folder_cases
from .synthetic import FWHM_TO_SIGMA
from .validate import read_image

MIN_TUMOUR_GAP_MM = 25.0
BODY_HU = -500.0


def training_backgrounds(root: Path, val_fraction: float, test_fraction: float, seed: int) -> List[CaseFiles]:
    """The cases of `root` that `prepare` (same fractions and seed) puts in its training split."""
    from .prepare import output_names
    from .splits import assign_splits

    cases = find_folder_cases(Path(root))
    names = output_names(cases)
    # Real tumour studies all carry a tumour: prepare groups them as not lesion-free.
    splits = assign_splits([(n, c.source, False) for n, c in zip(names, cases)], val_fraction, test_fraction,
                           seed)
    return [c for n, c in zip(names, cases) if splits[n] == "train"]


def _local_background(pet: np.ndarray, mask: np.ndarray) -> float:
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    return float(np.median(pet[ring])) if ring.any() else float(np.median(pet[mask]))


def insert_lesions(ct: np.ndarray, pet: np.ndarray, tumour: np.ndarray, spacing_zyx, rng: np.random.Generator,
                   count: int):
    """(ct, pet, label, lesion records): `count` lesions added away from `tumour` (arrays z, y, x)."""
    spacing = np.asarray(spacing_zyx, float)
    ct, pet = ct.astype(np.float32).copy(), pet.astype(np.float32).copy()
    label = (tumour > 0).astype(np.uint8)
    body = ndimage.binary_fill_holes(ct > BODY_HU) if (ct > BODY_HU).any() else np.ones_like(label, bool)
    body = ndimage.binary_erosion(body, iterations=2)
    far = ndimage.distance_transform_edt(label == 0, sampling=spacing) >= MIN_TUMOUR_GAP_MM
    allowed = body & far
    zz, yy, xx = (np.arange(n, dtype=np.float32) * s for n, s in zip(ct.shape, spacing))
    fwhm = rng.uniform(5.0, 8.0)
    records = []
    for _ in range(count):
        candidates = np.flatnonzero(allowed)
        if candidates.size == 0:
            break
        centre_idx = np.unravel_index(candidates[rng.integers(candidates.size)], ct.shape)
        centre = np.array([zz[centre_idx[0]], yy[centre_idx[1]], xx[centre_idx[2]]])
        diameter = float(np.exp(rng.uniform(np.log(max(6.0, 1.6 * spacing.max())), np.log(30.0))))
        radii = diameter / 2.0 * rng.uniform(0.8, 1.2, 3)
        q = ((zz[:, None, None] - centre[0]) / radii[0]) ** 2 + ((yy[None, :, None] - centre[1]) / radii[1]) ** 2 \
            + ((xx[None, None, :] - centre[2]) / radii[2]) ** 2
        if rng.random() < 0.35:  # a second lobe
            direction = rng.standard_normal(3)
            offset = direction / np.linalg.norm(direction) * radii * rng.uniform(0.5, 0.9)
            r2 = radii * rng.uniform(0.5, 0.8, 3)
            c2 = centre + offset
            q = np.minimum(q, ((zz[:, None, None] - c2[0]) / r2[0]) ** 2 + ((yy[None, :, None] - c2[1]) / r2[1]) ** 2
                           + ((xx[None, None, :] - c2[2]) / r2[2]) ** 2)
        mask = (q <= 1.0) & body
        if not mask.any():
            mask = np.zeros_like(body)
            mask[centre_idx] = True
        background = _local_background(pet, mask)
        if rng.random() < 0.15:
            kind, peak = "barely", background * rng.uniform(1.5, 2.0)
        else:
            low = max(2.5, 2.5 * background)
            kind, peak = "clear", float(np.exp(rng.uniform(np.log(low), np.log(max(20.0, 1.2 * low)))))
        truth = np.where(mask, peak * (1.0 - 0.25 * np.minimum(q, 1.0)) - background, 0.0).astype(np.float32)
        added = ndimage.gaussian_filter(truth, fwhm * FWHM_TO_SIGMA / spacing, mode="constant")
        noise = ndimage.gaussian_filter(rng.standard_normal(pet.shape).astype(np.float32), 0.7)
        noise /= max(float(noise.std()), 1e-6)
        pet += added + np.sqrt(np.maximum(added, 0.0) * rng.uniform(0.02, 0.1)) * noise
        soft = (ct > -200) & mask
        ct[soft] = rng.uniform(20, 55) + rng.normal(0, 8, int(soft.sum()))
        lung = (ct <= -200) & mask
        ct[lung] = rng.uniform(-50, 40) + rng.normal(0, 15, int(lung.sum()))  # a nodule in aerated tissue
        label[mask] = 1
        # keep the next lesion apart from this one
        allowed &= ndimage.distance_transform_edt(~mask, sampling=spacing) >= diameter / 2 + 10.0
        records.append({"centre_mm_zyx": [round(float(c), 1) for c in centre], "diameter_mm": round(diameter, 1),
                        "suv_peak_truth": round(peak, 2), "background_suv": round(background, 2), "kind": kind,
                        "voxels": int(mask.sum())})
    np.maximum(pet, 0.0, out=pet)
    return ct, pet, label, records


def write_real_background_dataset(out_dir: Path, backgrounds: List[CaseFiles], count: int, seed: int,
                                  progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """`count` cases cycling through `backgrounds`, written as a `synth` folder (prepare --synthetic)."""
    if not backgrounds:
        raise ValueError("no background studies")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    entries = []
    for index in range(count):
        source = backgrounds[index % len(backgrounds)]
        rng = np.random.default_rng([int(seed), index, 0xB6])
        # the engine's reader, as everywhere: a damaged or NaN-holding background is refused, not inserted into
        ct_img, pet_img, label_img = (read_image(source.name, what, path) for what, path in
                                      (("CT", source.ct), ("PET", source.pet), ("label", source.label)))
        spacing_zyx = tuple(reversed(pet_img.GetSpacing()))
        ct_on_pet = sitk.Resample(ct_img, pet_img, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        label_on_pet = sitk.Resample(label_img, pet_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                     sitk.sitkUInt8)
        ct, pet, label, records = insert_lesions(
            sitk.GetArrayFromImage(ct_on_pet), sitk.GetArrayFromImage(pet_img),
            sitk.GetArrayFromImage(label_on_pet), spacing_zyx, rng, int(rng.integers(1, 5)))
        name = f"case_{index:04d}"
        folder = out_dir / name
        folder.mkdir(exist_ok=True)
        for array, file, dtype in ((np.clip(np.round(ct), -1024, 3071), "ct.nii.gz", np.int16),
                                   (pet, "pet.nii.gz", np.float32), (label, "label.nii.gz", np.uint8)):
            image = sitk.GetImageFromArray(array.astype(dtype))
            image.CopyInformation(pet_img)
            sitk.WriteImage(image, str(folder / file), True)
        entries.append({"name": name, "folder": name, "background": source.name, "lesion_free": False,
                        "lesion_count": len(records) + 1, "lesion_voxels": int(label.sum()), "lesions": records})
        if progress:
            progress(index + 1, count)
    manifest = {
        "format": SYNTHETIC_FORMAT, "generator": "veloxseg-train synth --backgrounds", "source": "real_background",
        "seed": int(seed),
        "count": int(count), "lesion_free_cases": 0, "seconds": round(time.time() - start, 1),
        "backgrounds": sorted({c.name for c in backgrounds}),
        "attribution": "Backgrounds: IBSI validation data (TCIA Soft-tissue-Sarcoma), CC BY 3.0; see the "
                       "README's licence section. Inserted lesions are synthetic.",
        "files": {"ct": "ct.nii.gz (int16 HU, PET grid)", "pet": "pet.nii.gz (float32 SUVbw)",
                  "label": "label.nii.gz (uint8 0/1: the study's tumour + the inserted lesions)"},
        "cases": entries,
    }
    (out_dir / SYNTHETIC_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
