"""VeloxSegSlicerLogic end to end on real MRML (slicer-core) with the threshold test model.

CT and PET have different oblique directions and grids; the PET holds two hot spheres of known SUV,
which the threshold model (SUV > 2.5) turns into exactly two lesions.
"""

import numpy as np
import onnx_models
import pytest
import SimpleITK as sitk
import slicer
import vtk
from conftest import MODEL_SPACING_XYZ, SUV_THRESHOLD
from mrml_study import (
    SPHERES,
    Sphere,
    add_study,
    make_ct,
    make_pet,
    physical_points,
    put_in_study,
    reference_statistics,
    scene_snapshot,
)

from VeloxSegSlicerLib import mrml_io, results, terminology
from VeloxSegSlicerLib.background import BackgroundRun
from VeloxSegSlicerLib.engine import Cancelled, InputError


@pytest.fixture
def study(app):
    ct_image, pet_image = make_ct(), make_pet()
    ct_node, pet_node = add_study(mrml_io, ct_image, pet_image)
    study_item = put_in_study(app.scene, ct_node, pet_node)
    return ct_node, pet_node, ct_image, pet_image, study_item


def _table_rows(table_node):
    table = table_node.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    return [{name: table.GetColumn(c).GetValue(r) for c, name in enumerate(names)}
            for r in range(table.GetNumberOfRows())]


def test_segment_end_to_end(app, logic, study):
    ct_node, pet_node, ct_image, pet_image, study_item = study
    job = logic.prepare(ct_node, pet_node)
    job.run()
    seg_node, table_node = logic.finish(job)
    result = job.result

    # two spheres -> two lesions, each centred on its sphere (RAS), hottest first as in the PET
    assert len(result.lesions) == len(SPHERES)
    for lesion, sphere in zip(result.lesions, SPHERES):
        assert np.linalg.norm(np.asarray(lesion.centroid_ras_mm) - sphere.center_ras) < 3.0
        assert lesion.suv_max == pytest.approx(sphere.suv)

    # geometry: reference geometry = the CT, and every segment holds exactly the engine's CT-grid label
    converter = slicer.vtkSegmentationConverter
    segmentation = seg_node.GetSegmentation()
    ijk_to_ras = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(ijk_to_ras)
    assert segmentation.GetConversionParameter(converter.GetReferenceImageGeometryParameterName()) == \
        converter.SerializeImageGeometry(ijk_to_ras, ct_node.GetImageData())
    assert seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()) is ct_node
    label_ct = sitk.GetArrayFromImage(result.label_ct)
    assert segmentation.GetNumberOfSegments() == 2
    assert segmentation.GetNumberOfLayers() == 1  # lesions share one labelmap, as Slicer stores them
    for lesion in result.lesions:
        segment_id = results.segmentIdForLesion(lesion.id)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, segment_id, ct_node)
        assert mask.shape == label_ct.shape
        np.testing.assert_array_equal(mask > 0, label_ct == lesion.id)
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == f"Lesion {lesion.id}"
        category, seg_type = terminology.parseTerminologyEntry(segment.GetTerminology())
        assert category == ("SCT", "49755003", "Morphologically Altered Structure")
        assert seg_type == ("SCT", "108369006", "Neoplasm")

    # subject hierarchy: segmentation and table sit in the CT's study (DICOM SEG export needs it)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg_node)) == study_item
    assert sh.GetItemParent(sh.GetItemByDataNode(table_node)) == study_item

    # table: engine statistics == independent numpy computation on the PET grid
    rows = _table_rows(table_node)
    assert [row["Lesion"] for row in rows] == ["1", "2", "Total"]
    reference = reference_statistics(result.label_pet, pet_image)
    for row in rows[:-1]:
        expected = reference[int(row["Lesion"])]
        for key in ("SUVmax", "SUVmean", "SUVpeak", "MTV_mL", "TLG_g", "Voxels"):
            assert row[key] == pytest.approx(expected[key], rel=1e-5), key
        centroid = [row["CentroidR_mm"], row["CentroidA_mm"], row["CentroidS_mm"]]
        np.testing.assert_allclose(centroid, expected["centroid_ras"], atol=1e-3)
        assert row["Segment"] == results.segmentIdForLesion(int(row["Lesion"]))
        assert row["OnCT"] == 1.0
    total = rows[-1]
    assert total["MTV_mL"] == pytest.approx(sum(r["MTV_mL"] for r in rows[:-1]))
    assert total["TLG_g"] == pytest.approx(sum(r["TLG_g"] for r in rows[:-1]))
    assert total["SUVmax"] == pytest.approx(10.0)
    assert total["SUVmean"] == pytest.approx(total["TLG_g"] / total["MTV_mL"])
    assert table_node.GetAttribute("VeloxSeg.LesionCount") == "2"
    assert table_node.GetColumnUnitLabel("MTV_mL") == "mL"
    assert seg_node.GetNodeReference(results.TABLE_REFERENCE_ROLE) is table_node

    # display: PET heat colour map, lesion outline visible in slice views
    assert pet_node.GetDisplayNode().GetColorNodeID() == results.PET_HEAT_COLOR_NODE_ID
    assert seg_node.GetDisplayNode().GetVisibility2DOutline()


