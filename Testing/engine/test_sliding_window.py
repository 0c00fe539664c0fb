"""Sliding window: MONAI window placement, blending of logits, padding, air skipping, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import PATCH, THRESHOLD

from VeloxSegSlicerLib.engine import Cancelled, load_model
from VeloxSegSlicerLib.engine.inference.sliding_window import (
    NOT_COVERED,
    gaussian_importance,
    sliding_window_logit_diff,
    window_starts,
)

RAMP = np.linspace(-1.0, 1.0, PATCH, dtype=np.float32)  # the ramp model's lesion offset along patch z


@pytest.fixture(scope="module")
def ramp_model(model_dir):
    return load_model(model_dir / "ramp.json")


def _volume(shape, seed=1):
    rng = np.random.default_rng(seed)
    ct = rng.uniform(-1000, 1000, shape).astype(np.float32)
    pet = rng.uniform(0, 10, shape).astype(np.float32)
    return ct, pet


def _monai_starts(length, roi, overlap):
    """MONAI's _get_scan_interval + dense_patch_slices for one axis, written out independently."""
    interval = int(roi * (1 - overlap)) if length > roi else roi
    count = 1 if length <= roi else int(np.ceil(float(length - roi) / interval)) + 1
    return sorted({min(i * interval, max(length - roi, 0)) for i in range(count)})


@pytest.mark.parametrize("length", [50, 96, 97, 168, 169, 200, 326])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_window_placement_matches_monai(length, overlap):
    stride = max(1, int(96 * (1 - overlap)))
    assert window_starts(length, 96, stride) == _monai_starts(length, 96, overlap)


def test_single_window_equals_direct_run(ramp_model):
    ct, pet = _volume((PATCH, PATCH, PATCH))
    result = sliding_window_logit_diff(ct, pet, ramp_model.run)
    logits = ramp_model.run(np.stack([ct, pet])[None])
    assert np.array_equal(result, logits[0, 1] - logits[0, 0])


@pytest.mark.parametrize("blending", ["uniform", "gaussian"])
def test_two_windows_blend_logits(ramp_model, blending):
    ct, pet = _volume((168, PATCH, PATCH))
    result = sliding_window_logit_diff(ct, pet, ramp_model.run, blending=blending)
    first = ramp_model.run(np.stack([ct[:96], pet[:96]])[None])[0]
    second = ramp_model.run(np.stack([ct[72:], pet[72:]])[None])[0]
    d1, d2 = first[1] - first[0], second[1] - second[0]
    # voxels seen by one window only are that window's output, unchanged
    assert np.allclose(result[:72], d1[:72], atol=1e-6)
    assert np.allclose(result[96:], d2[24:], atol=1e-6)
    # the overlap is the (weighted) mean of the two windows' logits
    if blending == "uniform":
        expected = (d1[72:] + d2[:24]) / 2
    else:
        w = gaussian_importance((PATCH, PATCH, PATCH))
        w1, w2 = w[72:], w[:24]
        expected = (d1[72:] * w1 + d2[:24] * w2) / (w1 + w2)
    assert np.allclose(result[72:96], expected, atol=1e-5)
    # and, for this model, exactly PET - threshold + the mean ramp offset
    ramp = (RAMP[72:] + RAMP[:24]) / 2 if blending == "uniform" else None
    if ramp is not None:
        assert np.allclose(result[72:96], pet[72:96] - THRESHOLD + ramp[:, None, None], atol=1e-5)


def test_volume_smaller_than_a_patch_is_padded(ramp_model):
    ct, pet = _volume((40, 50, 30))
    result = sliding_window_logit_diff(ct, pet, ramp_model.run, pad_values=(-1000.0, 0.0))
    assert result.shape == (40, 50, 30)
    assert np.allclose(result, pet - THRESHOLD + RAMP[:40, None, None], atol=1e-6)


def test_windows_without_body_are_skipped(model):
    ct, pet = _volume((168, PATCH, PATCH))
    body = np.zeros(ct.shape, dtype=bool)
    body[:50] = True
    calls = []

    def run(batch):
        calls.append(1)
        return model.run(batch)

    result = sliding_window_logit_diff(ct, pet, run, body=body)
    assert len(calls) == 1
    assert np.allclose(result[:96], pet[:96] - THRESHOLD, atol=1e-6)
    assert np.all(result[96:] == NOT_COVERED)


def test_cancel_between_patches(model):
    ct, pet = _volume((168, PATCH, PATCH))
    calls = []

    def run(batch):
        calls.append(1)
        return model.run(batch)

    with pytest.raises(Cancelled):
        sliding_window_logit_diff(ct, pet, run, cancelled=lambda: len(calls) >= 1)
    assert len(calls) == 1


def test_progress_reaches_one(model):
    ct, pet = _volume((100, 100, PATCH))
    seen = []
    sliding_window_logit_diff(ct, pet, model.run, progress=seen.append)
    assert len(seen) == 4 and seen[-1] == 1.0
