"""Read a case's three images and refuse anything training could silently get wrong.

Each problem raises `DataError` naming the case: a missing or empty file, an incomplete or damaged file, an
unreadable, vector or zero-size image, NaN/Inf voxels, a CT that is not a CT in HU or a PET that is not in
SUV, a label that is not 0/1 or is on neither the PET nor the CT grid, and CT/PET that do not overlap in
physical space. An all-zero label is legal (lesion-free case). The reader, the CT/PET plausibility checks
and the overlap rule are the inference engine's own (`engine/inputs/imageio.py`, `engine/inputs/checks.py`,
through the engine's public API), so training refuses exactly what `veloxseg segment` and the Slicer module
refuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VeloxSegSlicerLib import engine
from VeloxSegSlicerLib.engine import (
    InputError,
    check_ct_is_ct,
    check_finite,
    check_overlap,
    check_pet_is_suv,
    field_of_view,
)

from .case import CaseFiles, DataError, LoadedCase

GRID_TOLERANCE = 1e-3  # relative, for spacing/origin/direction comparisons


def read_image(case: str, what: str, path: Path) -> sitk.Image:
    """Read one image with the engine's reader, which refuses what `veloxseg segment` refuses (a missing,
    empty, incomplete or damaged file, an unreadable, vector, non-3-D or too small image, NaN/Inf voxels,
    found in a NIfTI file's bytes since ITK reads them as 0), as a DataError naming the case."""
    if path is None:
        raise DataError(case, f"missing {what} file")
    try:
        image = engine.read_image(path, what)
        check_finite(image, what, source=path)  # the formats whose NaN ITK keeps
    except InputError as exc:
        raise DataError(case, str(exc)) from None
    return image


def _check_modality(case: str, check, image, path: Path) -> None:
    """The engine's plausibility check (CT in HU, PET in SUV) as a DataError."""
    try:
        check(image, source=path)
    except InputError as exc:
        raise DataError(case, str(exc)) from None


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, spacing, origin and direction (within a small tolerance)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing = np.array(a.GetSpacing())
    return (np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=GRID_TOLERANCE)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GRID_TOLERANCE * spacing.max())
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=GRID_TOLERANCE))


def load_case(files: CaseFiles) -> LoadedCase:
    """Read and validate one case; see the module docstring for what is refused."""
    case = files.name
    ct = read_image(case, "CT", files.ct)
    pet = read_image(case, "PET", files.pet)
    label = read_image(case, "label", files.label)

    label_array = sitk.GetArrayViewFromImage(label)
    _check_modality(case, check_pet_is_suv, pet, files.pet)
    _check_modality(case, check_ct_is_ct, ct, files.ct)

    values = np.unique(label_array)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise DataError(case, f"label is not binary: values {{{shown}}}; expected 0 (background) and "
                              "1 (lesion) only")

    try:  # the engine's overlap rule: training takes the pairs that inference takes
        check_overlap(field_of_view(ct), field_of_view(pet))
    except InputError as exc:
        raise DataError(case, str(exc)) from None
    if not (same_grid(label, pet) or same_grid(label, ct)):
        raise DataError(case, f"label grid (size {label.GetSize()}, spacing "
                              f"{tuple(round(s, 4) for s in label.GetSpacing())}) is neither the PET nor "
                              "the CT grid")
    return LoadedCase(case, files.source, ct, pet, label, files)