def test_lesion_outside_the_ct_keeps_its_row_without_a_segment(app, logic):
    """The PET reaches beyond the CT and holds a lesion there: it has PET statistics (a table row) but no
    CT voxel, so no segment; the table says so (OnCT 0), as the engine does (LesionStats.on_ct)."""
    outside = Sphere((80.0, 0.0, 0.0), 6.0, 9.0)  # beyond the CT's field of view, inside the PET's
    ct_image = make_ct()
    pet_image = make_pet(size_xyz=(50, 30, 22), spheres=SPHERES + (outside,))
    ct_node, pet_node = add_study(mrml_io, ct_image, pet_image)
    job = logic.prepare(ct_node, pet_node)
    job.run()
    seg_node, table_node = logic.finish(job)

    result = job.result
    assert len(result.lesions) == 3
    far = [lesion for lesion in result.lesions if not lesion.on_ct]
    assert len(far) == 1 and np.linalg.norm(np.asarray(far[0].centroid_ras_mm) - outside.center_ras) < 3.0
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 2
    rows = {row["Lesion"]: row for row in _table_rows(table_node)[:-1]}
    assert rows[str(far[0].id)]["Segment"] == "" and rows[str(far[0].id)]["OnCT"] == 0.0
    for lesion in result.lesions:
        if lesion.on_ct:
            assert rows[str(lesion.id)]["Segment"] == results.segmentIdForLesion(lesion.id)
            assert rows[str(lesion.id)]["OnCT"] == 1.0


