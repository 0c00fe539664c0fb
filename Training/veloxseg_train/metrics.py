"""Segmentation metrics of one case: Dice, HD95, precision, recall, AutoPET FP / FN volumes.

Masks are boolean (z, y, x) arrays on one grid; spacing is (z, y, x) in mm.

Empty-set conventions (so every case has a number and means stay meaningful):
- Dice: both masks empty -> 1.0 (nothing to find, nothing found); exactly one empty -> 0.0.
- Precision: no prediction -> NaN (undefined). Recall: no truth -> NaN. Summaries skip NaN.
- HD95: both empty -> 0.0; exactly one empty -> the diagonal of the volume in mm, the largest distance
  the grid can hold (a finite "worst" value; the BraTS convention, but for this grid).
- FP volume (AutoPET): mL of predicted connected components that touch no true voxel; FN volume: mL of
  true components that no predicted voxel touches. Components use 18-connectivity, as the AutoPET
  evaluation does.
HD95 follows medpy's `hd95` (what the reference used): the 95th percentile of the pooled surface-to-surface
distances in both directions, surfaces being the mask minus its 6-connected erosion.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np
from scipy import ndimage

_CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)
_CONNECTIVITY_6 = ndimage.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if p + t == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / (p + t)


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    p = int(np.count_nonzero(pred))
    return int(np.count_nonzero(pred & truth)) / p if p else math.nan


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    t = int(np.count_nonzero(truth))
    return int(np.count_nonzero(pred & truth)) / t if t else math.nan


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CONNECTIVITY_6, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th percentile Hausdorff distance in mm (see the module docstring for empty masks)."""
    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return 0.0
    if not (has_p and has_t):
        return float(np.linalg.norm(np.asarray(pred.shape) * np.asarray(spacing_zyx, dtype=float)))
    # Work inside the joint bounding box plus one voxel: every surface voxel lies there, so the distance
    # transforms are exact while costing a fraction of the whole volume.
    both = pred | truth
    lo = [max(int(np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax)))[0]) - 1, 0)
          for ax in range(3)]
    hi = [int(np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax)))[-1]) + 2 for ax in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p_surface, t_surface = _surface(pred[box]), _surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~t_surface, sampling=spacing_zyx)[p_surface]
    to_pred = ndimage.distance_transform_edt(~p_surface, sampling=spacing_zyx)[t_surface]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def false_positive_volume(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> float:
    """mL of predicted components (18-connected) that do not overlap the truth."""
    components, n = ndimage.label(pred, structure=_CONNECTIVITY_18)
    if n == 0:
        return 0.0
    touched = np.zeros(n + 1, dtype=bool)
    touched[np.unique(components[truth & pred])] = True
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    return float(sizes[1:][~touched[1:]].sum()) * voxel_ml


def false_negative_volume(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> float:
    """mL of true components (18-connected) that no predicted voxel touches."""
    return false_positive_volume(truth, pred, voxel_ml)


def lesion_counts(pred: np.ndarray, truth: np.ndarray) -> Dict[str, int]:
    """Lesion-level counts (18-connected components): true lesions, those touched by the prediction, and
    predicted components (what a lesion table would list, up to the engine's own connectivity)."""
    true_components, n_true = ndimage.label(truth, structure=_CONNECTIVITY_18)
    found = np.unique(true_components[truth & pred])
    _, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_18)
    return {"true_lesions": int(n_true), "found_lesions": int(np.count_nonzero(found)),
            "pred_components": int(n_pred)}


SIZE_BINS_ML = ((0.0, 1.0, "lt1ml"), (1.0, 5.0, "1to5ml"), (5.0, math.inf, "ge5ml"))  # true lesion volumes


def lesion_counts_by_size(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> Dict[str, int]:
    """True and found lesions (18-connected components of the truth) per volume bin of SIZE_BINS_ML."""
    components, n = ndimage.label(truth, structure=_CONNECTIVITY_18)
    volumes = np.bincount(components.ravel(), minlength=n + 1)[1:] * voxel_ml
    found = np.zeros(n + 1, bool)
    found[np.unique(components[truth & pred])] = True
    found = found[1:]
    counts = {}
    for low, high, name in SIZE_BINS_ML:
        in_bin = (volumes >= low) & (volumes < high)
        counts[f"true_lesions_{name}"] = int(in_bin.sum())
        counts[f"found_lesions_{name}"] = int((in_bin & found).sum())
    return counts


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, float]:
    """All metrics of one case, plus voxel counts and volumes, as a flat dict."""
    pred = np.asarray(pred).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} are not on one grid")
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    tp = int(np.count_nonzero(pred & truth))
    return {
        "dice": dice(pred, truth),
        "hd95_mm": hd95(pred, truth, spacing_zyx),
        "precision": precision(pred, truth),
        "recall": recall(pred, truth),
        "fp_volume_ml": false_positive_volume(pred, truth, voxel_ml),
        "fn_volume_ml": false_negative_volume(pred, truth, voxel_ml),
        "true_volume_ml": int(np.count_nonzero(truth)) * voxel_ml,
        "pred_volume_ml": int(np.count_nonzero(pred)) * voxel_ml,
        "tp_voxels": tp,
        "fp_voxels": int(np.count_nonzero(pred)) - tp,
        "fn_voxels": int(np.count_nonzero(truth)) - tp,
        **lesion_counts(pred, truth),
        **lesion_counts_by_size(pred, truth, voxel_ml),
    }


