"""A tiny prepared data set (npz + dataset.json, the `veloxseg-train prepare` format) for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPACING_XYZ = (2.0, 2.0, 3.0)
NORMALIZATION = {
    "CT": {"clip_low": -1000.0, "clip_high": 1000.0, "mean": -300.0, "std": 400.0, "unit": "HU"},
    "PET": {"clip_low": 0.0, "clip_high": 30.0, "mean": 1.0, "std": 2.0, "unit": "SUVbw"},
}


def make_case(shape_zyx, lesion_centre=None, lesion_radius=6, seed=0, hot_organ=True):
    """A body cylinder (soft tissue, SUV ~1), a hot organ as a confounder, and one spherical lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    cy, cx = (shape_zyx[1] - 1) / 2, (shape_zyx[2] - 1) / 2
    body = ((y - cy) / (0.42 * shape_zyx[1])) ** 2 + ((x - cx) / (0.45 * shape_zyx[2])) ** 2 <= 1
    ct = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 10, shape_zyx).astype(np.float32)
    pet = np.where(body, 1.0, 0.0).astype(np.float32) + np.abs(rng.normal(0, 0.1, shape_zyx)).astype(np.float32)
    spine = ((y - cy - 0.25 * shape_zyx[1]) ** 2 + (x - cx) ** 2) <= 3 ** 2
    ct[spine] = 700.0  # bone: the engine's CT check wants air and bone in a CT
    label = np.zeros(shape_zyx, dtype=np.uint8)
    if hot_organ:  # something bright that is not a lesion
        organ = ((z - shape_zyx[0] * 0.3) ** 2 + (y - cy) ** 2 + (x - cx * 0.6) ** 2) <= 8 ** 2
        pet[organ] = 5.0
    if lesion_centre is not None:
        lz, ly, lx = lesion_centre
        lesion = ((z - lz) * 1.5) ** 2 + (y - ly) ** 2 + (x - lx) ** 2 <= lesion_radius ** 2
        pet[lesion] = 9.0
        ct[lesion] = 60.0
        label[lesion] = 1
    return ct, pet, label


def write_prepared(root: Path, cases) -> Path:
    """cases: list of (name, split, ct, pet, label). Returns root (with dataset.json and cases/)."""
    root = Path(root)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    entries = []
    for name, split, ct, pet, label in cases:
        np.savez(root / "cases" / f"{name}.npz", ct=ct, pet=pet, label=label,
                 spacing=np.asarray(SPACING_XYZ), origin=np.zeros(3), direction=np.eye(3).ravel())
        voxels = int(np.count_nonzero(label))
        entries.append({"name": name, "source": "synthetic", "split": split, "file": f"cases/{name}.npz",
                        "shape_zyx": list(ct.shape), "lesion_voxels": voxels, "lesion_free": voxels == 0})
    (root / "dataset.json").write_text(json.dumps({
        "format": "veloxseg-prepared/1", "spacing_xyz_mm": list(SPACING_XYZ), "cases": entries,
        "normalization": NORMALIZATION}))
    return root


def standard_cases():
    """One 96^3 training case, one validation case with a lesion, one small lesion-free test case."""
    return [
        ("train_a", "train", *make_case((96, 96, 96), (48, 50, 40), seed=1)),
        ("val_a", "val", *make_case((96, 96, 96), (40, 44, 56), seed=2)),
        ("test_free", "test", *make_case((64, 80, 80), None, seed=3)),
    ]
