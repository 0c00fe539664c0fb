"""Tiny NIfTI cases for the data tests: a warm body block with one hot lesion, in either raw layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE_ZYX = (10, 12, 14)
SPACING = (4.0, 4.0, 4.0)


def image(array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.SetSpacing([float(s) for s in spacing])
    out.SetOrigin([float(o) for o in origin])
    if direction is not None:
        out.SetDirection([float(d) for d in direction])
    return out


def tiny_arrays(ct_tissue=40.0, pet_tissue=1.0, lesion=True, seed=0):
    """CT (int16 HU), PET (float32 SUV) and label (uint8) of a body block with a lesion in its middle."""
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE_ZYX, -1000, np.int16)
    pet = np.zeros(SHAPE_ZYX, np.float32)
    ct[1:-1, 2:-2, 2:-2] = ct_tissue
    ct[1:-1, 3, 3:5] = 700  # a bone rod: a CT must hold air and bone to pass the engine's CT check
    pet[1:-1, 2:-2, 2:-2] = pet_tissue
    ct += rng.integers(-5, 6, SHAPE_ZYX).astype(np.int16)
    pet += rng.uniform(0, 0.05, SHAPE_ZYX).astype(np.float32)
    label = np.zeros(SHAPE_ZYX, np.uint8)
    if lesion:
        label[4:7, 5:8, 6:9] = 1
        pet[label > 0] = 8.0
    return ct, pet, label


def write_case(folder: Path, names=("ct", "pet", "label"), arrays=None, ct_origin=(0.0, 0.0, 0.0),
               **kwargs) -> Path:
    """One case folder with the three images under the given file stems (".nii.gz" added)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct, pet, label = arrays if arrays is not None else tiny_arrays(**kwargs)
    sitk.WriteImage(image(ct, origin=ct_origin), str(folder / f"{names[0]}.nii.gz"))
    sitk.WriteImage(image(pet), str(folder / f"{names[1]}.nii.gz"))
    sitk.WriteImage(image(label), str(folder / f"{names[2]}.nii.gz"))
    return folder


def write_autopet(root: Path, names=("PETCT_a", "PETCT_b")) -> Path:
    """An nnU-Net raw data set: imagesTr/NAME_0000 (CT), NAME_0001 (PET), labelsTr/NAME."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        ct, pet, label = tiny_arrays(seed=i)
        sitk.WriteImage(image(ct), str(root / "imagesTr" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(image(pet), str(root / "imagesTr" / f"{name}_0001.nii.gz"))
        sitk.WriteImage(image(label), str(root / "labelsTr" / f"{name}.nii.gz"))
    return root
