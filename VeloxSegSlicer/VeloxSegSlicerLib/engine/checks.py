"""Content checks on CT and PET volumes, run before any work so a wrong input fails fast and clearly.

They read voxels through no-copy views and subsample where an estimate is enough, so they stay cheap on a
whole-body study.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from .errors import InputError

SAMPLE_SIZE = 1_000_000
LABEL_MAX_VALUES = 10  # a label map: 0 plus at most 9 other distinct whole values up to LABEL_MAX_ID
LABEL_MAX_ID = 1000
# Body SUV medians are ~0.3-3; Bq/mL bodies are in the thousands. 20 leaves room for any real SUV image.
SUV_BODY_MEDIAN_LIMIT = 20.0
SUV_MAX_LIMIT = 5000.0


def _view(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image)


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // SAMPLE_SIZE)
    return np.asarray(flat[::step], dtype=np.float64)


def check_finite(image: sitk.Image, modality: str) -> None:
    array = _view(image)
    if array.dtype.kind != "f":
        return
    # One float64 reduction instead of a whole-volume boolean mask: NaN/inf anywhere makes the sum non-finite.
    if np.isfinite(np.add.reduce(array, axis=None, dtype=np.float64)):
        return
    bad = int(sum(np.count_nonzero(~np.isfinite(slab)) for slab in array))
    raise InputError(
        f"{modality} image has {bad} voxels that are NaN or infinite. Fix the export (or replace them, e.g. "
        "by 0 for PET and -1000 for CT) and try again."
    )


def check_not_label_map(image: sitk.Image, modality: str) -> None:
    sample = _sample(_view(image))
    values = np.unique(sample)
    if values.size > LABEL_MAX_VALUES or values.min() != 0 or values.max() > LABEL_MAX_ID:
        return
    if np.any(values != np.round(values)):
        return
    raise InputError(
        f"The {modality} image holds only the values {values.astype(int).tolist()}: it looks like a label map "
        f"or segmentation, not a {modality} scan. Pass the {modality} volume itself."
    )


def check_pet_is_suv(image: sitk.Image) -> None:
    sample = _sample(_view(image))
    if sample.min() < -500:
        raise InputError(
            f"The PET image has values down to {sample.min():.0f}: it looks like a CT in Hounsfield units. "
            "Check that the CT and PET inputs are not swapped."
        )
    positive = sample[sample > 0]
    if positive.size == 0:
        raise InputError("The PET image has no positive values; check that it is the right volume.")
    body = positive[positive > 0.05 * np.percentile(positive, 99)]
    median = float(np.median(body))
    peak = float(positive.max())
    if median > SUV_BODY_MEDIAN_LIMIT or peak > SUV_MAX_LIMIT:
        raise InputError(
            f"The PET image does not look like SUV: its median inside the body is {median:.4g} and its maximum "
            f"{peak:.4g}, where SUV images have ~0.3-3 and rarely above 100 (this looks like activity "
            "concentration in Bq/mL). Convert it to SUVbw first: SUV = value[Bq/mL] x body weight[g] / "
            "decay-corrected injected dose[Bq], or pass the original DICOM PET series folder, which VeloxSeg "
            "converts to SUV from its header."
        )


def check_inputs(ct: sitk.Image, pet: sitk.Image) -> None:
    """All content checks of segment_study's inputs."""
    for image, modality in ((ct, "CT"), (pet, "PET")):
        if not isinstance(image, sitk.Image):
            raise InputError(f"The {modality} must be a SimpleITK image, got {type(image).__name__}.")
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 or min(image.GetSize()) < 2:
            raise InputError(
                f"The {modality} must be a scalar 3D volume (got dimension {image.GetDimension()}, "
                f"size {list(image.GetSize())})."
            )
        check_finite(image, modality)
        check_not_label_map(image, modality)
    check_pet_is_suv(pet)
