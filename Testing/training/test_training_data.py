"""Bad prepared cases stop training with a message naming the case and the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_prepared import make_case, write_prepared

from veloxseg_train.training_data import DataError, VolumeStore, read_dataset


def _store(root):
    dataset = read_dataset(root)
    return VolumeStore(dataset, dataset.split("train"), (96, 96, 96))


def _write_one(tmp_path, **change):
    ct, pet, label = make_case((20, 30, 30), (10, 15, 15), lesion_radius=3)
    arrays = {"ct": ct, "pet": pet, "label": label}
    arrays.update(change)
    return write_prepared(tmp_path, [("case_7", "train", arrays["ct"], arrays["pet"], arrays["label"])])


def test_nan_voxels(tmp_path):
    ct, _, _ = make_case((20, 30, 30))
    ct[3, 4, 5] = np.nan
    with pytest.raises(DataError, match="case_7: CT has 1 NaN"):
        _store(_write_one(tmp_path, ct=ct))


def test_missing_modality(tmp_path):
    root = _write_one(tmp_path)
    with np.load(root / "cases" / "case_7.npz") as archive:
        kept = {k: archive[k] for k in archive.files if k != "pet"}
    np.savez(root / "cases" / "case_7.npz", **kept)
    with pytest.raises(DataError, match="case_7: missing PET"):
        _store(root)


def test_non_binary_label(tmp_path):
    _, _, label = make_case((20, 30, 30), (10, 15, 15), lesion_radius=3)
    with pytest.raises(DataError, match="case_7: label is not binary"):
        _store(_write_one(tmp_path, label=label * 3))


def test_empty_label_of_a_lesion_case(tmp_path):
    root = _write_one(tmp_path)
    document = json.loads((root / "dataset.json").read_text())
    _, _, label = make_case((20, 30, 30))
    np.savez(root / "cases" / "case_7.npz", **{**dict(np.load(root / "cases" / "case_7.npz")), "label": label})
    document["cases"][0]["shape_zyx"] = [20, 30, 30]
    (root / "dataset.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="case_7: label is empty but the case is not marked lesion_free"):
        _store(root)


def test_pet_without_overlap(tmp_path):
    ct, pet, _ = make_case((20, 30, 30))
    pet[ct > -500] = 0.0  # PET signal only outside the CT body
    with pytest.raises(DataError, match="case_7: PET is zero everywhere inside the CT body"):
        _store(_write_one(tmp_path, pet=pet))


def test_constant_modality_and_wrong_shape(tmp_path):
    ct, _, _ = make_case((20, 30, 30))
    with pytest.raises(DataError, match="case_7: PET is constant"):
        _store(_write_one(tmp_path / "a", pet=np.zeros_like(ct)))
    with pytest.raises(DataError, match="case_7: .*differ in shape"):
        _store(_write_one(tmp_path / "b", ct=ct[:-1]))


def test_no_dataset(tmp_path):
    with pytest.raises(DataError, match="dataset.json is missing"):
        read_dataset(tmp_path)
