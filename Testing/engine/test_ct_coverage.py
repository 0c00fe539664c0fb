"""A CT covering only part of the PET is never silent (issue 20): the PET beyond the CT is not analysed,
so the result says which fraction of the PET's body lies outside the CT, the lesion touching the CT's edge
is flagged as cut (`cut_by_ct_edge` in the CSV, an integer), `veloxseg segment` and `veloxseg batch` say
it on stderr, and the batch's summary and record keep it. A CT covering the whole PET (here: on the PET's
grid, with a lesion at the PET's own edge) gives no warning and no flag."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import phantom, physical_points, rotation

from VeloxSegSlicerLib.engine import segment_study
from VeloxSegSlicerLib.engine.cohort import batch_study, cli
from VeloxSegSlicerLib.engine.cohort.batch import run_batch
from VeloxSegSlicerLib.engine.inference.coverage import _CtExtent, ct_coverage

PET_GRID = {"size": (60, 60, 80), "spacing": (3.0, 3.0, 3.0), "origin": (-90.0, -90.0, -120.0)}  # z -120..117
INSIDE = ((10.0, 0.0, 60.0), 12.0, 9.0)  # well inside the CT
CROSSING = ((-10.0, 10.0, 0.0), 12.0, 9.0)  # across the CT's lower edge (z = 0)
AT_PET_EDGE = ((0.0, -20.0, 112.0), 12.0, 9.0)  # reaching beyond the PET's top: cut by the PET, not the CT


def _pet():
    return phantom([INSIDE, CROSSING], kind="PET", body_radius_mm=60.0, **PET_GRID)


def _upper_half_ct():
    """A CT over the whole PET in x and y but only z >= 0: the PET's lower half (40 of its 80 slices, all
    body) lies outside it."""
    return phantom([], (130, 130, 60), (1.5, 1.5, 2.0), (-97.0, -97.0, 0.0), kind="CT", body_radius_mm=60.0)


def _lesion_at(result, centre):
    """The lesion whose centroid (RAS) is at a sphere's centre (LPS)."""
    lps = np.array([[-lesion.centroid_ras_mm[0], -lesion.centroid_ras_mm[1], lesion.centroid_ras_mm[2]]
                    for lesion in result.lesions])
    return result.lesions[int(np.argmin(np.linalg.norm(lps - np.asarray(centre), axis=1)))]


def test_half_ct_gives_the_fraction_and_flags_the_cut_lesion(model):
    pet = _pet()
    result = segment_study(_upper_half_ct(), pet, model)

    # independently: PET body voxels (SUV > 0.1) whose centre lies more than half a PET voxel below the CT
    # (its extent starts half a CT slice below its first slice centre, z = 0)
    body = sitk.GetArrayViewFromImage(pet) > 0.1
    below = physical_points(pet)[..., 2] < -1.0 - 1.5
    expected = np.count_nonzero(body & below) / np.count_nonzero(body)
    assert expected == pytest.approx(0.5)
    assert result.pet_outside_ct_fraction == pytest.approx(expected)

    assert result.totals.lesion_count == 2
    assert _lesion_at(result, CROSSING[0]).cut_by_ct_edge
    assert not _lesion_at(result, INSIDE[0]).cut_by_ct_edge
    (warning,) = result.warnings
    assert warning.startswith("The CT covers only part of the PET: 50.0 % of the PET's body (voxels above "
                              "SUV 0.1) lies outside the CT's field of view and was not analysed")
    assert "lesions there are missing, and 1 lesion touching the CT's edge is cut there" in warning


def test_a_ct_covering_the_whole_pet_gives_no_warning(model):
    pet = phantom([INSIDE, AT_PET_EDGE], kind="PET", body_radius_mm=60.0, **PET_GRID)
    ct = phantom([], kind="CT", body_radius_mm=60.0, **PET_GRID)  # the CT on the PET's grid (IBSI)
    result = segment_study(ct, pet, model)
    assert result.totals.lesion_count == 2
    assert result.warnings == [] and result.pet_outside_ct_fraction == 0.0
    assert not any(lesion.cut_by_ct_edge for lesion in result.lesions)


