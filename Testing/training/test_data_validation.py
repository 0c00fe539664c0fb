"""Bad input: every problem is a DataError that names the case and says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from data_fixtures import image, tiny_arrays, write_case

from veloxseg_train.data.case import DataError
from veloxseg_train.data.sources import case_from_folder
from veloxseg_train.data.validate import load_case


def _load(folder):
    return load_case(case_from_folder(folder))


def test_good_case_and_lesion_free_case(tmp_path):
    case = _load(write_case(tmp_path / "good"))
    assert case.name == "good" and case.ct.GetSize() == case.pet.GetSize()
    free = _load(write_case(tmp_path / "free", lesion=False))  # an all-zero label is a legal negative case
    assert not sitk.GetArrayViewFromImage(free.label).any()


@pytest.mark.parametrize("what, mutate, message", [
    ("pet", lambda a: a.__setitem__((2, 3, 4), np.nan), r"case bad: PET file '.*pet.nii.gz' has 1 voxel that are NaN"),
    ("ct", lambda a: a.__setitem__((0, 0, 0), np.inf), r"case bad: CT file '.*ct.nii.gz' has 1 voxel that are NaN"),
    ("label", lambda a: a.__setitem__((5, 6, 7), 2), r"case bad: label is not binary: values \{0, 1, 2\}"),
    ("pet", lambda a: a.__imul__(5000.0), r"case bad: PET '.*pet.nii.gz' does not look like SUV"),
    ("ct", lambda a: a.__setitem__(slice(None), 1.5), r"case bad: CT '.*ct.nii.gz' does not look like a CT"),
])
def test_bad_voxels(tmp_path, what, mutate, message):
    ct, pet, label = tiny_arrays()
    arrays = {"ct": ct.astype(np.float32), "pet": pet, "label": label}
    mutate(arrays[what])
    folder = write_case(tmp_path / "bad", arrays=(arrays["ct"], arrays["pet"], arrays["label"]))
    with pytest.raises(DataError, match=message):
        _load(folder)


def test_label_with_nan(tmp_path):
    ct, pet, label = tiny_arrays()
    label = label.astype(np.float32)
    label[0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"case nanlabel: label file '.*' has 1 voxel that are NaN or infinite"):
        _load(write_case(tmp_path / "nanlabel", arrays=(ct, pet, label)))


def test_empty_and_unreadable_files(tmp_path):
    folder = write_case(tmp_path / "empty")
    (folder / "label.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"case empty: label file .* is empty \(0 bytes\)"):
        _load(folder)
    folder = write_case(tmp_path / "broken")
    (folder / "pet.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream")
    with pytest.raises(DataError, match=r"case broken: PET file '.*pet.nii.gz' is corrupt"):
        _load(folder)


def test_ct_and_pet_must_overlap(tmp_path):
    with pytest.raises(DataError, match=r"case apart: CT and PET do not overlap in physical space"):
        _load(write_case(tmp_path / "apart", ct_origin=(0.0, 0.0, 1000.0)))
    # The engine's rule (checks.MIN_PET_IN_CT_FRACTION, 20 %), on voxel-centre boxes (PET z: 0-36 mm).
    with pytest.raises(DataError, match=r"case shifted: CT and PET do not overlap enough in physical space: only "
                                        r"16\.7 % of the PET's field of view lies inside the CT's"):
        _load(write_case(tmp_path / "shifted", ct_origin=(0.0, 0.0, 30.0)))
    # a CT covering a third of the PET runs in the engine, so training takes it too (it refused < 50 %)
    assert _load(write_case(tmp_path / "partial", ct_origin=(0.0, 0.0, 24.0))).name == "partial"


def test_label_on_a_third_grid(tmp_path):
    folder = write_case(tmp_path / "grid")
    sitk.WriteImage(image(np.zeros((5, 6, 7), np.uint8), spacing=(8.0, 8.0, 8.0)), str(folder / "label.nii.gz"))
    with pytest.raises(DataError, match=r"case grid: label grid .* is neither the PET nor the CT grid"):
        _load(folder)


def test_four_dimensional_pet(tmp_path):
    folder = write_case(tmp_path / "dynamic")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 10, 12, 14), np.float32)), str(folder / "pet.nii.gz"))
    with pytest.raises(DataError, match=r"case dynamic: PET file '.*' has 14 values per voxel"):
        _load(folder)


@pytest.mark.parametrize("extension", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_nan_found_in_every_format(tmp_path, extension):
    """ITK 5 reads NIfTI NaN as 0, so NIfTI files are scanned from their bytes; the rest keep NaN."""
    ct, pet, label = tiny_arrays()
    pet[3, 4, 5] = np.nan
    pet[3, 4, 6] = -np.inf
    folder = tmp_path / "nan_case"
    folder.mkdir()
    for array, stem in ((ct, "ct"), (pet, "pet"), (label, "label")):
        sitk.WriteImage(image(array), str(folder / f"{stem}{extension}"))
    with pytest.raises(DataError, match=r"case nan_case: PET (file )?'.*' has 2 voxels that are NaN or infinite"):
        _load(folder)
