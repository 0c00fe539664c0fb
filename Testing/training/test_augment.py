"""Augmentation keeps image and label aligned: rotation about z (in the y-x plane) and z-flip."""

from __future__ import annotations

import math

import numpy as np
import torch

from veloxseg_train.augment import AugmentParams, AugmentSettings, apply, draw_params


def _crop(size=24):
    z, y, x = np.indices((size, size, size))
    label = ((z - 12) ** 2 + (y - 8) ** 2 + (x - 15) ** 2 <= 16).astype(np.uint8)
    label[5:8, 2:20, 3:6] = 1  # an asymmetric bar, so rotations and flips are visible
    image = np.stack([label * 2.0 + np.float32(z) / size, label.astype(np.float32)]).astype(np.float32)
    return torch.from_numpy(image), torch.from_numpy(label)


def test_quarter_turn_is_exact_and_turns_the_axial_plane():
    image, label = _crop()
    out_image, out_label = apply(image, label, AugmentParams(angle_rad=math.pi / 2))
    k = 1 if torch.equal(out_label, torch.rot90(label, 1, dims=(1, 2))) else -1
    assert torch.equal(out_label, torch.rot90(label, k, dims=(1, 2)))
    assert torch.allclose(out_image, torch.rot90(image, k, dims=(2, 3)), atol=1e-4)
    assert out_label.dtype == label.dtype


def test_small_rotation_keeps_label_on_the_image():
    image, label = _crop()
    out_image, out_label = apply(image, label, AugmentParams(angle_rad=math.radians(13)))
    # Channel 1 is the label as an image: linearly resampled, then thresholded, it must match the
    # nearest-neighbour label almost everywhere (differences only along the boundary).
    agree = ((out_image[1] > 0.5) == (out_label > 0)).float().mean().item()
    assert agree > 0.98
    assert abs(int(out_label.sum()) - int(label.sum())) <= 0.15 * int(label.sum())
    assert not torch.equal(out_label, label)
    # z is untouched: wherever no label was mixed in (channel 1 == 0), channel 0 is still the z ramp.
    background = out_image[1] < 1e-6
    z_ramp = torch.arange(24, dtype=torch.float32)[:, None, None].expand(24, 24, 24) / 24
    assert torch.allclose(out_image[0][background], z_ramp[background], atol=1e-3)


def test_z_flip_flips_both():
    image, label = _crop()
    out_image, out_label = apply(image, label, AugmentParams(flip_z=True))
    assert torch.equal(out_label, label.flip(0)) and torch.equal(out_image, image.flip(1))


def test_draw_params_respects_switches_probabilities_and_range():
    rng = np.random.default_rng(0)
    off = AugmentSettings(rotate=False, flip_z=False)
    assert all(draw_params(off, rng) == AugmentParams() for _ in range(50))
    always = AugmentSettings(rotate=True, rotate_range_deg=15, rotate_p=1.0, flip_z=True, flip_z_p=1.0)
    params = [draw_params(always, rng) for _ in range(200)]
    assert all(p.flip_z and 0 < abs(p.angle_rad) <= math.radians(15) for p in params)
    half = AugmentSettings(rotate=True, rotate_p=0.5, flip_z=True, flip_z_p=0.5)
    params = [draw_params(half, rng) for _ in range(2000)]
    assert abs(np.mean([p.angle_rad != 0 for p in params]) - 0.5) < 0.05
    assert abs(np.mean([p.flip_z for p in params]) - 0.5) < 0.05
