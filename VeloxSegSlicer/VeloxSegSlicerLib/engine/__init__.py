"""VeloxSeg inference engine: Qt-free and MRML-free (stdlib, numpy, SimpleITK, onnxruntime).

Three sub-packages, one job each (docs/architecture.md), and `errors` shared by all of them:
    inputs/     reading and checking images: files, DICOM, SUV, plausibility checks, a study folder's files
    inference/  the model and one study: manifest, runtime, preprocessing, sliding window, lesions, statistics
    cohort/     cohorts and the command line: run_batch, its workers, outputs, progress, the `veloxseg` CLI

This package is the public API; code outside the engine (the training package included) imports from here,
never from the sub-packages (Testing/test_engine_public_api.py checks Training/).
    load_model, segment_study, SegmentOptions, read_image, read_ct, read_pet_suv, run_batch,
    VeloxSegError, InputError, ModelError, Cancelled
"""

from __future__ import annotations

from .cohort.batch import BatchReport, run_batch
from .errors import Cancelled, InputError, ModelError, VeloxSegError
from .inference.candidates import candidate_features
from .inference.manifest import Manifest, default_manifest_path, file_sha256, load_manifest, verify_model_file
from .inference.pipeline import (
    DEFAULT_MIN_LESION_ML,
    DEFAULT_MIN_SUV_MAX,
    SegmentationResult,
    SegmentOptions,
    segment_study,
)
from .inference.preprocess import (
    CT_AIR_HU,
    IDENTITY,
    PET_OUTSIDE,
    Grid,
    field_of_view,
    model_grid,
    normalize,
    resample_to_grid,
)
from .inference.runtime import Model, load_model
from .inference.sliding_window import sliding_window_logit_diff
from .inference.statistics import LesionStats, StudyTotals
from .inputs.checks import check_ct_is_ct, check_finite, check_overlap, check_pet_is_suv
from .inputs.imageio import read_ct, read_image, write_image
from .inputs.study_inputs import ambiguity_message, matches_by_name, role_of, study_candidates
from .inputs.suv import read_pet_suv

__all__ = [
    "CT_AIR_HU",
    "DEFAULT_MIN_LESION_ML",
    "DEFAULT_MIN_SUV_MAX",
    "IDENTITY",
    "PET_OUTSIDE",
    "BatchReport",
    "Cancelled",
    "Grid",
    "InputError",
    "LesionStats",
    "Manifest",
    "Model",
    "ModelError",
    "SegmentOptions",
    "SegmentationResult",
    "StudyTotals",
    "VeloxSegError",
    "ambiguity_message",
    "candidate_features",
    "check_ct_is_ct",
    "check_finite",
    "check_overlap",
    "check_pet_is_suv",
    "default_manifest_path",
    "field_of_view",
    "file_sha256",
    "load_manifest",
    "load_model",
    "matches_by_name",
    "model_grid",
    "normalize",
    "read_ct",
    "read_image",
    "read_pet_suv",
    "resample_to_grid",
    "role_of",
    "run_batch",
    "segment_study",
    "sliding_window_logit_diff",
    "study_candidates",
    "verify_model_file",
    "write_image",
]
