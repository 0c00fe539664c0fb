"""The one rule that finds a study's CT and PET (engine batch and the Slicer module's folder batch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from VeloxSegSlicerLib.engine.errors import InputError
from VeloxSegSlicerLib.engine.study_inputs import find_study_inputs, study_candidates


def _study(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return root


def _relative(folder: Path, paths) -> list:
    return [p.relative_to(folder).as_posix() for p in paths]


def test_autopet_layout_prefers_plain_ct_and_suv(tmp_path):
    study = _study(tmp_path, "CT.nii.gz", "CTres.nii.gz", "PET.nii.gz", "SUV.nii.gz", "SEG.nii.gz")
    assert _relative(study, find_study_inputs(study)) == ["CT.nii.gz", "SUV.nii.gz"]


def test_ibsi_layout_ignores_the_mask(tmp_path):
    study = _study(tmp_path, "CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz", "PET_GTV_mask.nii.gz", "CTV.nii.gz")
    assert _relative(study, find_study_inputs(study)) == ["CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz"]
    (study / "CT_fullres.nii.gz").touch()
    with pytest.raises(InputError, match="several CT candidates.*CT_fullres.nii.gz.*CT_on_PET_grid"):
        find_study_inputs(study)
    # a pattern settles it
    ct, pet = find_study_inputs(study, ct_pattern="ct_full*")
    assert _relative(study, (ct, pet)) == ["CT_fullres.nii.gz", "PET_SUV.nii.gz"]


def test_dicom_series_folders_one_or_two_levels_down(tmp_path):
    study = _study(tmp_path / "s", "CT/image/1.dcm", "CT/image/2.dcm", "PT/001.dcm", "notes/readme.txt")
    assert [c.as_posix() for c in study_candidates(study)] == ["CT/image", "PT"]
    assert _relative(study, find_study_inputs(study)) == ["CT/image", "PT"]


def test_too_deep_or_hidden_files_are_not_candidates(tmp_path):
    study = _study(tmp_path / "s", "a/b/c/CT.nii.gz", ".hidden/PET.nii.gz", "pet.nrrd")
    assert [c.as_posix() for c in study_candidates(study)] == ["pet.nrrd"]
    with pytest.raises(InputError, match=r"no CT found in .*give a CT file pattern"):
        find_study_inputs(study)


def test_several_pets_without_suv_are_ambiguous(tmp_path):
    study = _study(tmp_path, "ct.nrrd", "pet_early.nrrd", "pet_late.nrrd")
    with pytest.raises(InputError, match="several PET candidates"):
        find_study_inputs(study)
    (study / "pet.nrrd").touch()  # a candidate named exactly "pet" wins
    assert _relative(study, find_study_inputs(study)) == ["ct.nrrd", "pet.nrrd"]


def test_pattern_that_matches_nothing_is_named(tmp_path):
    study = _study(tmp_path, "ct.nii.gz", "pet.nii.gz")
    with pytest.raises(InputError, match="no PET found .*matching 'suv\\*'"):
        find_study_inputs(study, pet_pattern="suv*")
    with pytest.raises(InputError, match="does not exist"):
        find_study_inputs(tmp_path / "missing")
