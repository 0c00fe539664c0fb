"""Hard-negative mining: the pool of false positives (caps, replacement, checkpoint round trip), which volumes a
round visits, and that a round over a volume finds exactly the model's false positives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_prepared import NORMALIZATION, make_case

from veloxseg_train.mining import HardNegativePool, mine_volumes, pick_volumes
from veloxseg_train.training_data import make_volume

PATCH = (32, 32, 32)
HOT_NORMALISED = 1.5  # normalised PET; SUV 4: the tiny case's hot organ (SUV 5) and lesion (SUV 9) are above
PAD_SUV = 0.1  # below any SUV of the case below: only the padding added to reach one crop is this cold


def _mask(shape, *flat):
    mask = np.zeros(shape, bool)
    mask.flat[list(flat)] = True
    return mask


def test_pool_update_replace_and_remove():
    pool = HardNegativePool(max_volumes=4, max_voxels=100)
    assert pool.update(3, _mask((4, 4, 4), 1, 5, 9)) == 3
    assert len(pool) == 1 and pool.entries[3].tolist() == [1, 5, 9] and pool.entries[3].dtype == np.int32
    assert pool.update(3, _mask((4, 4, 4), 7)) == 1  # mined again: the new result replaces the old
    assert pool.entries[3].tolist() == [7]
    assert pool.update(3, np.zeros((4, 4, 4), bool)) == 0  # nothing found any more: the volume leaves the pool
    assert len(pool) == 0 and 3 not in pool.entries


def test_pool_caps_voxels_evenly_and_volumes_oldest_first():
    pool = HardNegativePool(max_volumes=2, max_voxels=10)
    many = np.zeros((10, 10, 10), bool)
    many[2:4] = True  # two slabs: 200 voxels
    assert pool.update(0, many) == 200  # the full count is reported
    kept = pool.entries[0]
    assert 5 <= kept.size <= 10 and np.all(many.flat[kept])
    assert kept.min() < 250 and kept.max() >= 350  # both slabs stay represented
    pool.update(1, _mask((4, 4, 4), 2))
    pool.update(0, _mask((4, 4, 4), 3))  # re-mined: now the newest
    pool.update(2, _mask((4, 4, 4), 4))  # a third volume pushes the oldest (1) out
    assert list(pool.entries) == [0, 2]


def test_pool_draws_volumes_equally_and_round_trips_through_state_dict():
    pool = HardNegativePool()
    pool.update(0, _mask((8, 8, 8), *range(0, 400)))
    pool.update(5, _mask((8, 8, 8), 17))
    rng = np.random.default_rng(0)
    draws = [pool.draw(rng) for _ in range(2000)]
    assert all(pool.entries[v][pool.entries[v] == i].size == 1 for v, i in draws)
    assert np.mean([v == 5 for v, _ in draws]) == pytest.approx(0.5, abs=0.04)  # volumes, not voxels

    state = pool.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    again = HardNegativePool()
    again.load_state_dict(state)
    assert list(again.entries) == list(pool.entries)
    for key in pool.entries:
        assert np.array_equal(again.entries[key], pool.entries[key]) and again.entries[key].dtype == np.int32
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    assert [pool.draw(a) for _ in range(20)] == [again.draw(b) for _ in range(20)]
    empty = HardNegativePool()
    empty.load_state_dict({})  # a checkpoint from before mining
    assert len(empty) == 0


def test_pick_volumes_depends_on_seed_step_and_rank_only():
    first = pick_volumes(10, 3, seed=1, global_step=200)
    assert first == pick_volumes(10, 3, seed=1, global_step=200)
    assert len(set(first)) == 3 and all(0 <= i < 10 for i in first)
    others = {tuple(pick_volumes(10, 3, seed=1, global_step=s)) for s in range(100, 110)}
    assert len(others) > 5
    assert pick_volumes(10, 3, 1, 200, rank=1) != first or pick_volumes(10, 3, 1, 300, rank=1) != pick_volumes(
        10, 3, 1, 300)
    assert sorted(pick_volumes(2, 5, seed=0, global_step=0)) == [0, 1]  # capped by the volumes there are


class HotPetModel(torch.nn.Module):
    """Calls lesion where the normalised PET is above HOT_NORMALISED, and where it is padding-cold."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, so train()/eval() have a model to switch
        self.pad_normalised = (PAD_SUV - NORMALIZATION["PET"]["mean"]) / NORMALIZATION["PET"]["std"]

    def forward(self, batch):
        assert not self.training  # mining runs the model as at inference
        pet = batch[:, 1:2]
        lesion = (pet > HOT_NORMALISED) | (pet < self.pad_normalised)
        score = torch.where(lesion, 1.0, -1.0) + self.weight
        return torch.cat([-score, score], dim=1)


def _volume(name, lesion=(30, 12, 20), seed=0):
    ct, pet, label = make_case((40, 26, 30), lesion, lesion_radius=4, seed=seed)
    pet = np.maximum(pet, 0.3)  # air with some uptake: the padding (SUV 0) is the only colder place
    return make_volume(name, ct, pet, label, NORMALIZATION, PATCH, (3.0, 2.0, 2.0))


def test_mining_finds_exactly_the_false_positives():
    store = [_volume("a"), _volume("b", lesion=None, seed=1)]
    assert store[0].shape != store[0].original_shape  # padded in y and x to reach one crop
    pool = HardNegativePool(max_voxels=10**6)  # no thinning: every false positive stays
    model = HotPetModel().train()
    found = mine_volumes(model, store, [0, 1], pool, PATCH, torch.device("cpu"))
    assert model.training  # the trainer's mode is restored
    for index, (name, voxels) in enumerate(found):
        volume = store[index]
        expected = np.zeros(volume.shape, bool)
        expected[volume.original_region] = True
        expected &= (volume.image[1] > HOT_NORMALISED) & (volume.label == 0)  # the hot organ, not the lesion
        assert name == volume.name and voxels == int(expected.sum()) > 100
        assert np.array_equal(pool.entries[index], np.flatnonzero(expected))
    assert found[0][1] == pytest.approx(found[1][1], rel=0.3)  # the same organ in both, with or without lesion
