"""segmentFolder: the engine's cohort runner (run_batch, as `veloxseg batch`) plus what Slicer adds: one
summary.csv schema with the CLI, resume records, a coded .seg.nrrd per study, scene nodes only when asked."""

import csv
import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from mrml_study import make_ct, make_pet, scene_snapshot
from vtk.util import numpy_support

from VeloxSegSlicerLib import batch
from VeloxSegSlicerLib.engine import Cancelled, InputError
from VeloxSegSlicerLib.engine.cohort import cli
from VeloxSegSlicerLib.engine.cohort.batch import SUMMARY_COLUMNS

GOOD = ("case_a", "case_b")
# the engine's own columns: what neither the CLI nor the Logic can choose (time, worker, free text)
VARYING = ("seconds", "worker", "message")


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


def _summary(output):
    with open(output / "summary.csv", newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        return tuple(reader.fieldnames), {row["study"]: row for row in reader}


def _load_segmentation(path, name="seg"):
    return slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(path), False, name)


def test_segment_folder(app, logic, cohort, tmp_path):
    out = tmp_path / "out"
    snapshot = scene_snapshot(app.scene)
    progress = []
    report = logic.segmentFolder(str(cohort), str(out), progressCallback=lambda f, s: progress.append(f))
    assert scene_snapshot(app.scene) == snapshot  # nothing loaded or created stays in the scene
    assert progress[-1] == pytest.approx(1.0) and progress == sorted(progress) and len(progress) > 4

    statuses = {row["study"]: row["status"] for row in report.rows}
    assert statuses == {"case_a": "done", "case_b": "done", "case_c": "failed", "notes": "failed"}
    assert report.exit_code == 2 and "no PET found" in report.rows[2]["message"]
    columns, rows = _summary(out)
    assert columns == SUMMARY_COLUMNS and list(rows) == ["case_a", "case_b", "case_c", "notes"]
    assert (rows["case_a"]["ct"], rows["case_a"]["pet"]) == ("CT.nii.gz", "PET_SUV.nii.gz")

    with open(out / "case_a" / "lesions.csv", newline="") as f:
        lesions = list(csv.DictReader(f))
    assert [r["lesion_id"] for r in lesions] == ["1", "2"]
    assert float(lesions[0]["suv_max"]) == pytest.approx(10.0)
    assert float(rows["case_a"]["total_mtv_ml"]) == pytest.approx(sum(float(r["mtv_ml"]) for r in lesions), abs=1e-3)
    assert rows["case_a"]["lesion_count"] == "2"

    assert not (out / "case_c").exists() and not (out / "notes").exists()
    seg = _load_segmentation(out / "case_b" / batch.SEGMENTATION_NAME, "b")
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    assert segmentation.GetNthSegment(0).GetName() == "Lesion 1"
    reference = segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    ct = make_ct()
    spacing = [float(v) for v in reference.split(";")[:12]]
    # the reference geometry is the study's CT grid (first column of the direction x spacing, RAS)
    expected = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(ct.GetDirection()).reshape(3, 3) @ np.diag(ct.GetSpacing())
    np.testing.assert_allclose([spacing[0], spacing[4], spacing[8]], expected[:, 0], atol=1e-4)
    # its voxels are the engine's label on the CT grid
    labelmap = slicer.vtkOrientedImageData()
    seg.GetBinaryLabelmapRepresentation(seg.GetSegmentation().GetNthSegmentID(0), labelmap)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_b" / "lesions.nii.gz")))
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    assert int(np.count_nonzero(voxels)) == int((label == 1).sum()) > 0


def test_logic_and_cli_write_one_schema_and_the_logic_resumes(app, logic, tiny_model, cohort, tmp_path, capsys):
    cli_out, logic_out = tmp_path / "cli", tmp_path / "logic"
    code = cli.main(["batch", "--input", str(cohort), "--output", str(cli_out), "--workers", "1",
                     "--model", str(tiny_model)])
    capsys.readouterr()
    assert code == 2  # the two studies without a CT/PET pair
    logic.segmentFolder(str(cohort), str(logic_out), workers=2)  # worker processes beside the MRML scene
    cli_columns, cli_rows = _summary(cli_out)
    logic_columns, logic_rows = _summary(logic_out)
    assert logic_columns == cli_columns == SUMMARY_COLUMNS
    for study, cli_row in cli_rows.items():
        assert {k: v for k, v in logic_rows[study].items() if k not in VARYING} == \
               {k: v for k, v in cli_row.items() if k not in VARYING}, study
    for study in GOOD:
        for name in ("lesions.nii.gz", "lesions.csv", "veloxseg_run.json"):
            assert (logic_out / study / name).is_file() and (cli_out / study / name).is_file()
        assert (logic_out / study / "lesions.csv").read_text() == (cli_out / study / "lesions.csv").read_text()
        assert not (cli_out / study / batch.SEGMENTATION_NAME).exists()  # Slicer's addition only

    # a rerun skips what is finished; the CLI's outputs count as finished for the Logic, and vice versa
    seg_files = {study: logic_out / study / batch.SEGMENTATION_NAME for study in GOOD}
    written = {study: path.stat().st_mtime_ns for study, path in seg_files.items()}
    os.remove(seg_files["case_b"])
    report = logic.segmentFolder(str(cohort), str(logic_out))
    assert [row["status"] for row in report.rows[:2]] == ["skipped", "skipped"]
    assert seg_files["case_a"].stat().st_mtime_ns == written["case_a"]  # current: left alone
    assert _load_segmentation(seg_files["case_b"]).GetSegmentation().GetNumberOfSegments() == 2  # missing: made
    report = logic.segmentFolder(str(cohort), str(cli_out))
    assert [row["status"] for row in report.rows[:2]] == ["skipped", "skipped"]
    assert (cli_out / "case_a" / batch.SEGMENTATION_NAME).is_file()
    assert _summary(cli_out)[1]["case_a"]["status"] == "skipped"

    # the other segment layout is not "current": rewritten, still without running the model again
    report = logic.segmentFolder(str(cohort), str(logic_out), oneSegmentPerLesion=False)
    assert report.rows[0]["status"] == "skipped"
    segmentation = _load_segmentation(seg_files["case_a"]).GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "Lesions"
    # other options: the engine runs the study again, and its .seg.nrrd follows
    report = logic.segmentFolder(str(cohort), str(logic_out), minSuvMax=8.0)
    assert [row["status"] for row in report.rows[:2]] == ["done", "done"]
    assert [row["lesion_count"] for row in report.rows[:2]] == [1, 1]
    assert _load_segmentation(seg_files["case_a"]).GetSegmentation().GetNumberOfSegments() == 1


