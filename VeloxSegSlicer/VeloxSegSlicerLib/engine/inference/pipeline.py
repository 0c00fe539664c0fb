"""segment_study: CT + PET (SUV) -> lesion label maps on the CT and PET grids + statistics.

Stages and their share of the progress bar: Resampling (body crop, resampling onto the model grid,
normalisation), Inference (sliding window), Post-processing (components, back onto the CT/PET grids,
minimum volume), Statistics.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from ..errors import Cancelled, InputError, VeloxSegError
from ..inputs.checks import check_inputs
from .coverage import coverage_warning, ct_coverage
from .organs import OrganMap, OrganVotes
from .postprocess import label_maps
from .preprocess import (
    CT_AIR_HU,
    CT_BODY_HU,
    PET_BODY_SUV,
    PET_OUTSIDE,
    Grid,
    normalize_in_place,
    resample_to_model_grid,
)
from .sliding_window import BLENDINGS, sliding_window_logit_diff
from .statistics import StudyTotals, lesion_statistics, study_totals

# stage -> (start, end) of the overall progress fraction
STAGES = {
    "Resampling": (0.0, 0.1),
    "Inference": (0.1, 0.9),
    "Post-processing": (0.9, 0.97),
    "Statistics": (0.97, 1.0),
}


# The lesion table's default rule (docs/cli.md, "Which lesions are reported"): at least 0.1 mL and an SUVmax
# of at least 2. Chosen on the real held-out studies and both phantom families (the model card): it removes
# the one-voxel and cold specks (85 -> 13 reported lesions per lesion-free held-out phantom) and keeps every
# real tumour (IBSI Dice and sensitivity unchanged). 0 and 0 report everything the network marks.
DEFAULT_MIN_LESION_ML = 0.1
DEFAULT_MIN_SUV_MAX = 2.0


@dataclass(frozen=True)
class SegmentOptions:
    overlap: float = 0.25
    blending: str = "uniform"  # "uniform" (as the reference) or "gaussian"
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML
    min_suv_max: float = DEFAULT_MIN_SUV_MAX  # drop lesions whose hottest PET voxel is below this SUV
    skip_air_windows: bool = True  # windows without any body voxel are not run

    def validate(self) -> None:
        if not (isinstance(self.overlap, numbers.Real) and 0.0 <= self.overlap < 1.0):
            raise InputError(f"overlap must be in [0, 1), got {self.overlap!r}.")
        if self.blending not in BLENDINGS:
            raise InputError(f"blending must be 'uniform' or 'gaussian', got {self.blending!r}.")
        if not (isinstance(self.min_lesion_ml, numbers.Real) and math.isfinite(self.min_lesion_ml)):
            raise InputError(f"min_lesion_ml must be a number, got {self.min_lesion_ml!r}.")
        if self.min_lesion_ml < 0:
            raise InputError(f"min_lesion_ml must be >= 0, got {self.min_lesion_ml}.")
        if not (isinstance(self.min_suv_max, numbers.Real) and math.isfinite(self.min_suv_max)
                and self.min_suv_max >= 0):
            raise InputError(f"min_suv_max must be a number >= 0, got {self.min_suv_max!r}.")


@dataclass
class SegmentationResult:
    label_ct: sitk.Image  # uint16 lesion ids (0 = background) on the CT grid
    label_pet: sitk.Image  # the same ids on the PET grid
    lesions: list  # LesionStats, one per id, ascending
    totals: StudyTotals
    not_on_ct: dict = field(default_factory=dict)  # {id: reason} of lesions absent from label_ct (on_ct False)
    model_grid: Grid = None  # the cropped grid the network ran on
    windows_run: int = 0
    device: str = "cpu"
    fallback_reason: str = None
    seconds: dict = field(default_factory=dict)  # per stage
    # of the PET's body, the fraction outside the CT: not analysed (lesions there missing or cut; see coverage)
    pet_outside_ct_fraction: float = 0.0
    warnings: list = field(default_factory=list)  # sentences for the user (stderr, the Slicer log)
    # organs.OrganMap: the organ codes on the model grid (a model with an organ output), else None
    organ_map: OrganMap = None
    # segment_study(..., keep_maps=True) only, else None: on the model grid, (z, y, x) float32, the blended
    # (lesion - background) logit difference before any threshold, and the CT (HU) and PET (SUV) before
    # clipping and normalisation (what calibration and the candidate features need)
    logit_diff: np.ndarray = None
    model_ct_hu: np.ndarray = None
    model_pet_suv: np.ndarray = None
    # the second look, when the model has one: candidates scored and kept (None without it)
    second_look_candidates: int = None
    second_look_kept: int = None


class ReleasableImage:
    """An input image handed over to segment_study, which drops it once only its geometry is needed.

    A whole-body CT (512 x 512 x 1500 int16: 0.79 GB) is needed only until it is resampled onto the model
    grid; afterwards the CT-grid label needs just its geometry. When the caller keeps no other reference
    (``segment_study(ReleasableImage(read_ct(path)), pet, model)``), its voxels are freed before the label
    maps are built, which keeps that study within 2 GB.
    """

    def __init__(self, image: sitk.Image):
        self.image = image

    def take(self) -> sitk.Image:
        image, self.image = self.image, None
        if image is None:
            raise VeloxSegError("This ReleasableImage was already used by a segmentation; read the image again.")
        return image


def geometry_of(image: sitk.Image) -> sitk.Image:
    """An image with the grid of `image` (size, origin, spacing, direction) and no voxel buffer: a label-map
    pixel type is stored run-length encoded, so an empty one costs nothing whatever its size."""
    reference = sitk.Image(image.GetSize(), sitk.sitkLabelUInt8)
    reference.CopyInformation(image)
    return reference


class _Progress:
    """Maps stage-local fractions to the overall fraction and checks for cancellation."""

    def __init__(self, callback, cancelled):
        self.callback = callback
        self.cancelled = cancelled
        self.stage = None
        self.started = time.perf_counter()
        self.seconds = {}

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("Segmentation cancelled.")

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self.stage is not None:
            self.seconds[self.stage] = now - self.started
        self.stage, self.started = stage, now
        self.check()
        self.report(0.0)

    def report(self, fraction: float) -> None:
        if self.callback is not None:
            start, end = STAGES[self.stage]
            self.callback(start + (end - start) * min(max(fraction, 0.0), 1.0), self.stage)

    def finish(self) -> None:
        self.seconds[self.stage] = time.perf_counter() - self.started
        if self.callback is not None:
            self.callback(1.0, self.stage)


def segment_study(ct_image, pet_suv_image, model, options=None, progress=None, cancelled=None, keep_maps=False):
    """Segment lesions in a CT (HU) + PET (SUVbw) study with a model from load_model().

    progress(fraction, stage) is called often (fraction 0-1 overall); cancelled() is polled between
    patches and stages and makes this raise Cancelled. Returns a SegmentationResult.
    ct_image may be a ReleasableImage: its voxels are then dropped as soon as they are resampled.
    keep_maps=True keeps the model-grid logit difference, CT and PET in the result (training's calibration
    and candidate features; three float32 volumes of the cropped grid).

    Lesion voxels are those whose logit difference exceeds the manifest's lesion threshold (0 unless
    calibrated); a model with a second look keeps only the candidates its classifier accepts (second_look).
    """
    if isinstance(ct_image, ReleasableImage):
        ct_image = ct_image.take()
    options = options or SegmentOptions()
    options.validate()
    steps = _Progress(progress, cancelled)
    manifest = model.manifest
    threads = model.threads

    steps.enter("Resampling")
    check_inputs(ct_image, pet_suv_image)
    on_grid = resample_to_model_grid(
        ct_image, pet_suv_image, manifest.spacing_xyz_mm, manifest.patch_size_zyx, threads=threads
    )
    ct_grid = geometry_of(ct_image)  # from here on the CT grid is all that is needed of the CT
    del ct_image  # frees the CT's voxels when the caller handed them over (ReleasableImage)
    steps.check()
    grid = on_grid.grid
    ct = sitk.GetArrayFromImage(on_grid.ct)
    pet = sitk.GetArrayFromImage(on_grid.pet)
    del on_grid  # the arrays are copies; drop the images now
    second_look = getattr(model, "second_look", None)
    # the second look and keep_maps need CT and PET as measured, before normalisation
    ct_hu, pet_suv = (ct.copy(), pet.copy()) if keep_maps or second_look is not None else (None, None)
    body = (ct > CT_BODY_HU) | (pet > PET_BODY_SUV) if options.skip_air_windows else None
    normalize_in_place(ct, manifest.normalization["CT"])
    normalize_in_place(pet, manifest.normalization["PET"])
    steps.report(1.0)

    steps.enter("Inference")
    windows = [0]
    # a model with an organ output: both outputs per window, and the organ of the most confident window
    votes = (OrganVotes(ct.shape, manifest.patch_size_zyx, manifest.organ_downsampling)
             if manifest.has_organs else None)

    def run_patch(batch):
        windows[0] += 1
        return model.run(batch) if votes is None else model.run_with_organs(batch)

    pad_values = (
        _normalized(CT_AIR_HU, manifest.normalization["CT"]),
        _normalized(PET_OUTSIDE, manifest.normalization["PET"]),
    )
    logit_diff = sliding_window_logit_diff(
        ct,
        pet,
        run_patch,
        manifest.patch_size_zyx,
        options.overlap,
        options.blending,
        body=body,
        pad_values=pad_values,
        progress=steps.report,
        cancelled=cancelled,
        organ_votes=votes,
    )
    del ct, pet, body
    organ_map = None
    if votes is not None:
        organ_map = OrganMap.on_model_grid(votes.result(), grid, manifest.organ_names, manifest.organ_sites)
        del votes

    steps.enter("Post-processing")
    # lesion where decision > 0: the logit difference itself with the default threshold (0) and no second look
    threshold = float(getattr(manifest, "lesion_threshold", 0.0))
    looked = None
    if second_look is not None:
        started = time.perf_counter()
        looked = second_look.decide(logit_diff, ct_hu, pet_suv, grid, threshold,
                                    sitk.GetArrayViewFromImage(organ_map.image) if organ_map is not None else None,
                                    manifest.organ_names, threads)
        decision = looked.decision
        steps.seconds["Second look"] = time.perf_counter() - started
    elif threshold != 0.0:
        decision = logit_diff - np.float32(threshold)  # float32: x - t > 0 exactly when x > t
    else:
        decision = logit_diff
    if not keep_maps:  # drop what label_maps does not need (decision may be logit_diff itself)
        ct_hu = pet_suv = logit_diff = None
    label_ct, label_pet, not_on_ct = label_maps(
        decision,
        grid,
        ct_grid,
        pet_suv_image,
        options.min_lesion_ml,
        threads,
        progress=steps.report,
        cancelled=cancelled,
        min_suv_max=options.min_suv_max,
    )
    del decision

    steps.enter("Statistics")
    # A partial CT is never silent: the PET beyond it is not analysed (see coverage).
    coverage = ct_coverage(pet_suv_image, ct_grid, label_pet)
    lesions = [
        dataclasses.replace(lesion, on_ct=lesion.id not in not_on_ct, cut_by_ct_edge=lesion.id in coverage.cut)
        for lesion in lesion_statistics(label_pet, pet_suv_image, organ_map)
    ]
    warning = coverage_warning(coverage)
    steps.finish()
    return SegmentationResult(
        label_ct=label_ct,
        label_pet=label_pet,
        lesions=lesions,
        totals=study_totals(lesions),
        not_on_ct=not_on_ct,
        model_grid=grid,
        windows_run=windows[0],
        device=model.device,
        fallback_reason=model.fallback_reason,
        seconds=dict(steps.seconds),
        pet_outside_ct_fraction=coverage.outside_fraction,
        warnings=[warning] if warning else [],
        organ_map=organ_map,
        logit_diff=logit_diff if keep_maps else None,
        model_ct_hu=ct_hu,
        model_pet_suv=pet_suv,
        second_look_candidates=looked.candidates if looked is not None else None,
        second_look_kept=looked.kept if looked is not None else None,
    )


def _normalized(value: float, params: dict) -> float:
    return float(normalize_in_place(np.array([value], dtype=np.float32), params)[0])