def test_only_what_lies_wholly_outside_counts():
    """A PET grid a little coarser than its CT reaches past it by part of a voxel on each side (the bundled
    sample study): those PET voxels are partly covered, so nothing is outside. Half a voxel more is."""
    pet = phantom([], (20, 20, 20), (5.0, 5.0, 5.0), (-47.5, -47.5, -47.5), body_radius_mm=200.0)
    ct = phantom([], (48, 48, 48), (2.0, 2.0, 2.0), (-47.0, -47.0, -47.0), kind="CT", body_radius_mm=40.0)
    assert ct_coverage(pet, ct).outside_fraction == 0.0  # the PET's outer voxel centres lie 1.5 mm beyond
    shorter = ct[:, :, 2:]  # now 4 mm shorter at the bottom: the PET's first slice (at -47.5) is outside
    assert ct_coverage(pet, shorter).outside_fraction == pytest.approx(1 / 20)


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_the_ct_extent_matches_itk_on_oblique_grids(degrees):
    pet = sitk.Image([13, 11, 9], sitk.sitkFloat32)
    pet.SetSpacing((4.0, 3.5, 5.0))
    pet.SetOrigin((-20.0, -15.0, -18.0))
    pet.SetDirection(rotation("z", -15.0).ravel().tolist())
    ct = sitk.Image([20, 17, 11], sitk.sitkInt16)
    ct.SetSpacing((2.0, 2.5, 3.0))
    ct.SetOrigin((-12.0, -25.0, -10.0))
    ct.SetDirection((rotation("x", degrees) @ rotation("z", degrees)).ravel().tolist())
    inside = _CtExtent(pet, ct).inside(tuple(slice(0, n) for n in reversed(pet.GetSize())))
    expected = np.zeros_like(inside)
    for z, y, x in np.ndindex(*inside.shape):
        point = pet.TransformIndexToPhysicalPoint((x, y, z))
        index = np.asarray(ct.TransformPhysicalPointToContinuousIndex(point))
        # a voxel centre on the CT's very edge (within 0.001 CT voxel) counts as covered
        expected[z, y, x] = np.all((index >= -0.501) & (index <= np.asarray(ct.GetSize()) - 0.499))
    assert 0 < np.count_nonzero(expected) < expected.size  # a partial overlap
    np.testing.assert_array_equal(inside, expected)


def _write(folder: Path, ct, pet):
    folder.mkdir(parents=True)
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(pet, str(folder / "pet.nii.gz"))
    return folder / "ct.nii.gz", folder / "pet.nii.gz"


def test_segment_says_it_on_stderr_and_flags_the_cut_lesion_in_the_csv(tmp_path, manifest_path, capsys):
    ct, pet = _write(tmp_path / "study", _upper_half_ct(), _pet())
    stats = tmp_path / "lesions.csv"
    code = cli.main(["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(tmp_path / "lesions.nii.gz"),
                     "--stats", str(stats), "--model", str(manifest_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: The CT covers only part of the PET: 50.0 % of the PET's body" in err
    rows = list(csv.DictReader(stats.open()))
    assert list(rows[0])[-2:] == ["on_ct", "cut_by_ct_edge"]
    assert sorted(row["cut_by_ct_edge"] for row in rows) == ["0", "1"]  # whole numbers, not 1.0
    cut = next(row for row in rows if row["cut_by_ct_edge"] == "1")
    centroid_lps = (-float(cut["centroid_r_mm"]), -float(cut["centroid_a_mm"]), float(cut["centroid_s_mm"]))
    assert np.linalg.norm(np.subtract(centroid_lps, CROSSING[0])) < 3.0

    full = tmp_path / "full"  # the same study with a CT on the PET grid: no warning, no flag
    ct, pet = _write(full, phantom([], kind="CT", body_radius_mm=60.0, **PET_GRID), _pet())
    code = cli.main(["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(full / "lesions.nii.gz"),
                     "--stats", str(full / "lesions.csv"), "--model", str(manifest_path)])
    err = capsys.readouterr().err
    assert code == 0 and "warning" not in err, err
    assert [row["cut_by_ct_edge"] for row in csv.DictReader((full / "lesions.csv").open())] == ["0", "0"]


def test_batch_says_it_on_stderr_and_keeps_it_in_the_summary_and_record(tmp_path, manifest_path, capsys):
    cohort = tmp_path / "cohort"
    _write(cohort / "full", phantom([], kind="CT", body_radius_mm=60.0, **PET_GRID), _pet())
    _write(cohort / "half", _upper_half_ct(), _pet())
    output = tmp_path / "out"
    code = cli.main(["batch", "--input", str(cohort), "--output", str(output), "--workers", "1",
                     "--model", str(manifest_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: half: The CT covers only part of the PET: 50.0 %" in err
    assert "full:" not in err
    with open(output / "summary.csv", newline="", encoding="utf-8") as stream:
        rows = {row["study"]: row for row in csv.DictReader(stream)}
    assert rows["half"]["status"] == "done" and "50.0 % of the PET's body" in rows["half"]["message"]
    assert rows["full"]["message"] == ""
    record = batch_study.read_record(output / "half")
    assert record["pet_outside_ct_fraction"] == pytest.approx(0.5)
    assert record["warnings"] == [rows["half"]["message"]]
    assert batch_study.read_record(output / "full")["warnings"] == []

    # a rerun skips both and still tells about the partial CT
    again = run_batch(cohort, output, manifest_path, show_progress=False)
    skipped = {row["study"]: row for row in again.rows}
    assert skipped["half"]["status"] == "skipped" and "50.0 % of the PET's body" in skipped["half"]["message"]
