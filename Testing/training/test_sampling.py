"""Crop centring (lesion:background ratio), padding of small volumes, and the per-epoch volume plan."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_prepared import NORMALIZATION, make_case

from veloxseg_train.sampling import CropSampler, epoch_plan
from veloxseg_train.training_data import make_volume
from veloxseg_train.validation import plan_items

PATCH = (32, 32, 32)


def _volume(shape=(60, 70, 80), lesion=(30, 35, 40), name="v"):
    ct, pet, label = make_case(shape, lesion, lesion_radius=4, seed=0)
    return make_volume(name, ct, pet, label, NORMALIZATION, PATCH, (3.0, 2.0, 2.0))


@pytest.mark.parametrize("lesion_ratio, background_ratio, expected", [(1, 1, 0.5), (3, 1, 0.75), (0, 1, 0.0)])
def test_lesion_fraction_follows_the_ratio(lesion_ratio, background_ratio, expected):
    volume = _volume()
    sampler = CropSampler(PATCH, lesion_ratio, background_ratio)
    rng = np.random.default_rng(0)
    draws = [sampler.draw_centre(volume, rng) for _ in range(4000)]
    fraction = np.mean([lesion for _, lesion in draws])
    assert fraction == pytest.approx(expected, abs=0.03)
    for centre, lesion in draws[:200]:
        assert volume.label[centre] == (1 if lesion else 0)
        if not lesion:  # background centres come from the body's bounding box
            assert all(lo <= c < hi for c, lo, hi in zip(centre, volume.body_lo, volume.body_hi))


def test_hard_negative_crops_are_centred_on_hot_background():
    volume = _volume()
    hot = 3.0  # normalised PET: the tiny case's hot organ (SUV 5 -> 2.0 after z-scoring) is below, lesion above
    threshold = (2.5 - NORMALIZATION["PET"]["mean"]) / NORMALIZATION["PET"]["std"]
    assert threshold < (5.0 - 1.0) / 2.0 < hot
    sampler = CropSampler(PATCH, 0, 1, hard_negative_fraction=0.5, hot_threshold=threshold)
    rng = np.random.default_rng(3)
    centres = [sampler.draw_centre(volume, rng)[0] for _ in range(2000)]
    is_hot = np.array([volume.image[1][c] >= threshold for c in centres])
    assert not any(volume.label[c] for c in centres)  # never a lesion voxel, though the lesion is hotter
    organ_share = np.mean((volume.image[1] >= threshold) & (volume.label == 0))
    # half the draws are hard negatives, the other half hit the organ only by chance (uniform in the body box)
    assert is_hot.mean() == pytest.approx(0.5 + 0.5 * organ_share, abs=0.05)
    assert organ_share < 0.05


def test_hard_negatives_fall_back_to_uniform_without_hot_background():
    volume = _volume()
    sampler = CropSampler(PATCH, 0, 1, hard_negative_fraction=1.0, hot_threshold=100.0)  # nothing that hot
    rng = np.random.default_rng(4)
    centres = [sampler.draw_centre(volume, rng)[0] for _ in range(50)]
    assert len(set(centres)) > 40 and not any(volume.label[c] for c in centres)
    with pytest.raises(ValueError, match="threshold"):
        CropSampler(PATCH, 1, 1, hard_negative_fraction=0.5)


def test_centre_jitter_spreads_lesions_over_the_crop():
    volume = _volume()  # one lesion of radius 4 around (30, 35, 40), far from the volume's border
    lesion_centre = np.array((30, 35, 40))

    def lesion_positions(sampler):  # where the lesion's centre lies in each lesion crop
        rng = np.random.default_rng(5)
        draws = [sampler.draw_centre(volume, rng) for _ in range(600)]
        return np.array([lesion_centre - sampler.crop_start(volume.shape, c) for c, lesion in draws if lesion])

    central = lesion_positions(CropSampler(PATCH))
    spread = lesion_positions(CropSampler(PATCH, centre_jitter=0.9))
    assert np.abs(central - 16).max() <= 4  # without jitter: always within a lesion radius of the middle
    assert np.abs(spread - 16).max() >= 12 and np.abs(spread - 16).max() <= 14 + 4
    assert (spread < 16).any(axis=0).all() and (spread > 16).any(axis=0).all()  # both sides, every axis
    sampler = CropSampler(PATCH, centre_jitter=0.9)
    rng = np.random.default_rng(6)
    assert all(label.any() for _, label, lesion in sampler.sample(volume, 200, rng) if lesion)
    with pytest.raises(ValueError, match="centre_jitter"):
        CropSampler(PATCH, centre_jitter=1.5)


def test_validation_crops_are_jittered_like_training_and_fixed_by_the_seed():
    volumes = [_volume(name="a"), _volume(lesion=(25, 30, 45), name="b")]
    central = plan_items(volumes, "crops", 4, PATCH, seed=1)
    jittered = plan_items(volumes, "crops", 4, PATCH, seed=1, centre_jitter=0.9)
    assert jittered == plan_items(volumes, "crops", 4, PATCH, seed=1, centre_jitter=0.9)
    lesion_items = [(i, c) for i, c in central if volumes[i].label[c]]
    assert len(lesion_items) == 4  # crops 0 and 2 of each volume are centred on a lesion voxel
    sampler = CropSampler(PATCH)
    for k in (0, 2, 4, 6):  # the lesion items: still a lesion in the crop, but not always at its centre
        index, centre = jittered[k]
        assert sampler.crop(volumes[index], centre)[1].any()
    assert any(not volumes[i].label[jittered[k][1]] for k, i in ((0, 0), (2, 0), (4, 1), (6, 1)))


def test_lesion_free_volume_gives_background_crops():
    volume = _volume(lesion=None)
    sampler = CropSampler(PATCH, 1, 0)  # asks for lesion crops only
    rng = np.random.default_rng(1)
    assert not any(sampler.draw_centre(volume, rng)[1] for _ in range(100))


def test_crops_are_patch_sized_and_contain_their_centre():
    volume = _volume()
    sampler = CropSampler(PATCH)
    rng = np.random.default_rng(2)
    for image, label, lesion in sampler.sample(volume, 50, rng):
        assert image.shape == (2, *PATCH) and label.shape == PATCH
        if lesion:
            assert label.any()
    # A centre at the border is shifted inwards.
    assert sampler.crop_start(volume.shape, (0, 0, 79)) == (0, 0, 80 - 32)


def test_small_volume_is_padded_with_air_and_zero_suv():
    ct, pet, label = make_case((20, 40, 50), (10, 20, 25), lesion_radius=3)
    volume = make_volume("small", ct, pet, label, NORMALIZATION, PATCH, (3.0, 2.0, 2.0))
    assert volume.shape == (32, 40, 50)
    assert volume.pad_before == (6, 0, 0) and volume.original_shape == (20, 40, 50)
    np.testing.assert_array_equal(volume.label[volume.original_region], label)
    air = (-1000.0 - NORMALIZATION["CT"]["mean"]) / NORMALIZATION["CT"]["std"]
    zero_suv = (0.0 - NORMALIZATION["PET"]["mean"]) / NORMALIZATION["PET"]["std"]
    assert np.allclose(volume.image[0, 0], air) and np.allclose(volume.image[1, -1], zero_suv)
    image, crop_label, _ = CropSampler(PATCH).sample(volume, 1, np.random.default_rng(0))[0]
    assert image.shape == (2, *PATCH)


def test_epoch_plan_covers_every_volume_and_splits_ranks():
    plan = epoch_plan(10, epoch=3, seed=5, volumes_per_step=2)
    assert len(plan) == 5 and sorted(i for step in plan for i in step) == list(range(10))
    assert plan == epoch_plan(10, epoch=3, seed=5, volumes_per_step=2)  # a resumed run recomputes it
    assert plan != epoch_plan(10, epoch=4, seed=5, volumes_per_step=2)
    ranks = [epoch_plan(10, 3, 5, 2, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # ceil(10 / 4), the last step padded
    for step in range(3):
        assert not set(ranks[0][step]) & set(ranks[1][step])
    assert len(epoch_plan(3, 0, 5, 2, steps_per_epoch=7)) == 7
