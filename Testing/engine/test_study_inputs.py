"""The one rule that finds a study's CT and PET (engine batch and the Slicer module's folder batch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from VeloxSegSlicerLib.engine.errors import InputError
from VeloxSegSlicerLib.engine.inputs.study_inputs import find_study_inputs, matches_by_name, role_of, study_candidates

REPO = Path(__file__).resolve().parents[2]
# shared/ inside the checkout (a copy) or beside it (docs/training.md: ../shared); a skip names the latter
IBSI_CASES = next((p for p in (REPO / "shared" / "data" / "ibsi-sts" / "cases",
                             REPO.parent / "shared" / "data" / "ibsi-sts" / "cases") if p.is_dir()),
                  REPO.parent / "shared" / "data" / "ibsi-sts" / "cases")


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


def test_ibsi_layout_ignores_the_masks_and_prefers_the_ct_on_the_pet_grid(tmp_path):
    study = _study(tmp_path, "CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz", "PET_GTV_mask.nii.gz", "CTV.nii.gz")
    assert _relative(study, find_study_inputs(study)) == ["CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz"]
    # three IBSI cases also hold a full-resolution CT and its mask: the CT on the PET grid still wins,
    # as in training's folder reader (issue 13: batch used to call this ambiguous)
    (study / "CT_fullres.nii.gz").touch()
    (study / "CT_fullres_GTV_mask.nii.gz").touch()
    assert _relative(study, find_study_inputs(study)) == ["CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz"]
    candidates = study_candidates(study)
    assert [p.as_posix() for p in matches_by_name(candidates, "label")] == ["PET_GTV_mask.nii.gz"]
    # a pattern settles it the other way
    ct, pet = find_study_inputs(study, ct_pattern="ct_fullres.*")
    assert _relative(study, (ct, pet)) == ["CT_fullres.nii.gz", "PET_SUV.nii.gz"]


def test_two_ct_names_without_a_tie_breaker_are_ambiguous(tmp_path):
    study = _study(tmp_path, "ct_a.nii.gz", "ct_b.nii.gz", "pet.nii.gz")
    with pytest.raises(InputError, match="several CT candidates.*ct_a.nii.gz, ct_b.nii.gz"):
        find_study_inputs(study)


@pytest.mark.parametrize("name, role", [
    ("CT_on_PET_grid.nii.gz", "CT"), ("CTres.nii.gz", "CT"), ("PET_SUV.nii.gz", "PET"), ("PT", "PET"),
    ("PET_GTV_mask.nii.gz", "label"), ("SEG.nii.gz", "label"), ("lesion_mask.nrrd", "label"),
    ("CTV.nii.gz", None), ("RTSTRUCT", None), ("notes.nii.gz", None), ("Patient7-PET.nii.gz", "PET"),
])
def test_role_of_names(name, role):
    assert role_of(name) == role


@pytest.mark.skipif(not IBSI_CASES.is_dir(), reason=f"IBSI cases not found at {IBSI_CASES} (beside the checkout)")
def test_every_real_ibsi_case_is_found_without_patterns():
    cases = sorted(p for p in IBSI_CASES.iterdir() if p.is_dir())
    assert len(cases) == 29
    for case in cases:
        ct, pet = find_study_inputs(case)
        assert (ct.name, pet.name) == ("CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz"), case.name


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