def test_a_ct_covering_part_of_the_pet_is_logged_and_flagged_in_the_table(app, logic, caplog):
    """The CT stops in x 14 mm past the second sphere's centre (the PET goes on): the Logic logs the
    engine's warning with the fraction of the PET's body outside the CT, and the table flags that lesion
    (CutByCTEdge 1), not the other. The same study with the whole CT logs nothing and flags nothing."""
    pet_image = make_pet()
    whole_ct = make_ct(size_xyz=(110, 100, 75), direction=np.eye(3))  # covers the (rotated) PET entirely
    left = SPHERES[1].center_lps[0] + 7.0  # the second sphere (radius 8 mm) crosses this x; the first does not
    start = whole_ct.TransformPhysicalPointToIndex((left, *SPHERES[1].center_lps[1:]))[0]
    partial_ct = whole_ct[start:, :, :]

    ct_node, pet_node = add_study(mrml_io, partial_ct, pet_image)
    with caplog.at_level("WARNING"):
        _, table_node = logic.segment(ct_node, pet_node)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "covers only part" in
                r.getMessage()]
    job = logic.prepare(ct_node, pet_node)
    job.run()
    fraction = job.result.pet_outside_ct_fraction
    # independently: PET body voxels (1.0 inside, 0.05 outside) whose centre lies more than half a PET voxel
    # (2.5 mm) beyond the CT's extent, which starts half a CT voxel (1 mm) before its first voxel centre
    points = physical_points(pet_image)
    body = sitk.GetArrayViewFromImage(pet_image) > 0.1
    low = partial_ct.GetOrigin()[0] - 1.0
    assert fraction == pytest.approx(np.count_nonzero(body & (points[..., 0] < low - 2.5)) / np.count_nonzero(body))
    assert 0.1 < fraction < 0.5
    assert len(warnings) == 1 and f"{100 * fraction:.1f} % of the PET's body" in warnings[0]
    assert "1 lesion touching the CT's edge is cut" in warnings[0]
    rows = _table_rows(table_node)
    flags = {round(row["SUVmax"]): row["CutByCTEdge"] for row in rows[:-1]}
    assert flags == {round(SPHERES[0].suv): 0.0, round(SPHERES[1].suv): 1.0}
    assert np.isnan(rows[-1]["CutByCTEdge"])
    assert table_node.GetColumnDescription("CutByCTEdge").startswith("1 = the lesion touches")

    caplog.clear()
    ct_node, pet_node = add_study(mrml_io, whole_ct, pet_image, ct_name="whole CT", pet_name="PET")
    with caplog.at_level("WARNING"):
        _, table_node = logic.segment(ct_node, pet_node)
    assert not [r for r in caplog.records if "covers only part" in r.getMessage()]
    assert [row["CutByCTEdge"] for row in _table_rows(table_node)[:-1]] == [0.0, 0.0]


def test_the_table_names_each_lesions_site_when_the_model_has_an_organ_output(app, logic, tmp_path):
    """The organ test model (the threshold model plus an organ output: the CT band nearest to each 4x4x4
    block's mean HU, Testing/helpers/onnx_models.py) names the first sphere's site "liver" (the CT is liver-like
    around it) and the second's "lymph node / soft tissue"; the threshold model names none."""
    from VeloxSegSlicerLib.logic import VeloxSegSlicerLogic

    onnx_path = onnx_models.build_threshold_onnx(tmp_path / "organ.onnx", SUV_THRESHOLD,
                                                 organ_bands_hu=[hu for _, _, hu in onnx_models.ORGAN_BANDS])
    manifest = onnx_models.write_manifest(onnx_path, MODEL_SPACING_XYZ, organs=onnx_models.organ_entries())
    ct_image = make_ct()
    values = sitk.GetArrayFromImage(ct_image)
    values[np.all(np.abs(physical_points(ct_image) - SPHERES[0].center_lps) < 18.0, axis=-1)] = 200  # a liver
    liver_ct = sitk.GetImageFromArray(values)
    liver_ct.CopyInformation(ct_image)
    ct_node, pet_node = add_study(mrml_io, liver_ct, make_pet())

    _, table_node = VeloxSegSlicerLogic(manifestPath=str(manifest)).segment(ct_node, pet_node)
    column = table_node.GetTable().GetColumnByName("Site")
    assert isinstance(column, vtk.vtkStringArray)
    rows = _table_rows(table_node)
    sites = {round(row["SUVmax"]): row["Site"] for row in rows[:-1]}
    assert sites == {round(SPHERES[0].suv): "liver", round(SPHERES[1].suv): "lymph node / soft tissue"}
    assert rows[-1]["Lesion"] == "Total" and rows[-1]["Site"] == ""
    assert table_node.GetColumnDescription("Site").startswith("Anatomical site")

    _, plain_table = logic.segment(ct_node, pet_node)  # the threshold model: no organ output
    assert [row["Site"] for row in _table_rows(plain_table)] == ["", "", ""]


