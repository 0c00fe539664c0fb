"""Augmentation keeps image and label aligned: rotation about z (in the y-x plane) and z-flip."""

from __future__ import annotations

import math

import numpy as np
import pytest
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


# --- extended augmentation (issue 12) ------------------------------------------------------------------------

PET_MEAN, PET_STD = 1.0, 2.0  # normalisation of the PET channel in these tests


def _pet_crop(size=24, seed=0):
    """(CT, PET) channels normalised as the trainer's: PET = (SUV - 1) / 2 with a warm body and a hot spot."""
    rng = np.random.default_rng(seed)
    suv = np.full((size,) * 3, 1.0, np.float32) + rng.uniform(0, 0.2, (size,) * 3).astype(np.float32)
    suv[10:14, 9:13, 11:15] = 8.0
    ct = rng.normal(0, 1, (size,) * 3).astype(np.float32)
    image = np.stack([ct, (suv - PET_MEAN) / PET_STD])
    return torch.from_numpy(image), torch.zeros((size,) * 3, dtype=torch.uint8), suv


def _suv(image):
    return image[1] * PET_STD + PET_MEAN


def test_scaling_and_elastic_keep_label_on_image():
    image, label = _crop()
    field = np.random.default_rng(1).standard_normal((3, 4, 4, 4)).astype(np.float32) * 2.0
    params = AugmentParams(angle_rad=math.radians(10), scale_zyx=(0.9, 1.12, 1.05), elastic=field)
    out_image, out_label = apply(image, label, params)
    agree = ((out_image[1] > 0.5) == (out_label > 0)).float().mean().item()
    assert agree > 0.97
    assert not torch.equal(out_label, label) and out_label.dtype == label.dtype
    assert set(torch.unique(out_label).tolist()) <= {0, 1}
    # the elastic field alone moves the label too, and keeps it on the image
    moved_image, moved_label = apply(image, label, AugmentParams(elastic=field))
    assert not torch.equal(moved_label, label)
    assert ((moved_image[1] > 0.5) == (moved_label > 0)).float().mean().item() > 0.97


def test_scale_factor_is_the_size_factor_of_the_content():
    """A factor s along an axis makes the content s times as long there (about the crop centre)."""
    image, label = _crop()
    _, larger = apply(image, label, AugmentParams(scale_zyx=(1.0, 1.2, 1.2)))
    _, smaller = apply(image, label, AugmentParams(scale_zyx=(1.0, 0.85, 0.85)))
    before = int(label.sum())
    assert int(larger.sum()) == pytest.approx(1.2 * 1.2 * before, rel=0.15)
    assert int(smaller.sum()) == pytest.approx(0.85 * 0.85 * before, rel=0.15)


def test_pet_scale_multiplies_suv_through_the_normalisation():
    image, label, suv = _pet_crop()
    out, out_label = apply(image, label, AugmentParams(pet_scale=1.2, pet_mean=PET_MEAN, pet_std=PET_STD))
    assert torch.allclose(_suv(out), 1.2 * torch.from_numpy(suv), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[0], image[0]) and torch.equal(out_label, label)


def test_ct_contrast_scales_the_ct_channel_only():
    image, label, _ = _pet_crop()
    out, _ = apply(image, label, AugmentParams(ct_contrast=0.9, pet_mean=PET_MEAN, pet_std=PET_STD))
    assert torch.allclose(out[0], 0.9 * image[0]) and torch.equal(out[1], image[1])


def test_pet_blur_keeps_the_total_uptake_and_lowers_the_peak():
    image, label, suv = _pet_crop()
    out, _ = apply(image, label, AugmentParams(pet_blur_sigma=1.0, pet_mean=PET_MEAN, pet_std=PET_STD))
    blurred = _suv(out)
    assert float(blurred.sum()) == pytest.approx(float(suv.sum()), rel=1e-3)
    assert float(blurred.max()) < 0.9 * float(suv.max())
    assert float(blurred.min()) >= 0.0


