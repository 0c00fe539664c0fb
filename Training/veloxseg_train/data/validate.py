"""Read a case's three images and refuse anything training could silently get wrong.

Each problem raises `DataError` naming the case: a missing or empty file, an incomplete or damaged file, an
unreadable, vector or zero-size image, NaN/Inf voxels, a CT that is not a CT in HU or a PET that is not in
SUV, a label that is not 0/1 or is on neither the PET nor the CT grid, and CT/PET that do not overlap in
physical space. An all-zero label is legal (lesion-free case). File integrity and the CT/PET plausibility
checks are the inference engine's own (`engine.integrity`, `engine.checks`), so training refuses exactly
what `veloxseg segment` and the Slicer module refuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VeloxSegSlicerLib.engine.checks import check_ct_is_ct, check_pet_is_suv
from VeloxSegSlicerLib.engine.errors import InputError
from VeloxSegSlicerLib.engine.integrity import DamagedFileError, inspect_image_file

from .case import CaseFiles, DataError, LoadedCase
from .geometry import physical_box

# CT and PET must share at least this fraction of the PET's physical box (less means a wrong pairing).
MIN_OVERLAP = 0.5
GRID_TOLERANCE = 1e-3  # relative, for spacing/origin/direction comparisons


def read_image(case: str, what: str, path: Path):
    """Read one image -> (image, NaN/Inf count from the file's bytes or None); missing, empty, incomplete,
    damaged, unreadable, vector, non-3D or zero-size files are DataErrors."""
    if path is None or not Path(path).is_file():
        raise DataError(case, f"missing {what} file {path}")
    if Path(path).stat().st_size == 0:
        raise DataError(case, f"{what} file {path} is empty (0 bytes)")
    try:
        nonfinite = inspect_image_file(path)  # before ITK, which zero-fills a truncated NIfTI
    except DamagedFileError as problem:
        raise DataError(case, f"cannot read {what} file {path}: it {problem}") from None
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        components = reader.GetNumberOfComponents()
        image = reader.Execute() if components == 1 else None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise DataError(case, f"cannot read {what} file {path}: {first}") from None
    if image is None or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        dimension = reader.GetDimension() if image is None else image.GetDimension()
        raise DataError(case, f"{what} must be a 3-D scalar image; {path} has {dimension} "
                              f"dimensions and {components} component(s)")
    if 0 in image.GetSize() or min(image.GetSize()) < 1:
        raise DataError(case, f"{what} image {path} has size {image.GetSize()} (no voxels)")
    return image, nonfinite


def _check_finite(case: str, what: str, array: np.ndarray, nonfinite) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = nonfinite  # NIfTI: from the file, as ITK zeroes NaN while reading it
        if bad is None:
            bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(case, f"{what} has {bad} NaN/Inf voxels; fix or mask them before training")


def _check_modality(case: str, check, image, path: Path) -> None:
    """The engine's plausibility check (CT in HU, PET in SUV) as a DataError."""
    try:
        check(image, source=path)
    except InputError as exc:
        raise DataError(case, str(exc)) from None


def overlap_fraction(reference: sitk.Image, other: sitk.Image) -> float:
    """Fraction of `reference`'s physical box that `other`'s box covers (boxes axis-aligned)."""
    lo_a, hi_a = physical_box(reference)
    lo_b, hi_b = physical_box(other)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None)
    return float(np.prod(inter) / np.prod(hi_a - lo_a))


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
    ct, ct_nonfinite = read_image(case, "CT", files.ct)
    pet, pet_nonfinite = read_image(case, "PET", files.pet)
    label, label_nonfinite = read_image(case, "label", files.label)

    ct_array = sitk.GetArrayViewFromImage(ct)
    pet_array = sitk.GetArrayViewFromImage(pet)
    label_array = sitk.GetArrayViewFromImage(label)
    _check_finite(case, "CT", ct_array, ct_nonfinite)
    _check_finite(case, "PET", pet_array, pet_nonfinite)
    _check_finite(case, "label", label_array, label_nonfinite)
    _check_modality(case, check_pet_is_suv, pet, files.pet)
    _check_modality(case, check_ct_is_ct, ct, files.ct)

    values = np.unique(label_array)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise DataError(case, f"label is not binary: values {{{shown}}}; expected 0 (background) and "
                              "1 (lesion) only")

    fraction = overlap_fraction(pet, ct)
    if fraction <= 0.0:
        raise DataError(case, "CT and PET do not overlap in physical space (check origins, directions and "
                              "that they belong to the same study)")
    if fraction < MIN_OVERLAP:
        raise DataError(case, f"CT covers only {100 * fraction:.0f}% of the PET field of view (at least "
                              f"{100 * MIN_OVERLAP:.0f}% expected); wrong pairing or wrong origin?")
    if not (same_grid(label, pet) or same_grid(label, ct)):
        raise DataError(case, f"label grid (size {label.GetSize()}, spacing "
                              f"{tuple(round(s, 4) for s in label.GetSpacing())}) is neither the PET nor "
                              "the CT grid")
    return LoadedCase(case, files.source, ct, pet, label, files)