def test_scene_save_and_reload(app, logic, study, tmp_path):
    ct_node, pet_node, _, _, _ = study
    seg_node, table_node = logic.segment(ct_node, pet_node)
    before_rows = _table_rows(table_node)
    masks = {seg_node.GetSegmentation().GetNthSegmentID(i): slicer.util.arrayFromSegmentBinaryLabelmap(
        seg_node, seg_node.GetSegmentation().GetNthSegmentID(i), ct_node).copy() for i in range(2)}
    names = (seg_node.GetName(), table_node.GetName(), ct_node.GetName())
    mrb = tmp_path / "study.mrb"
    assert app.scene.WriteToMRB(str(mrb))
    app.scene.Clear(0)
    assert app.scene.GetFirstNodeByName(names[0]) is None

    assert app.scene.ReadFromMRB(str(mrb))
    seg2 = app.scene.GetFirstNodeByName(names[0])
    table2 = app.scene.GetFirstNodeByName(names[1])
    ct2 = app.scene.GetFirstNodeByName(names[2])
    assert seg2.GetSegmentation().GetNumberOfSegments() == 2
    for segment_id, mask in masks.items():
        segment = seg2.GetSegmentation().GetSegment(segment_id)
        assert terminology.parseTerminologyEntry(segment.GetTerminology())[1][1] == "108369006"
        np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg2, segment_id, ct2), mask)
    after_rows = _table_rows(table2)
    assert [r["Lesion"] for r in after_rows] == [r["Lesion"] for r in before_rows]
    for before, after in zip(before_rows, after_rows):
        for key in ("SUVmax", "SUVmean", "MTV_mL", "TLG_g"):
            assert float(after[key]) == pytest.approx(before[key], rel=1e-6)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg2)) == sh.GetItemParent(sh.GetItemByDataNode(ct2))


def test_blending_option_reaches_the_engine_and_is_checked(app, logic, study, tmp_path):
    ct_node, pet_node, _, _, _ = study
    assert logic.prepare(ct_node, pet_node).options.blending == "uniform"  # the reference's default
    job = logic.prepare(ct_node, pet_node, overlap=0.5, blending="gaussian")
    assert (job.options.blending, job.options.overlap) == ("gaussian", 0.5)
    job.run()
    assert len(job.result.lesions) == len(SPHERES)
    with pytest.raises(InputError, match="blending"):
        logic.prepare(ct_node, pet_node, blending="box")

    # The option must change what the engine computes, not only the options object: with a model whose
    # output depends on where a voxel sits in its window (the ramp model) and small overlapping windows,
    # a Gaussian-weighted mean of the windows differs from a plain one at the spheres' blurred borders.
    from VeloxSegSlicerLib.logic import VeloxSegSlicerLogic

    ramp_onnx = onnx_models.build_threshold_onnx(tmp_path / "ramp16.onnx", SUV_THRESHOLD, patch=16, ramp=True)
    ramp_logic = VeloxSegSlicerLogic(manifestPath=str(onnx_models.write_manifest(ramp_onnx, MODEL_SPACING_XYZ,
                                                                                  patch=16)))
    labels = {}
    for blending in ("uniform", "gaussian"):
        ramp_job = ramp_logic.prepare(ct_node, pet_node, overlap=0.5, blending=blending, minLesionMl=0.0)
        ramp_job.run()
        assert ramp_job.result.windows_run > 1  # windows overlap
        labels[blending] = sitk.GetArrayFromImage(ramp_job.result.label_pet) > 0
    assert labels["uniform"].any() and labels["gaussian"].any()
    assert np.count_nonzero(labels["uniform"] != labels["gaussian"]) > 0, "blending made no difference"


def test_one_segment_for_all_lesions(app, logic, study):
    ct_node, pet_node, _, _, _ = study
    seg_node, table_node = logic.segment(ct_node, pet_node, oneSegmentPerLesion=False)
    segmentation = seg_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "Lesions"
    rows = _table_rows(table_node)
    assert len(rows) == 3  # per-lesion statistics are kept
    assert {r["Segment"] for r in rows[:-1]} == {results.ALL_LESIONS_SEGMENT_ID}