SUMMARY_KEYS = ("dice", "hd95_mm", "precision", "recall", "fp_volume_ml", "fn_volume_ml")


def summarize(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Means over cases (NaN skipped). `dice_pos` etc. use only cases with lesions (AutoPET practice);
    `fp_volume_ml_neg` is the mean FP volume on lesion-free cases."""
    def mean(values) -> float:
        values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        return float(np.mean(values)) if values else math.nan

    positive = [r for r in rows if r["true_volume_ml"] > 0]
    negative = [r for r in rows if r["true_volume_ml"] == 0]
    summary: Dict[str, float] = {"cases": len(rows), "positive_cases": len(positive),
                                 "negative_cases": len(negative)}
    for key in SUMMARY_KEYS:
        summary[key] = mean(r[key] for r in rows)
    for key in ("dice", "hd95_mm", "recall", "fn_volume_ml"):
        summary[f"{key}_pos"] = mean(r[key] for r in positive)
    summary["fp_volume_ml_neg"] = mean(r["fp_volume_ml"] for r in negative)
    if rows and "true_lesions" in rows[0]:
        true_lesions = sum(int(r["true_lesions"]) for r in rows)
        summary["lesion_sensitivity"] = (sum(int(r["found_lesions"]) for r in rows) / true_lesions
                                         if true_lesions else math.nan)
        reported = "reported_lesions" if "reported_lesions" in rows[0] else "pred_components"
        summary["reported_lesions"] = mean(float(r[reported]) for r in rows)
        summary["reported_lesions_neg"] = mean(float(r[reported]) for r in negative)
    for _, _, name in SIZE_BINS_ML:
        if rows and f"true_lesions_{name}" in rows[0]:
            true_in_bin = sum(int(r[f"true_lesions_{name}"]) for r in rows)
            summary[f"lesion_sensitivity_{name}"] = (sum(int(r[f"found_lesions_{name}"]) for r in rows)
                                                     / true_in_bin if true_in_bin else math.nan)
    if rows and "site_judged" in rows[0]:
        judged = sum(int(r["site_judged"] or 0) for r in rows)
        summary["site_accuracy"] = (sum(int(r["site_correct"] or 0) for r in rows) / judged
                                    if judged else math.nan)
    return summary


def json_safe(value):
    """JSON has no NaN/inf: the same structure with them written as None (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
