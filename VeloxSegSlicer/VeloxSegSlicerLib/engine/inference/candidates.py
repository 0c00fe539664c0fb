"""Lesion candidates and the features a reader looks at, for the second look (docs/architecture.md).

A candidate is a connected component (26-connected, as the lesions) of the model-grid voxels whose blended
lesion-minus-background logit exceeds the candidate threshold, a threshold below the lesion threshold (e.g.
probability 0.25 against 0.5), so the classifier also sees what the network was unsure of. Everything is
measured on the cropped model grid the network ran on, from the CT (HU) and PET (SUV) resampled onto it
before normalisation: one grid, no resampling per candidate, the same numbers in training (`veloxseg-train
candidates`) and in the engine, which both call `candidate_features`.

Features, in this order (FEATURE_NAMES), then one per organ code of the classifier ("organ:<name>"):
- suv_max, suv_mean: maximum and mean SUV of the candidate's voxels.
- suv_peak: mean SUV of the voxels within a 1 cm^3 sphere around the hottest voxel (statistics.suv_peak).
- log10_volume_ml: log10 of the volume in mL (voxels x voxel volume).
- extent: voxels / voxels of the bounding box (1 for a box, 0.52 for a ball, small for a thin or bent one).
- elongation: sqrt(largest / second-largest eigenvalue of the voxel-centre covariance in mm); 1 when round.
- ct_hu_mean: mean CT (HU) over the candidate.
- relative_z: the candidate's centroid height in the body: 0 at the body's lowest slice (feet end), 1 at the
  highest (head end), from the slices holding any body voxel (CT > -500 HU or SUV > 0.1).
- prob_max, prob_mean: the network's lesion probability (sigmoid of the logit difference), maximum and mean.
- organ:<name>: 1 for the organ code most frequent over the candidate in the model's organ map (lower code
  on a tie), 0 for the others; all 0 for a model without an organ output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from .preprocess import CT_BODY_HU, PET_BODY_SUV
from .statistics import sphere_offsets, suv_peak

FEATURE_NAMES = (
    "suv_max",
    "suv_mean",
    "suv_peak",
    "log10_volume_ml",
    "extent",
    "elongation",
    "ct_hu_mean",
    "relative_z",
    "prob_max",
    "prob_mean",
)
ORGAN_PREFIX = "organ:"
MAX_CANDIDATES = 65535


def organ_feature_names(organ_names) -> tuple:
    return tuple(ORGAN_PREFIX + name for name in organ_names)


@dataclass
class Candidates:
    """The candidates of one study: their ids on the model grid, bounding boxes and features."""

    labels: np.ndarray  # uint32 (z, y, x) candidate ids on the model grid, 0 = none
    count: int
    boxes: dict  # {id: (lo_zyx, hi_zyx exclusive)}
    voxels: np.ndarray  # (count,) voxels of each candidate
    features: np.ndarray  # (count, len(feature_names)) float32, row i = candidate i + 1
    feature_names: tuple


def components(logit_diff: np.ndarray, threshold_logit: float, threads: int = 1):
    """-> (labels uint32 (z, y, x), count, boxes {id: (lo, hi)}, voxels (count,)) of logit_diff > threshold."""
    mask = sitk.GetImageFromArray((logit_diff > np.float32(threshold_logit)).astype(np.uint8))
    labeller = sitk.ConnectedComponentImageFilter()
    labeller.SetFullyConnected(True)
    if threads > 0:
        labeller.SetNumberOfThreads(threads)
    labelled = labeller.Execute(mask)
    count = min(labeller.GetObjectCount(), MAX_CANDIDATES)
    boxes, voxels = {}, np.zeros(count, dtype=np.int64)
    if count:
        shape_stats = sitk.LabelShapeStatisticsImageFilter()
        shape_stats.ComputePerimeterOff()
        shape_stats.Execute(labelled)
        for label in range(1, count + 1):
            x, y, z, sx, sy, sz = shape_stats.GetBoundingBox(label)
            boxes[label] = ((z, y, x), (z + sz, y + sy, x + sx))
            voxels[label - 1] = shape_stats.GetNumberOfPixels(label)
    labels = sitk.GetArrayFromImage(labelled)
    if labeller.GetObjectCount() > count:  # more than uint16 ids: the smallest tail is not looked at
        labels[labels > count] = 0
    return labels, count, boxes, voxels


def body_z_range(ct_hu: np.ndarray, pet_suv: np.ndarray, spacing_z: float, origin_z: float):
    """(lowest, highest) physical z (mm) of the slices holding a body voxel; the whole grid when none does."""
    rows = np.flatnonzero(((ct_hu > CT_BODY_HU) | (pet_suv > PET_BODY_SUV)).any(axis=(1, 2)))
    if rows.size == 0:
        rows = np.array([0, ct_hu.shape[0] - 1])
    return origin_z + rows[0] * spacing_z, origin_z + rows[-1] * spacing_z


def _elongation(inside: np.ndarray, spacing_zyx) -> float:
    if np.count_nonzero(inside) < 3:
        return 1.0
    points = np.argwhere(inside).astype(np.float64) * np.asarray(spacing_zyx)
    eigen = np.sort(np.linalg.eigvalsh(np.cov(points, rowvar=False)))[::-1]
    if eigen[1] <= 1e-9:
        return float(np.sqrt(eigen[0] / 1e-9)) if eigen[0] > 1e-9 else 1.0
    return float(np.sqrt(eigen[0] / eigen[1]))


def candidate_features(logit_diff: np.ndarray, ct_hu: np.ndarray, pet_suv: np.ndarray, grid,
                       threshold_logit: float, organ_codes=None, model_organ_names=(), classifier_organs=(),
                       threads: int = 1) -> Candidates:
    """The candidates of logit_diff > threshold_logit and their features (module docstring).

    logit_diff, ct_hu, pet_suv: (z, y, x) float arrays on the model grid `grid` (preprocess.Grid, identity
    direction). organ_codes: uint8 (z, y, x) codes of the model's organ map or None; model_organ_names: the
    name of each code; classifier_organs: the organ names the classifier has a feature for (their order)."""
    labels, count, boxes, voxels = components(logit_diff, threshold_logit, threads)
    names = FEATURE_NAMES + organ_feature_names(classifier_organs)
    features = np.zeros((count, len(names)), dtype=np.float32)
    if count == 0:
        return Candidates(labels, 0, boxes, voxels, features, names)
    spacing_zyx = tuple(float(s) for s in reversed(grid.spacing))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    offsets = sphere_offsets(grid.spacing)
    z_low, z_high = body_z_range(ct_hu, pet_suv, spacing_zyx[0], float(grid.origin[2]))
    height = max(z_high - z_low, spacing_zyx[0])
    column = {name: i for i, name in enumerate(classifier_organs)}
    organ_column = [column.get(name, -1) for name in model_organ_names]
    base = len(FEATURE_NAMES)
    for label in range(1, count + 1):
        lo, hi = boxes[label]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        inside = labels[region] == label
        suv = pet_suv[region][inside]
        hottest = np.unravel_index(np.flatnonzero(inside)[int(np.argmax(suv))], inside.shape)
        hottest = tuple(h + a for h, a in zip(hottest, lo))
        probability = 1.0 / (1.0 + np.exp(-logit_diff[region][inside].astype(np.float64)))
        z_mean = lo[0] + float(np.dot(inside.sum(axis=(1, 2)), np.arange(inside.shape[0]))) / inside.sum()
        z_mm = float(grid.origin[2]) + z_mean * spacing_zyx[0]
        row = features[label - 1]
        row[:base] = (
            float(suv.max()),
            float(suv.mean(dtype=np.float64)),
            suv_peak(pet_suv, hottest, offsets),
            np.log10(suv.size * voxel_ml),
            suv.size / float(inside.size),
            _elongation(inside, spacing_zyx),
            float(ct_hu[region][inside].mean(dtype=np.float64)),
            min(max((z_mm - z_low) / height, 0.0), 1.0),
            float(probability.max()),
            float(probability.mean()),
        )
        if organ_codes is not None and classifier_organs:
            codes = organ_codes[region][inside]
            code = int(np.argmax(np.bincount(codes.ravel(), minlength=len(organ_column))))
            if code < len(organ_column) and organ_column[code] >= 0:
                row[base + organ_column[code]] = 1.0
    return Candidates(labels, count, boxes, voxels, features, names)