def test_pet_noise_is_deterministic_by_noise_seed_and_spares_zero_uptake():
    image, label, suv = _pet_crop()
    image[1, :, :, :3] = (0.0 - PET_MEAN) / PET_STD  # air: SUV 0

    def noisy(seed):
        params = AugmentParams(pet_noise_sigma=0.3, noise_seed=seed, pet_mean=PET_MEAN, pet_std=PET_STD)
        return _suv(apply(image, label, params)[0])

    first, again, other = noisy(5), noisy(5), noisy(6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.allclose(first, _suv(image), atol=1e-3)
    assert torch.allclose(first[:, :, :3], torch.zeros_like(first[:, :, :3]), atol=1e-5)  # sqrt(SUV) = 0
    assert float(first.min()) >= 0.0


def test_reference_settings_draw_exactly_three_numbers():
    for settings in (AugmentSettings(), AugmentSettings(rotate=False, flip_z=False),
                     AugmentSettings(rotate=True, rotate_p=1.0, flip_z=True, flip_z_p=1.0)):
        assert not settings.extended
        rng, reference = np.random.default_rng(9), np.random.default_rng(9)
        for _ in range(5):
            draw_params(settings, rng)
            reference.random(3)
        assert rng.bit_generator.state == reference.bit_generator.state


def test_extended_draws_do_not_depend_on_the_outcome():
    """Any extended setting draws the same amount, whatever it picks: the crop sequence after it is fixed."""
    states = []
    for settings in (AugmentSettings(scale_p=1.0), AugmentSettings(pet_noise_p=0.01),
                     AugmentSettings(elastic_p=1.0, pet_blur_p=1.0, ct_contrast_p=0.5, pet_scale_p=1.0)):
        assert settings.extended
        rng = np.random.default_rng(3)
        for _ in range(20):
            draw_params(settings, rng)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1] == states[2]


def test_extended_params_respect_probabilities_and_ranges():
    rng = np.random.default_rng(0)
    always = AugmentSettings(rotate=False, scale_p=1.0, scale_range=(0.9, 1.1), elastic_p=1.0, elastic_voxels=2.0,
                             pet_scale_p=1.0, pet_scale_range=(0.8, 1.25), pet_blur_p=1.0,
                             pet_blur_sigma=(0.3, 1.2), pet_noise_p=1.0, pet_noise_sigma=(0.05, 0.3),
                             ct_contrast_p=1.0, ct_contrast_range=(0.85, 1.15), pet_mean=PET_MEAN, pet_std=PET_STD)
    for _ in range(100):
        p = draw_params(always, rng)
        assert all(0.9 <= s <= 1.1 for s in p.scale_zyx) and len(set(p.scale_zyx)) == 3  # per axis
        assert p.elastic is not None and p.elastic.shape == (3, 4, 4, 4)
        assert 0.8 <= p.pet_scale <= 1.25 and 0.3 <= p.pet_blur_sigma <= 1.2
        assert 0.05 <= p.pet_noise_sigma <= 0.3 and 0.85 <= p.ct_contrast <= 1.15
        assert (p.pet_mean, p.pet_std) == (PET_MEAN, PET_STD)
    rarely = AugmentSettings(rotate=False, flip_z=False, pet_scale_p=0.3)
    params = [draw_params(rarely, rng) for _ in range(2000)]
    assert abs(np.mean([p.pet_scale != 1.0 for p in params]) - 0.3) < 0.04
    assert all(p.scale_zyx == (1.0, 1.0, 1.0) and p.elastic is None and p.pet_noise_sigma == 0.0 for p in params)


def test_settings_take_the_pet_constants_from_the_data_set():
    from veloxseg_train.train_config import TrainConfig

    config = TrainConfig()
    config.pet_scale_p = 0.5
    settings = AugmentSettings.from_config(config, {"PET": {"mean": 1.5, "std": 2.5}, "CT": {}})
    assert (settings.pet_mean, settings.pet_std, settings.pet_scale_p) == (1.5, 2.5, 0.5)
    assert not AugmentSettings.from_config(TrainConfig()).extended  # the defaults are the reference
