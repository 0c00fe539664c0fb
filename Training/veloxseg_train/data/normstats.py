"""Normalisation constants from the training split: per-case sufficient statistics, then their sum.

Both modalities use body voxels (CT above -500 HU with holes filled, so lungs count): on a small data set
they are far more stable than lesion voxels (nnU-Net's choice), and they do not depend on the field of
view the way whole-volume statistics do.
CT: clip to the 0.5th / 99.5th percentile of HU, then mean and std of the clipped values. Percentiles come
from a 1-HU histogram over [-1024, 3071] (values outside fall in the end bins), so they are exact to 1 HU.
PET: clip to [0, a fixed SUV ceiling] (30 by default, so the constants do not hinge on how much bladder
the data set holds), then mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CT_LOW, CT_HIGH = -1024, 3071


@dataclass
class CaseStats:
    ct_hist: np.ndarray = field(default_factory=lambda: np.zeros(CT_HIGH - CT_LOW + 1, np.int64))
    pet_sum: float = 0.0
    pet_sumsq: float = 0.0
    pet_count: int = 0

    def __iadd__(self, other: CaseStats) -> CaseStats:
        self.ct_hist = self.ct_hist + other.ct_hist
        self.pet_sum += other.pet_sum
        self.pet_sumsq += other.pet_sumsq
        self.pet_count += other.pet_count
        return self


def case_stats(ct: np.ndarray, pet: np.ndarray, body: np.ndarray, pet_clip_high: float) -> CaseStats:
    """Statistics of one case's body voxels."""
    hu = np.clip(np.rint(ct[body]), CT_LOW, CT_HIGH).astype(np.int64) - CT_LOW
    suv = np.clip(pet[body].astype(np.float64), 0.0, pet_clip_high)
    return CaseStats(np.bincount(hu, minlength=CT_HIGH - CT_LOW + 1), float(suv.sum()),
                     float(np.square(suv).sum()), int(suv.size))


def _percentile(hist: np.ndarray, q: float) -> float:
    cumulative = np.cumsum(hist)
    return float(CT_LOW + np.searchsorted(cumulative, q / 100.0 * cumulative[-1]))


def normalization(stats: CaseStats, pet_clip_high: float) -> dict:
    """The `normalization` block of dataset.json and of the ONNX manifest."""
    n = int(stats.ct_hist.sum())
    if n == 0 or stats.pet_count == 0:
        raise ValueError("no body voxels in the training split: cannot compute normalisation constants")
    low, high = _percentile(stats.ct_hist, 0.5), _percentile(stats.ct_hist, 99.5)
    values = np.clip(np.arange(CT_LOW, CT_HIGH + 1, dtype=np.float64), low, high)
    ct_mean = float(np.dot(stats.ct_hist, values) / n)
    ct_std = float(np.sqrt(np.dot(stats.ct_hist, (values - ct_mean) ** 2) / n))
    pet_mean = stats.pet_sum / stats.pet_count
    pet_std = float(np.sqrt(max(stats.pet_sumsq / stats.pet_count - pet_mean ** 2, 0.0)))
    return {
        "CT": {"clip_low": low, "clip_high": high, "mean": round(ct_mean, 4), "std": round(max(ct_std, 1e-8), 4),
               "unit": "HU"},
        "PET": {"clip_low": 0.0, "clip_high": float(pet_clip_high), "mean": round(pet_mean, 6),
                "std": round(max(pet_std, 1e-8), 6), "unit": "SUVbw"},
    }