def test_scene_nodes_only_when_asked(app, logic, cohort, tmp_path):
    before = scene_snapshot(app.scene)
    logic.segmentFolder(str(cohort), str(tmp_path / "out"))
    assert scene_snapshot(app.scene) == before
    report = logic.segmentFolder(str(cohort), str(tmp_path / "out"), loadResults=True)  # also for skipped ones
    assert [row["status"] for row in report.rows[:2]] == ["skipped", "skipped"]
    added = [entry for entry in scene_snapshot(app.scene) if entry not in before]
    names = {name for _id, _class, name in added}
    assert {"case_a_CT", "case_a_PET", "case_b_CT", "case_b_PET"} <= names
    assert not any(name.startswith(("case_c", "notes")) for name in names)
    seg_node = app.scene.GetFirstNodeByName("case_a lesions")
    assert seg_node is not None and seg_node.GetSegmentation().GetNumberOfSegments() == 2
    table = seg_node.GetNodeReference("VeloxSegLesionTable")
    assert table.GetAttribute("VeloxSeg.LesionCount") == "2"
    values = table.GetTable()
    assert values.GetColumnByName("Lesion").GetValue(values.GetNumberOfRows() - 1) == "Total"
    assert values.GetColumnByName("SUVmax").GetValue(0) == pytest.approx(10.0)
    pet = app.scene.GetFirstNodeByName("case_a_PET")
    assert seg_node.GetNodeReference("VeloxSegPET").GetID() == pet.GetID()


def test_segment_folder_cancel(app, logic, cohort, tmp_path):
    snapshot = scene_snapshot(app.scene)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        logic.segmentFolder(str(cohort), str(out), cancelCallback=lambda: True)
    assert scene_snapshot(app.scene) == snapshot
    assert not (out / "case_a").exists() and {r["status"] for r in _summary(out)[1].values()} <= {"cancelled",
                                                                                                   "failed"}
    # cancelled after the first study: it stays finished (engine files and .seg.nrrd), the next one is not run
    finished = []
    with pytest.raises(Cancelled):
        logic.segmentFolder(str(cohort), str(out), loadResults=True, cancelCallback=lambda: bool(finished),
                            progressCallback=lambda f, text: finished.append(text) if "last: case_a" in text else None)
    assert (out / "case_a" / batch.SEGMENTATION_NAME).is_file() and not (out / "case_b").exists()
    assert _summary(out)[1]["case_b"]["status"] == "cancelled"
    assert app.scene.GetFirstNodeByName("case_a lesions") is not None  # finished and asked for: kept


def test_segment_folder_without_studies(app, logic, tmp_path):
    with pytest.raises(InputError, match="no study subfolders"):
        (tmp_path / "empty").mkdir()
        logic.segmentFolder(str(tmp_path / "empty"), str(tmp_path / "out"))


def test_engine_batch_api_with_worker_processes_beside_slicer(app, tiny_model, cohort, tmp_path):
    """The console's cohort API (docs/slicer.md): the engine's run_batch with two worker processes, from the
    Python that has `slicer` loaded; the scene untouched."""
    from VeloxSegSlicerLib.engine import run_batch

    snapshot = scene_snapshot(app.scene)
    report = run_batch(str(cohort), str(tmp_path / "out"), model=str(tiny_model), workers=2, show_progress=False)
    assert scene_snapshot(app.scene) == snapshot
    statuses = {row["study"]: row["status"] for row in report.rows}
    assert statuses == {"case_a": "done", "case_b": "done", "case_c": "failed", "notes": "failed"}
    assert [row["lesion_count"] for row in report.rows[:2]] == [2, 2]
    assert report.exit_code == 2 and "no PET found" in report.rows[2]["message"]
