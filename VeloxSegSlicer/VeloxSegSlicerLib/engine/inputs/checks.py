"""Content checks on CT and PET volumes and the CT/PET overlap rule, run before any work so a wrong input
fails fast and clearly.

One implementation for every entry point: the CLI (`read_ct`, `read_pet_suv`, `segment_study`), the
Slicer Logic (`inputs.py`, on the nodes' voxel arrays) and training's data validation. Each function takes
a SimpleITK image or a numpy array; `source` (a file name or node name) makes the message name the input.

They read voxels through no-copy views and subsample where an estimate is enough, so they stay cheap on a
whole-body study.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from ..errors import InputError

SAMPLE_SIZE = 1_000_000
LABEL_MAX_VALUES = 10  # a label map: 0 plus at most 9 other distinct whole values up to LABEL_MAX_ID
LABEL_MAX_ID = 1000
# Body SUV medians are ~0.3-3; Bq/mL bodies are in the thousands. 20 leaves room for any real SUV image.
SUV_BODY_MEDIAN_LIMIT = 20.0
# The one SUV plausibility limit (the engine, training's data checks and the Slicer module's button, which
# sees only the value range): no SUV image peaks above it. Physiological and lesion SUVs stay below ~100, a
# full bladder or a tracer extravasation at the injection site a few hundred; a PET in Bq/mL peaks in the
# tens of thousands, and one with a lower peak is still refused by its body median above.
SUV_MAX_LIMIT = 5000.0
# A PET has no values this low; a CT has them wherever there is air.
PET_MIN_LIMIT = -500.0
# A CT in Hounsfield units holds air (about -1000 HU around the body and in the lungs) and bone (several
# hundred HU). Every real CT measured (29 IBSI crops 5 cm around a tumour, whole-body studies) has >= 15 %
# of its voxels below -500 HU and >= 1 % above 300 HU; the limits below are far lower, so only images that
# are not HU CTs fail: a PET (0 to ~30), a CT without its rescale intercept (air at 0), an MR.
CT_AIR_THRESHOLD_HU = -500.0  # at or below: air (a threshold; preprocess.CT_AIR_HU is air's value, -1000)
CT_AIR_MIN_FRACTION = 0.001
CT_BONE_HU = 200.0
CT_BONE_MIN_FRACTION = 0.0001
# The one CT/PET overlap rule (the engine, the Slicer module, training's data checks): at least this fraction
# of the PET's field of view (the box of its voxel centres in physical space) must lie inside the CT's. A CT
# and PET of one study share far more: the CT, taken for attenuation correction, spans the PET's length, and
# a 50 cm CT field of view inside a 70 cm PET one still holds half of its box (0.71 squared); even a CT of
# half the PET's length on top of that holds a quarter. Such partial coverage runs (what lies outside the CT
# is reported). Less than a fifth comes from a CT of another study or an origin lost on export.
MIN_PET_IN_CT_FRACTION = 0.2


def _values(image) -> np.ndarray:
    if isinstance(image, sitk.Image):
        return sitk.GetArrayViewFromImage(image)
    return np.asarray(image)


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // SAMPLE_SIZE)
    return np.asarray(flat[::step], dtype=np.float64)


def _subject(modality: str, source) -> str:
    """'The CT image' or "CT 'name'" for the start of a message."""
    return f"{modality} '{source}'" if source else f"The {modality} image"


def check_finite(image, modality: str, source="") -> None:
    array = _values(image)
    if array.dtype.kind != "f":
        return
    # One float64 reduction instead of a whole-volume boolean mask: NaN/inf anywhere makes the sum non-finite.
    if np.isfinite(np.add.reduce(array, axis=None, dtype=np.float64)):
        return
    bad = int(sum(np.count_nonzero(~np.isfinite(slab)) for slab in array))
    raise InputError(
        f"{_subject(modality, source)} has {bad} voxel{'s' if bad != 1 else ''} that are NaN or infinite. Fix the "
        "export (or replace them, e.g. by 0 for PET and -1000 for CT) and try again."
    )


def check_not_label_map(image, modality: str, source="") -> None:
    sample = _sample(_values(image))
    values = np.unique(sample)
    if values.size > LABEL_MAX_VALUES or values.min() != 0 or values.max() > LABEL_MAX_ID:
        return
    if np.any(values != np.round(values)):
        return
    if values.max() == 0:
        raise InputError(f"{_subject(modality, source)} holds only zeros: it is empty. Pass the {modality} scan.")
    raise InputError(
        f"{_subject(modality, source)} holds only the values {values.astype(int).tolist()}: it looks like a "
        f"label map or segmentation, not a {modality} scan. Pass the {modality} volume itself."
    )


def check_ct_is_ct(image, source="") -> None:
    """A CT must hold air and bone in Hounsfield units; a PET, an MR or a CT without its rescale does not."""
    sample = _sample(_values(image))
    air = float(np.mean(sample <= CT_AIR_THRESHOLD_HU))
    bone = float(np.mean(sample >= CT_BONE_HU))
    if air >= CT_AIR_MIN_FRACTION and bone >= CT_BONE_MIN_FRACTION:
        return
    low, high = float(sample.min()), float(sample.max())
    if high - low <= 100.0 and low >= 0.0:
        hint = "it looks like a PET: are CT and PET swapped, or is the PET given as CT?"
    elif air < CT_AIR_MIN_FRACTION and low >= -100.0:
        hint = ("it has no air (about -1000 HU) around the body or in the lungs: a PET or MR, or a CT stored "
                "without its rescale intercept?")
    elif air < CT_AIR_MIN_FRACTION:
        hint = "it has no air (about -1000 HU) around the body or in the lungs"
    else:
        hint = "it has no bone (several hundred HU): not in Hounsfield units?"
    raise InputError(
        f"{_subject('CT', source)} does not look like a CT in Hounsfield units (values {low:.4g} to {high:.4g}; "
        f"{hint}). Pass the CT of the study, in HU."
    )


def check_pet_is_suv(image, source="") -> None:
    sample = _sample(_values(image))
    subject = _subject("PET", source)
    if sample.min() < PET_MIN_LIMIT:
        raise InputError(
            f"{subject} has values down to {sample.min():.0f}: it looks like a CT in Hounsfield units. "
            "Check that the CT and PET inputs are not swapped."
        )
    positive = sample[sample > 0]
    if positive.size == 0:
        raise InputError(f"{subject} has no positive values; check that it is the right volume.")
    body = positive[positive > 0.05 * np.percentile(positive, 99)]
    median = float(np.median(body))
    # The true maximum, not the sample's: the Slicer module's quick check reads the node's value range, and
    # both must accept or refuse the same PET (one reduction over a no-copy view: cheap).
    peak = float(np.max(_values(image)))
    if median > SUV_BODY_MEDIAN_LIMIT or peak > SUV_MAX_LIMIT:
        raise InputError(
            f"{subject} does not look like SUV: its median inside the body is {median:.4g} and its maximum "
            f"{peak:.4g}, where SUV images have ~0.3-3 and rarely above 100 (this looks like activity "
            "concentration in Bq/mL). Convert it to SUVbw first: SUV = value[Bq/mL] x body weight[g] / "
            "decay-corrected injected dose[Bq], or pass the original DICOM PET series folder, which VeloxSeg "
            "converts to SUV from its header."
        )


def pet_in_ct_fraction(ct_box, pet_box) -> float:
    """Fraction of the PET's box that lies inside the CT's; boxes are (low, high) corners in one space."""
    ct_low, ct_high = (np.asarray(v, dtype=np.float64) for v in ct_box)
    pet_low, pet_high = (np.asarray(v, dtype=np.float64) for v in pet_box)
    inside = np.clip(np.minimum(ct_high, pet_high) - np.maximum(ct_low, pet_low), 0.0, None)
    return float(np.prod(inside / np.maximum(pet_high - pet_low, 1e-6)))


def check_overlap(ct_box, pet_box, ct_source="", pet_source="") -> float:
    """Refuse a CT and PET whose boxes ((low, high) in LPS mm) break the overlap rule; return the fraction."""
    fraction = pet_in_ct_fraction(ct_box, pet_box)
    if fraction >= MIN_PET_IN_CT_FRACTION:
        return fraction
    pair = f"CT '{ct_source}' and PET '{pet_source}'" if ct_source or pet_source else "CT and PET"
    if fraction > 0.0:
        what = (f"do not overlap enough in physical space: only {100 * fraction:.1f} % of the PET's field of view "
                f"lies inside the CT's (at least {100 * MIN_PET_IN_CT_FRACTION:.0f} % for a CT and PET of one "
                "study)")
    else:
        what = "do not overlap in physical space"
    spans = (f"CT spans {np.round(ct_box[0], 1).tolist()} to {np.round(ct_box[1], 1).tolist()} mm, PET spans "
             f"{np.round(pet_box[0], 1).tolist()} to {np.round(pet_box[1], 1).tolist()} mm, LPS")
    raise InputError(f"{pair} {what} ({spans}). Check that both come from the same study and that their origins "
                     "were not changed on export, or register them first.")


def check_volume_shape(image, modality: str, source="") -> None:
    """A scalar 3D volume at least 2 voxels along every axis."""
    subject = _subject(modality, source)
    if isinstance(image, sitk.Image):
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"{subject} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector "
                "image); give a scalar grey-value volume."
            )
        dimension, size = image.GetDimension(), list(image.GetSize())
    else:
        dimension, size = np.ndim(image), list(reversed(np.shape(image)))
    if dimension != 3 or min(size) < 2:
        raise InputError(
            f"{subject} must be a scalar 3D volume (got dimension {dimension}, size {size}); VeloxSeg needs a "
            "3D CT and PET."
        )


def check_ct(image, source="") -> None:
    """Every check of a CT, in the order that gives the most telling message first."""
    check_volume_shape(image, "CT", source)
    check_finite(image, "CT", source)
    check_not_label_map(image, "CT", source)
    check_ct_is_ct(image, source)


def check_pet(image, source="") -> None:
    """Every check of a PET in SUV."""
    check_volume_shape(image, "PET", source)
    check_finite(image, "PET", source)
    check_not_label_map(image, "PET", source)
    check_pet_is_suv(image, source)


def check_inputs(ct: sitk.Image, pet: sitk.Image) -> None:
    """All content checks of segment_study's inputs."""
    for image, modality in ((ct, "CT"), (pet, "PET")):
        if not isinstance(image, sitk.Image):
            raise InputError(f"The {modality} must be a SimpleITK image, got {type(image).__name__}.")
    # The PET first: a CT given as PET says "swapped?", which is more telling than "the CT has no air".
    check_pet(pet)
    check_ct(ct)
