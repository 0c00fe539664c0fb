"""VeloxSeg inference engine: Qt-free and MRML-free (stdlib, numpy, SimpleITK, onnxruntime).

Public API (docs/architecture.md):
    load_model, segment_study, SegmentOptions, read_image, read_ct, read_pet_suv,
    VeloxSegError, InputError, ModelError, Cancelled
"""

from __future__ import annotations

from .errors import Cancelled, InputError, ModelError, VeloxSegError
from .imageio import read_ct, read_image, write_image
from .manifest import Manifest, default_manifest_path, load_manifest
from .pipeline import DEFAULT_MIN_LESION_ML, DEFAULT_MIN_SUV_MAX, SegmentationResult, SegmentOptions, segment_study
from .preprocess import normalize
from .runtime import Model, load_model
from .statistics import LesionStats, StudyTotals
from .suv import read_pet_suv

__all__ = [
    "DEFAULT_MIN_LESION_ML",
    "DEFAULT_MIN_SUV_MAX",
    "Cancelled",
    "InputError",
    "LesionStats",
    "Manifest",
    "Model",
    "ModelError",
    "SegmentOptions",
    "SegmentationResult",
    "StudyTotals",
    "VeloxSegError",
    "default_manifest_path",
    "load_manifest",
    "load_model",
    "normalize",
    "read_ct",
    "read_image",
    "read_pet_suv",
    "segment_study",
    "write_image",
]
