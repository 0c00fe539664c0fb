"""Case discovery: the AutoPET-II nnU-Net layout, case folders (IBSI and generic names), phantom folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import write_autopet, write_case

from veloxseg_train.data.case import DataError
from veloxseg_train.data.sources import (
    find_all,
    find_autopet_cases,
    find_folder_cases,
    find_synthetic_cases,
    role_of,
)

REPO = Path(__file__).resolve().parents[2]
# shared/ inside the checkout (a copy) or beside it (docs/training.md: ../shared); a skip names the latter
IBSI_CASES = next((p for p in (REPO / "shared" / "data" / "ibsi-sts" / "cases",
                             REPO.parent / "shared" / "data" / "ibsi-sts" / "cases") if p.is_dir()),
                  REPO.parent / "shared" / "data" / "ibsi-sts" / "cases")


@pytest.mark.parametrize("stem, role", [
    ("CT_on_PET_grid", "ct"), ("PET_SUV", "pet"), ("PET_GTV_mask", "label"), ("CT_fullres_GTV_mask", "label"),
    ("ct", "ct"), ("pet", "pet"), ("suv", "pet"), ("seg", "label"), ("Patient7-PET", "pet"),
    ("lesion_mask", "label"), ("notes", None), ("CTres", "ct"),
])
def test_naming_rule(stem, role):
    assert role_of(stem) == role


def test_generic_and_ibsi_folders(tmp_path):
    write_case(tmp_path / "a", names=("ct", "pet", "seg"))
    write_case(tmp_path / "b", names=("CT_on_PET_grid", "PET_SUV", "PET_GTV_mask"))
    # STS_002 also carries a full-resolution CT and its mask: the CT and the label on the PET grid win
    # (the engine's rule, shared with `veloxseg batch`).
    write_case(tmp_path / "b", names=("CT_fullres", "PET_SUV", "CT_fullres_GTV_mask"))
    cases = find_folder_cases(tmp_path)
    assert [(c.name, c.source) for c in cases] == [("a", "folder"), ("b", "ibsi")]
    assert cases[0].label.name == "seg.nii.gz"
    assert (cases[1].ct.name, cases[1].label.name) == ("CT_on_PET_grid.nii.gz", "PET_GTV_mask.nii.gz")


def test_missing_modality_names_the_case(tmp_path):
    folder = write_case(tmp_path / "patient_9")
    (folder / "pet.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case patient_9: missing PET"):
        find_folder_cases(tmp_path)


def test_ambiguous_files_name_the_case(tmp_path):
    write_case(tmp_path / "c1", names=("ct_a", "pet", "label"))
    write_case(tmp_path / "c1", names=("ct_b", "pet", "label"))
    with pytest.raises(DataError, match=r"case c1: several CT candidates .*: ct_a.nii.gz, ct_b.nii.gz"):
        find_folder_cases(tmp_path)


def test_empty_root(tmp_path):
    with pytest.raises(DataError, match="no case sub-folders"):
        find_folder_cases(tmp_path)


def test_autopet_layout(tmp_path):
    root = write_autopet(tmp_path)
    cases = find_autopet_cases(root)
    assert [c.name for c in cases] == ["PETCT_a", "PETCT_b"]
    assert cases[0].ct.name == "PETCT_a_0000.nii.gz" and cases[0].pet.name == "PETCT_a_0001.nii.gz"
    assert cases[0].label == root / "labelsTr" / "PETCT_a.nii.gz" and cases[0].source == "autopet"


def test_autopet_missing_pet_and_label(tmp_path):
    root = write_autopet(tmp_path)
    (root / "imagesTr" / "PETCT_b_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case PETCT_b: missing PET \(PETCT_b_0001.nii.gz\)"):
        find_autopet_cases(root)
    root2 = write_autopet(tmp_path / "second")
    (root2 / "labelsTr" / "PETCT_a.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case PETCT_a: missing label"):
        find_autopet_cases(root2)
    with pytest.raises(DataError, match="no imagesTr"):
        find_autopet_cases(tmp_path / "nowhere")


def test_synthetic_manifest(tmp_path):
    write_case(tmp_path / "case_0000")
    manifest = {"format": "veloxseg-synthetic/1", "cases": [{"name": "case_0000", "folder": "case_0000"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert [(c.name, c.source) for c in find_synthetic_cases(tmp_path)] == [("case_0000", "synthetic")]
    manifest["cases"].append({"name": "case_0001", "folder": "case_0001"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="case case_0001: listed in the manifest"):
        find_synthetic_cases(tmp_path)


def test_find_all_keeps_argument_order(tmp_path):
    write_case(tmp_path / "folder" / "x")
    root = write_autopet(tmp_path / "autopet", names=("A",))
    cases = find_all(autopet=[root], cases=[tmp_path / "folder"])
    assert [(c.name, c.source) for c in cases] == [("A", "autopet"), ("x", "folder")]


@pytest.mark.skipif(not IBSI_CASES.is_dir(), reason=f"IBSI cases not found at {IBSI_CASES} (beside the checkout)")
def test_real_ibsi_folder():
    cases = find_folder_cases(IBSI_CASES)
    assert len(cases) == 29 and {c.source for c in cases} == {"ibsi"}
    sts_002 = next(c for c in cases if c.name == "STS_002")
    assert (sts_002.ct.name, sts_002.pet.name, sts_002.label.name) == (
        "CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz", "PET_GTV_mask.nii.gz")
