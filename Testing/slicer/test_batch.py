"""segmentFolder: every case of a folder, results on disk, failures reported, the scene left as it was."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from mrml_study import make_ct, make_pet, scene_snapshot

from VeloxSegSlicerLib import batch
from VeloxSegSlicerLib.engine import Cancelled


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "cohort"
    for name, ct_file, pet_file in (("case_a", "CT.nii.gz", "PET_SUV.nii.gz"), ("case_b", "ct.nrrd", "pet.nrrd")):
        (root / name).mkdir(parents=True)
        sitk.WriteImage(make_ct(), str(root / name / ct_file))
        sitk.WriteImage(make_pet(), str(root / name / pet_file))
    # masks beside the images are not mistaken for the PET
    sitk.WriteImage(sitk.Cast(make_pet() > 2, sitk.sitkUInt8), str(root / "case_a" / "PET_GTV_mask.nii.gz"))
    (root / "case_c").mkdir()
    sitk.WriteImage(make_ct(), str(root / "case_c" / "CT.nii.gz"))
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a case")
    return root


def test_find_cases(cohort):
    cases = batch.findCases(cohort)
    assert [c.name for c in cases] == ["case_a", "case_b", "case_c"]
    assert cases[0].petPath.name == "PET_SUV.nii.gz" and not cases[0].problem
    assert "no PET found" in cases[2].problem
    # explicit patterns win over names
    picked = batch.findCase(cohort / "case_a", ctPattern="CT.nii.gz", petPattern="PET_GTV*")
    assert picked.petPath.name == "PET_GTV_mask.nii.gz"
    # a folder holding one case directly is that case
    assert [c.name for c in batch.findCases(cohort / "case_b")] == ["case_b"]


def test_segment_folder(app, logic, cohort, tmp_path):
    out = tmp_path / "out"
    snapshot = scene_snapshot(app.scene)
    progress = []
    summary = logic.segmentFolder(str(cohort), str(out), progressCallback=lambda f, s: progress.append(f))
    assert scene_snapshot(app.scene) == snapshot  # loaded and created nodes were removed again
    assert progress[-1] == pytest.approx(1.0) and progress == sorted(progress)

    assert [(r["case"], r["status"]) for r in summary] == [("case_a", "ok"), ("case_b", "ok"), ("case_c", "failed")]
    assert "no PET found" in summary[2]["error"]
    with open(out / "summary.csv", newline="") as f:
        assert [row["case"] for row in csv.DictReader(f)] == ["case_a", "case_b", "case_c"]

    with open(out / "case_a_lesions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["Lesion"] for r in rows] == ["1", "2", "Total"]
    assert float(rows[0]["SUVmax"]) == pytest.approx(10.0)
    assert float(summary[0]["total_mtv_ml"]) == pytest.approx(float(rows[-1]["MTV_mL"]))
    assert summary[0]["lesions"] == "2"

    seg = slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(out / "case_b.seg.nrrd"), False, "b")
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    reference = seg.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    ct = make_ct()
    spacing = [float(v) for v in reference.split(";")[:12]]
    # the reference geometry is the case's CT grid (first column of the direction x spacing, RAS)
    expected = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(ct.GetDirection()).reshape(3, 3) @ np.diag(ct.GetSpacing())
    np.testing.assert_allclose([spacing[0], spacing[4], spacing[8]], expected[:, 0], atol=1e-4)


def test_segment_folder_cancel(app, logic, cohort, tmp_path):
    snapshot = scene_snapshot(app.scene)
    with pytest.raises(Cancelled):
        logic.segmentFolder(str(cohort), str(tmp_path / "out"), cancelCallback=lambda: True)
    assert scene_snapshot(app.scene) == snapshot


def test_segment_folder_without_cases(app, logic, tmp_path):
    from VeloxSegSlicerLib.engine import InputError

    with pytest.raises(InputError, match="No case"):
        logic.segmentFolder(str(tmp_path), str(tmp_path / "out"))


def test_engine_batch_api_with_worker_processes_beside_slicer(app, tiny_model, cohort, tmp_path):
    """The console's cohort API (docs/slicer.md): the engine's run_batch with two worker processes, from the
    Python that has `slicer` loaded; the same cases as segmentFolder, the same lesion counts, the scene
    untouched."""
    from VeloxSegSlicerLib.engine.batch import run_batch

    snapshot = scene_snapshot(app.scene)
    report = run_batch(str(cohort), str(tmp_path / "out"), model=str(tiny_model), workers=2, show_progress=False)
    assert scene_snapshot(app.scene) == snapshot
    statuses = {row["study"]: row["status"] for row in report.rows}
    assert statuses == {"case_a": "done", "case_b": "done", "case_c": "failed", "notes": "failed"}
    assert [row["lesion_count"] for row in report.rows[:2]] == [2, 2]
    assert report.exit_code == 2 and "no PET found" in report.rows[2]["message"]