def test_existing_output_replaced_only_after_success(app, logic, study):
    ct_node, pet_node, _, _, _ = study
    output = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My lesions")
    output.CreateDefaultDisplayNodes()
    output.GetSegmentation().AddEmptySegment("manual", "manual edit")

    # cancelled: the old segment stays, nothing is added
    snapshot = scene_snapshot(app.scene)
    with pytest.raises(Cancelled):
        logic.segment(ct_node, pet_node, output, cancelCallback=lambda: True)
    assert scene_snapshot(app.scene) == snapshot
    assert [output.GetSegmentation().GetNthSegmentID(i) for i in range(1)] == ["manual"]
    assert output.GetSegmentation().GetNumberOfSegments() == 1

    # success: same node, segments replaced; a second run reuses its table
    seg_node, table_node = logic.segment(ct_node, pet_node, output)
    assert seg_node is output and seg_node.GetName() == "My lesions"
    segmentation = output.GetSegmentation()
    ids = sorted(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments()))
    assert ids == ["lesion_1", "lesion_2"]
    count = app.scene.GetNumberOfNodes()
    seg_again, table_again = logic.segment(ct_node, pet_node, output, oneSegmentPerLesion=False)
    assert (seg_again, table_again) == (output, table_node)
    assert app.scene.GetNumberOfNodes() == count
    assert output.GetSegmentation().GetNumberOfSegments() == 1


def test_cancel_mid_run_leaves_scene_unchanged(app, logic, study):
    ct_node, pet_node, _, _, _ = study
    snapshot = scene_snapshot(app.scene)
    stages = []

    def cancel_when_inferring():
        return any(stage == "Inference" for _, stage in stages)

    with pytest.raises(Cancelled):
        logic.segment(ct_node, pet_node, progressCallback=lambda f, s: stages.append((f, s)),
                      cancelCallback=cancel_when_inferring)
    assert any(stage == "Inference" for _, stage in stages)
    assert scene_snapshot(app.scene) == snapshot


def test_failure_while_adding_results_rolls_back(app, logic, study, monkeypatch):
    ct_node, pet_node, _, _, _ = study
    snapshot = scene_snapshot(app.scene)

    def broken_table(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(results, "_fillTableNode", broken_table)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.segment(ct_node, pet_node)
    assert scene_snapshot(app.scene) == snapshot


def test_background_run_and_cancel(app, logic, study):
    ct_node, pet_node, _, _, _ = study
    run = BackgroundRun(logic.prepare(ct_node, pet_node)).start()
    assert run.wait(60)
    assert run.job.error is None and not run.cancelled
    assert run.progress()[0] == pytest.approx(0.9)  # the engine part; finish() does the rest
    seg_node, _ = logic.finish(run.job)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 2

    snapshot = scene_snapshot(app.scene)
    run = BackgroundRun(logic.prepare(ct_node, pet_node))
    run.cancel()  # before the first check: the job stops at once
    run.start()
    assert run.wait(60)
    assert run.cancelled and isinstance(run.job.error, Cancelled)
    assert scene_snapshot(app.scene) == snapshot


def test_pet_under_linear_transform_is_used_in_world_coordinates(app, logic):
    """A PET whose grid was moved and then put back by a parent transform gives the same lesions."""
    ct_image, pet_image = make_ct(), make_pet()
    ct_node, pet_node = add_study(mrml_io, ct_image, pet_image)
    plain_seg, plain_table = logic.segment(ct_node, pet_node)
    plain_rows = _table_rows(plain_table)

    shift = np.array([30.0, -12.0, 7.0])  # RAS, mm
    moved = mrml_io.addVolumeNodeFromSitk(pet_image, "Moved PET")
    origin = np.array(moved.GetOrigin())
    moved.SetOrigin(*(origin - shift))
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, shift[axis])
    transform.SetMatrixTransformToParent(matrix)
    moved.SetAndObserveTransformNodeID(transform.GetID())
    _, moved_table = logic.segment(ct_node, moved)
    for plain, other in zip(plain_rows, _table_rows(moved_table)):
        assert other["MTV_mL"] == pytest.approx(plain["MTV_mL"])
        assert other["CentroidR_mm"] == pytest.approx(plain["CentroidR_mm"], abs=1e-3, nan_ok=True)
