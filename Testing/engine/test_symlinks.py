"""Symbolic links wherever a path is taken (issue 20): DataLad/git-annex data sets and `ln -s` cohorts are
link farms. A cohort whose studies hold linked CT/PET files (one target outside the cohort folder), a
study folder that is itself a link, and a study whose CT sits in a linked sub-folder must give the same
results as the same cohort of real files, from `veloxseg batch` and `run_batch`; the summary and the record
name the paths the user gave (the links), not their targets; a rerun skips them. `veloxseg segment` takes
linked inputs, and training's folder reader reads a linked case folder."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from VeloxSegSlicerLib.engine.cohort import batch_study, cli
from VeloxSegSlicerLib.engine.cohort.batch import run_batch

SMALL_STUDY = Path(__file__).resolve().parents[1] / "Data" / "small_study"
STUDIES = ("a_linked_files", "b_linked_folder", "c_linked_subfolder")

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")


def _summary(output: Path) -> dict:
    with open(output / "summary.csv", newline="", encoding="utf-8") as stream:
        return {row["study"]: row for row in csv.DictReader(stream)}


def _label(output: Path, study: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output / study / "lesions.nii.gz")))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """(linked cohort, the same cohort as real files). The link targets live in a store beside the cohort
    (outside it, as git-annex's objects or another disk), one of them under another name."""
    root = tmp_path_factory.mktemp("links")
    store, elsewhere = root / "store", root / "elsewhere"
    store.mkdir()
    shutil.copy(SMALL_STUDY / "ct.nii.gz", store / "SHA256E-s1--ct_object.nii.gz")
    shutil.copy(SMALL_STUDY / "pet.nii.gz", store / "SHA256E-s2--pet_object.nii.gz")
    (elsewhere / "study").mkdir(parents=True)
    for name in ("ct.nii.gz", "pet.nii.gz"):
        shutil.copy(SMALL_STUDY / name, elsewhere / "study" / name)
    (elsewhere / "ct_series").mkdir()
    shutil.copy(SMALL_STUDY / "ct.nii.gz", elsewhere / "ct_series" / "image.nii.gz")

    linked = root / "cohort"
    files = linked / "a_linked_files"  # both files links, targets outside the cohort, named by their hash
    files.mkdir(parents=True)
    os.symlink(store / "SHA256E-s1--ct_object.nii.gz", files / "ct.nii.gz")
    os.symlink(os.path.relpath(store / "SHA256E-s2--pet_object.nii.gz", files), files / "pet.nii.gz")  # relative
    os.symlink(elsewhere / "study", linked / "b_linked_folder")  # the study folder itself a link
    sub = linked / "c_linked_subfolder"  # the CT in a linked sub-folder (its file named by the folder: CT/)
    sub.mkdir()
    os.symlink(elsewhere / "ct_series", sub / "CT")
    os.symlink(store / "SHA256E-s2--pet_object.nii.gz", sub / "pet.nii.gz")

    real = root / "real"
    for study in STUDIES:
        (real / study).mkdir(parents=True)
        shutil.copy(SMALL_STUDY / "pet.nii.gz", real / study / "pet.nii.gz")
    for study in ("a_linked_files", "b_linked_folder"):
        shutil.copy(SMALL_STUDY / "ct.nii.gz", real / study / "ct.nii.gz")
    (real / "c_linked_subfolder" / "CT").mkdir()
    shutil.copy(SMALL_STUDY / "ct.nii.gz", real / "c_linked_subfolder" / "CT" / "image.nii.gz")
    return linked, real


@pytest.fixture(scope="module")
def reference(cohorts, manifest_path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("reference") / "out"
    report = run_batch(cohorts[1], output, manifest_path, show_progress=False)
    assert [row["status"] for row in report.rows] == ["done"] * 3, report.rows
    return output


def _assert_like_the_real_cohort(output: Path, reference: Path) -> None:
    for study in STUDIES:
        np.testing.assert_array_equal(_label(output, study), _label(reference, study), err_msg=study)
        assert (output / study / "lesions.csv").read_text() == (reference / study / "lesions.csv").read_text()


def test_run_batch_on_a_linked_cohort(cohorts, reference, manifest_path, tmp_path):
    linked, _ = cohorts
    output = tmp_path / "out"
    report = run_batch(linked, output, manifest_path, show_progress=False)
    assert [row["status"] for row in report.rows] == ["done"] * 3, report.rows
    assert report.exit_code == 0
    _assert_like_the_real_cohort(output, reference)
    rows = _summary(output)
    # the paths inside the study the user gave: the links' names, not their targets
    assert (rows["a_linked_files"]["ct"], rows["a_linked_files"]["pet"]) == ("ct.nii.gz", "pet.nii.gz")
    assert rows["c_linked_subfolder"]["ct"] == "CT/image.nii.gz"
    record = batch_study.read_record(output / "a_linked_files")
    assert record["inputs"]["CT"]["path"] == "ct.nii.gz"
    # the target's content is hashed and sized
    real_ct = SMALL_STUDY / "ct.nii.gz"
    assert record["inputs"]["CT"]["bytes"] == real_ct.stat().st_size
    assert record["inputs"]["CT"]["sha256"] == batch_study.fingerprint(real_ct, SMALL_STUDY)["sha256"]

    again = run_batch(linked, output, manifest_path, show_progress=False)  # resume works through links
    assert [row["status"] for row in again.rows] == ["skipped"] * 3


def test_veloxseg_batch_on_a_linked_cohort(cohorts, reference, manifest_path, tmp_path, capsys):
    linked, _ = cohorts
    output = tmp_path / "out"
    code = cli.main(["batch", "--input", str(linked), "--output", str(output), "--workers", "1",
                     "--model", str(manifest_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "FAILED" not in err and "3 done, 0 failed, 0 skipped" in err
    _assert_like_the_real_cohort(output, reference)


def test_veloxseg_segment_with_linked_inputs(cohorts, reference, manifest_path, tmp_path, capsys):
    linked, _ = cohorts
    out, stats = tmp_path / "lesions.nii.gz", tmp_path / "lesions.csv"
    study = linked / "a_linked_files"
    code = cli.main(["segment", "--ct", str(study / "ct.nii.gz"), "--pet", str(study / "pet.nii.gz"), "--out",
                     str(out), "--stats", str(stats), "--model", str(manifest_path)])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  _label(reference, "a_linked_files"))
    assert stats.read_text() == (reference / "a_linked_files" / "lesions.csv").read_text()


def test_a_dangling_link_says_its_target_is_missing(tmp_path, manifest_path, capsys):
    """A DataLad data set installed without `datalad get` holds links whose targets are not there yet."""
    os.symlink(tmp_path / "annex" / "missing-object", tmp_path / "ct.nii.gz")
    code = cli.main(["segment", "--ct", str(tmp_path / "ct.nii.gz"), "--pet", str(SMALL_STUDY / "pet.nii.gz"),
                     "--out", str(tmp_path / "o.nii.gz"), "--model", str(manifest_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "symbolic link" in err and "missing-object" in err and "datalad get" in err


def test_training_reads_a_linked_case_folder(cohorts, tmp_path):
    pytest.importorskip("torch")  # the training package's data modules import it through the package
    from veloxseg_train.data.sources import find_folder_cases
    from veloxseg_train.data.validate import load_case

    linked, _ = cohorts
    cases_root = tmp_path / "cases"
    cases_root.mkdir()
    case = tmp_path / "elsewhere_case"  # the case folder a link to a folder outside the root
    case.mkdir()
    os.symlink(linked / "a_linked_files" / "ct.nii.gz", case / "CT.nii.gz")  # a link to a link
    os.symlink(linked / "a_linked_files" / "pet.nii.gz", case / "PET.nii.gz")
    mask = sitk.Cast(sitk.ReadImage(str(SMALL_STUDY / "pet.nii.gz")) > 5, sitk.sitkUInt8)
    (tmp_path / "store").mkdir()
    sitk.WriteImage(mask, str(tmp_path / "store" / "PET_mask.nii.gz"))
    os.symlink(tmp_path / "store", case / "labels")  # the label in a linked sub-folder
    os.symlink(case, cases_root / "case_1")

    (found,) = find_folder_cases(cases_root)
    assert found.name == "case_1"
    assert (found.ct, found.pet, found.label) == (cases_root / "case_1" / "CT.nii.gz",
                                                  cases_root / "case_1" / "PET.nii.gz",
                                                  cases_root / "case_1" / "labels" / "PET_mask.nii.gz")
    loaded = load_case(found)
    assert int(np.count_nonzero(sitk.GetArrayViewFromImage(loaded.label))) == \
        int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) > 0
