"""A model with an organ output: the organ map, each lesion's site in every table, the manifest's organ entries.

The organ test model (Testing/helpers/onnx_models.py) is the threshold model plus an ``organs`` output at 1/4
of the patch whose organ is the CT band nearest to each 4x4x4 block's mean HU: other 40, lung -800, liver
200, bone 700. The study has a liver block and a lung block in a soft-tissue body with a bone rod, a hot
sphere in each block and one in soft tissue, on a grid that needs several windows.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx_models
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import PATCH, THRESHOLD, build_threshold_onnx, phantom, physical_points, write_manifest

from VeloxSegSlicerLib.engine import ModelError, load_model, segment_study
from VeloxSegSlicerLib.engine.cohort import cli
from VeloxSegSlicerLib.engine.cohort.batch import SUMMARY_COLUMNS
from VeloxSegSlicerLib.engine.cohort.outputs import STATS_COLUMNS
from VeloxSegSlicerLib.engine.inference.manifest import load_manifest
from VeloxSegSlicerLib.engine.inference.organs import OrganMap, OrganVotes, site_counts, sites_text

BANDS = [hu for _, _, hu in onnx_models.ORGAN_BANDS]
CODE = {name: code for code, (name, _, _) in enumerate(onnx_models.ORGAN_BANDS)}
# a 4 mm CT of 240 x 240 x 160 mm: the model grid (2.036 x 2.036 x 3 mm) needs 2 x 2 x 1 windows
GRID = {"size": (60, 60, 40), "spacing": (4.0, 4.0, 4.0), "origin": (-118.0, -118.0, -78.0)}
LIVER_BOX = ((20.0, 90.0), (-50.0, 20.0), (-40.0, 40.0))  # (x, y, z) ranges, mm
LUNG_BOX = ((-90.0, -25.0), (-50.0, 20.0), (-40.0, 40.0))
LESIONS = {  # site -> (centre LPS mm, radius mm, SUV)
    "liver": ((55.0, -15.0, 0.0), 10.0, 9.0),
    "lung": ((-57.0, -15.0, 0.0), 10.0, 8.0),
    "lymph node / soft tissue": ((0.0, -70.0, 0.0), 9.0, 7.0),
}


def _inside(points, box):
    return np.all([(points[..., i] >= lo) & (points[..., i] <= hi) for i, (lo, hi) in enumerate(box)], axis=0)


def make_study():
    ct = phantom([], kind="CT", body_radius_mm=100.0, **GRID)
    values = sitk.GetArrayFromImage(ct)
    points = physical_points(ct)
    values[_inside(points, LIVER_BOX)] = 200
    values[_inside(points, LUNG_BOX)] = -800
    organ_ct = sitk.GetImageFromArray(values)
    organ_ct.CopyInformation(ct)
    pet = phantom(list(LESIONS.values()), kind="PET", body_radius_mm=100.0, **GRID)
    return organ_ct, pet


@pytest.fixture(scope="module")
def organ_model_dir(tmp_path_factory) -> Path:
    """organ.onnx with two manifests: organ.json (with the organ entries) and plain.json (without)."""
    folder = tmp_path_factory.mktemp("organ_model")
    onnx_path = build_threshold_onnx(folder / "organ.onnx", organ_bands_hu=BANDS)
    write_manifest(onnx_path, organs=onnx_models.organ_entries())
    write_manifest(onnx_path, manifest_path=folder / "plain.json")
    return folder


@pytest.fixture(scope="module")
def results(organ_model_dir):
    """The study segmented with the organ manifest and with the plain one (same graph)."""
    out = {}
    for name in ("organ", "plain"):
        ct, pet = make_study()
        out[name] = segment_study(ct, pet, load_model(organ_model_dir / f"{name}.json", threads=1))
    return out


def _lesion_near(result, centre):
    return min(result.lesions, key=lambda lesion: np.linalg.norm(
        np.asarray(lesion.centroid_ras_mm) - np.asarray(centre) * (-1, -1, 1)))


# --- the organ map --------------------------------------------------------------------------------------


def _reference_votes(shape, windows, factor):
    """What OrganVotes must give, the plain way: every window's blocks expanded with np.repeat, a voxel taking
    a window's code when it is more confident (float16), or as confident with a lower code."""
    codes = np.zeros(shape, np.uint8)
    best = np.zeros(shape, np.float16)
    for (z, y, x), logits in windows:
        probabilities = np.exp(logits - logits.max(axis=0))
        probabilities /= probabilities.sum(axis=0)
        code, confidence = probabilities.argmax(axis=0), probabilities.max(axis=0).astype(np.float16)
        for axis in range(3):
            code, confidence = np.repeat(code, factor, axis), np.repeat(confidence, factor, axis)
        region = (slice(z, z + code.shape[0]), slice(y, y + code.shape[1]), slice(x, x + code.shape[2]))
        better = (confidence > best[region]) | ((confidence == best[region]) & (code < codes[region]))
        codes[region][better] = code[better]
        best[region][better] = confidence[better]
    return codes


def test_organ_votes_keep_the_most_confident_window_per_voxel():
    rng = np.random.default_rng(3)
    shape, patch, factor = (14, 12, 10), (8, 8, 8), 4
    windows = [((z, y, x), rng.normal(0.0, 2.0, (5, 2, 2, 2)).astype(np.float32))
               for z in (0, 4, 6) for y in (0, 4) for x in (0, 2)]
    # a tie: the first blocks of windows (0, 0, 0) and (0, 0, 2) overlap at x 2..4, codes 3 and 1, same confidence
    windows[0][1][:, 0, 0, 0], windows[1][1][:, 0, 0, 0] = [0, 0, 0, 9, 0], [0, 9, 0, 0, 0]
    votes = OrganVotes(shape, patch, factor)
    for (z, y, x), logits in windows:
        votes.add((slice(z, z + 8), slice(y, y + 8), slice(x, x + 8)), logits)
    codes = votes.result()
    assert codes.shape == shape and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, _reference_votes(shape, windows, factor))
    assert len(np.unique(codes)) > 2  # the windows disagree: the test compares real choices
    assert np.all(codes[:4, :4, :2] == 3) and np.all(codes[:4, :4, 2:4] == 1) and np.all(codes[:4, :4, 4:6] == 1)
    votes = OrganVotes((20, 12, 10), patch, factor)  # a window that never ran leaves code 0
    votes.add((slice(0, 8), slice(0, 8), slice(0, 8)), np.where(np.arange(5) == 3, 9.0, 0.0)[:, None, None, None]
              * np.ones((5, 2, 2, 2), np.float32))
    codes = votes.result()
    assert np.all(codes[:8, :8, :8] == 3) and np.count_nonzero(codes) == 8**3


def test_organ_votes_on_equal_confidence_keep_the_lower_code():
    region = (slice(0, 8),) * 3
    low, high = np.zeros((3, 2, 2, 2), np.float32), np.zeros((3, 2, 2, 2), np.float32)
    low[1], high[2] = 5.0, 5.0  # code 1 and code 2, with the same probability
    for order in ((low, high), (high, low)):
        votes = OrganVotes((8, 8, 8), (8, 8, 8), 4)
        for logits in order:
            votes.add(region, logits)
        assert set(np.unique(votes.result())) == {1}
    votes = OrganVotes((8, 8, 8), (8, 8, 8), 4)
    high[2] = 6.0  # now more confident
    votes.add(region, low)
    votes.add(region, high)
    assert set(np.unique(votes.result())) == {2}


def test_site_of_a_lesion_is_the_organ_around_it_outside_every_lesion():
    # model grid = PET grid here, 2 x 2 x 3 mm: the 8 mm shell is 4 voxels in x and y, 3 in z
    codes = np.full((12, 20, 20), 2, np.uint8)  # "site c" everywhere ...
    codes[5:7, 8:12, 8:12] = 1  # ... except under the lesion: the organ head calls a hot lesion a hot organ
    grid = type("Grid", (), {"origin": (0.0, 0.0, 0.0), "spacing": (2.0, 2.0, 3.0)})
    organs = OrganMap.on_model_grid(codes, grid, ("a", "b", "c"), ("site a", "site b", "site c"))
    pet = sitk.Image([20, 20, 12], sitk.sitkFloat32)
    pet.SetSpacing((2.0, 2.0, 3.0))
    labels = np.zeros((12, 20, 20), np.int32)
    labels[5:7, 8:12, 8:12] = 1
    assert organs.site_of_lesion(pet, labels, 1, (8, 8, 5), (4, 4, 2)) == "site c"  # the tissue around it
    assert organs.site_of_codes(codes[labels == 1]) == "site b"  # what its own voxels would have said

    # a neighbouring lesion's voxels are not the tissue around: the shell outside both is "site a" here
    codes[:] = 0
    codes[5:7, 8:12, 8:12] = 1
    codes[5:7, 12:16, 8:12] = 2
    organs = OrganMap.on_model_grid(codes, grid, ("a", "b", "c"), ("site a", "site b", "site c"))
    labels[5:7, 12:16, 8:12] = 2
    assert organs.site_of_lesion(pet, labels, 1, (8, 8, 5), (4, 4, 2)) == "site a"

    # a lesion filling the whole image has no shell: its own voxels, the lower code on a tie
    codes = np.zeros((1, 1, 4), np.uint8)
    codes[0, 0, :2], codes[0, 0, 2:] = 2, 1
    organs = OrganMap.on_model_grid(codes, grid, ("a", "b", "c"), ("site a", "site b", "site c"))
    small = sitk.Image([4, 1, 1], sitk.sitkFloat32)
    small.SetSpacing((2.0, 2.0, 3.0))
    assert organs.site_of_lesion(small, np.ones((1, 1, 4), np.int32), 1, (0, 0, 0), (4, 1, 1)) == "site b"
    assert organs.site_of_codes(np.zeros(0, np.uint8)) == ""


def test_organ_map_and_sites_on_a_study(results):
    result = results["organ"]
    organ_map = result.organ_map
    grid = result.model_grid
    assert organ_map.image.GetSize() == tuple(grid.size)
    np.testing.assert_allclose(organ_map.image.GetOrigin(), grid.origin)
    assert organ_map.image.GetPixelID() == sitk.sitkUInt8
    assert result.windows_run > 1
    expected = {(55.0, -15.0, 0.0): "liver", (-57.0, -15.0, 0.0): "lung", (0.0, 80.0, 0.0): "other",
                (0.0, -85.0, 0.0): "other"}
    for point, organ in expected.items():
        index = organ_map.image.TransformPhysicalPointToIndex(point)[::-1]
        assert sitk.GetArrayViewFromImage(organ_map.image)[index] == CODE[organ], (point, organ)
    assert len(result.lesions) == len(LESIONS)
    for site, (centre, _, suv) in LESIONS.items():
        lesion = _lesion_near(result, centre)
        assert lesion.site == site and lesion.suv_max == pytest.approx(suv)
    assert site_counts(result.lesions) == [("liver", 1), ("lung", 1), ("lymph node / soft tissue", 1)]
    assert sites_text(result.lesions) == "liver:1;lung:1;lymph node / soft tissue:1"


def test_the_organ_output_leaves_the_lesions_bit_identical(results):
    organ, plain = results["organ"], results["plain"]
    assert plain.organ_map is None and all(lesion.site == "" for lesion in plain.lesions)
    for name in ("label_ct", "label_pet"):
        a, b = getattr(organ, name), getattr(plain, name)
        assert a.GetPixelID() == b.GetPixelID()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert [lesion.site for lesion in organ.lesions] != [""] * len(organ.lesions)
    assert [dict(vars(lesion), site="") for lesion in organ.lesions] == [vars(lesion) for lesion in plain.lesions]


# --- the tables -------------------------------------------------------------------------------------------


def _write_study(folder: Path):
    folder.mkdir(parents=True)
    ct, pet = make_study()
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(pet, str(folder / "pet.nii.gz"))
    return folder / "ct.nii.gz", folder / "pet.nii.gz"


def test_cli_segment_names_sites_and_writes_the_organ_map(tmp_path, capsys, organ_model_dir):
    ct, pet = _write_study(tmp_path / "in")
    out, stats, organs = tmp_path / "lesions.nii.gz", tmp_path / "lesions.csv", tmp_path / "organs.nrrd"
    code = cli.main(["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(out), "--stats", str(stats),
                     "--organs", str(organs), "--model", str(organ_model_dir / "organ.json")])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "3 lesions (liver 1, lung 1, lymph node / soft tissue 1), total MTV" in stdout
    assert ", site liver" in stdout
    with open(stats, newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert tuple(reader.fieldnames) == STATS_COLUMNS and "site" in STATS_COLUMNS
    assert sorted(row["site"] for row in rows) == sorted(LESIONS)
    label, organ_image, ct_image = (sitk.ReadImage(str(p)) for p in (out, organs, ct))
    assert organ_image.GetPixelID() == sitk.sitkUInt8 and organ_image.GetSize() == ct_image.GetSize()
    np.testing.assert_allclose(organ_image.GetOrigin(), ct_image.GetOrigin())
    codes, lesions = sitk.GetArrayFromImage(organ_image), sitk.GetArrayFromImage(label)
    assert set(np.unique(codes)) <= set(CODE.values())
    for site, (centre, _, _) in LESIONS.items():  # under each lesion on the CT grid: its organ
        index = ct_image.TransformPhysicalPointToIndex(centre)[::-1]
        lesion_id = lesions[index]
        organ = {"liver": "liver", "lung": "lung"}.get(site, "other")
        assert lesion_id > 0 and np.mean(codes[lesions == lesion_id] == CODE[organ]) > 0.9, site


def test_cli_organs_needs_a_model_with_an_organ_output(tmp_path, capsys, organ_model_dir):
    ct, pet = _write_study(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(out / "l.nii.gz"),
                     "--organs", str(out / "organs.nii.gz"), "--model", str(organ_model_dir / "plain.json")])
    assert code == 2 and "--organs needs a model with an organ output" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_batch_summary_has_the_sites_and_keeps_them_on_a_rerun(tmp_path, capsys, organ_model_dir):
    _write_study(tmp_path / "cohort" / "case_1")
    output = tmp_path / "results"
    args = ["batch", "--input", str(tmp_path / "cohort"), "--output", str(output), "--workers", "1",
            "--model", str(organ_model_dir / "organ.json")]
    for status in ("done", "skipped"):
        assert cli.main(args) == 0
        capsys.readouterr()
        with open(output / "summary.csv", newline="") as stream:
            reader = csv.DictReader(stream)
            rows = list(reader)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        assert rows[0]["status"] == status
        assert rows[0]["sites"] == "liver:1;lung:1;lymph node / soft tissue:1"
    with open(output / "case_1" / "lesions.csv", newline="") as stream:
        assert sorted(row["site"] for row in csv.DictReader(stream)) == sorted(LESIONS)


def test_a_model_without_organ_output_leaves_the_site_empty(tmp_path, capsys, organ_model_dir):
    _write_study(tmp_path / "cohort" / "case_1")
    output = tmp_path / "results"
    assert cli.main(["batch", "--input", str(tmp_path / "cohort"), "--output", str(output), "--workers", "1",
                     "--model", str(organ_model_dir / "plain.json")]) == 0
    stderr = capsys.readouterr().err
    with open(output / "summary.csv", newline="") as stream:
        row = next(csv.DictReader(stream))
    assert row["lesion_count"] == "3" and row["sites"] == "", stderr
    with open(output / "case_1" / "lesions.csv", newline="") as stream:
        assert [row["site"] for row in csv.DictReader(stream)] == ["", "", ""]


def test_info_says_whether_the_model_names_sites(capsys, organ_model_dir):
    assert cli.main(["info", "--model", str(organ_model_dir / "organ.json")]) == 0
    stdout = capsys.readouterr().out
    assert "sites: named for each lesion from 4 organ classes" in stdout and "liver" in stdout
    assert cli.main(["info", "--model", str(organ_model_dir / "plain.json")]) == 0
    assert "sites: not named" in capsys.readouterr().out


# --- the manifest's organ entries -----------------------------------------------------------------------


@pytest.fixture()
def organ_manifest(tmp_path, organ_model_dir):
    for name in ("organ.onnx", "organ.json"):
        shutil.copy(organ_model_dir / name, tmp_path / name)
    return tmp_path / "organ.json"


def test_organ_entries_are_read(organ_manifest):
    manifest = load_manifest(organ_manifest)
    assert manifest.has_organs and manifest.organ_output == "organs" and manifest.organ_downsampling == 4
    assert manifest.organ_sites == ("lymph node / soft tissue", "lung", "liver", "bone")
    assert manifest.organ_names == ("other", "lung", "liver", "bone_marrow")


def test_a_manifest_without_organ_entries_names_no_sites(organ_model_dir):
    manifest = load_manifest(organ_model_dir / "plain.json")
    assert not manifest.has_organs and manifest.organ_names == () and manifest.organ_sites == ()


@pytest.mark.parametrize(
    "change,match",
    [
        ({"organ_sites": ["liver", "lung"]}, "lists 4 organs but 'organ_sites' 2"),
        ({"organ_downsampling": 5}, "'organ_downsampling' 5 does not divide the patch size"),
        ({"organ_downsampling": 0}, "'organ_downsampling' must be a positive whole number"),
        ({"organ_downsampling": "4"}, "'organ_downsampling' must be a positive whole number"),
        ({"organ_downsampling": 4.0}, "'organ_downsampling' must be a positive whole number"),
        ({"organ_names": []}, "'organ_names' must be a non-empty list of names"),
        ({"organ_sites": ["liver", "", "lung", "bone"]}, "'organ_sites' must be a non-empty list of names"),
        ({"organ_names": ["a", "a", "b", "c"]}, "lists an organ twice"),
        ({"organ_output": "logits"}, "must name the organ output"),
        ({"organ_output": None}, "'organ_output' is missing"),
        ({"organ_sites": None, "drop": "organ_sites"}, "has organ_output, organ_downsampling, organ_names but not "
                                                        "organ_sites"),
    ],
)
def test_invalid_organ_entries_are_named(organ_manifest, change, match):
    data = json.loads(organ_manifest.read_text())
    change = dict(change)
    drop = change.pop("drop", None)
    data.update(change)
    if drop:
        del data[drop]
    organ_manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=match) as error:
        load_manifest(organ_manifest)
    assert str(organ_manifest) in str(error.value)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"organ_output": "organ_probabilities"}, "names the organ output 'organ_probabilities'"),
        ({"organ_names": ["a", "b", "c"], "organ_sites": ["a", "b", "c"]}, r"expects \(N, \[3, 24, 24, 24\]\)"),
        ({"organ_downsampling": 2}, r"expects \(N, \[4, 48, 48, 48\]\)"),
    ],
)
def test_organ_entries_not_matching_the_graph_are_refused(organ_manifest, change, match):
    data = json.loads(organ_manifest.read_text())
    data.update(change)
    organ_manifest.write_text(json.dumps(data))
    load_manifest(organ_manifest)  # valid on its own: only the graph tells
    with pytest.raises(ModelError, match=match) as error:
        load_model(organ_manifest)
    assert "Re-export the model" in str(error.value)


def test_threshold_and_patch_of_the_organ_model_are_the_engine_tests_ones(organ_model_dir):
    """The organ model's lesion output is the engine tests' threshold model (so its lesions are predictable)."""
    model = load_model(organ_model_dir / "organ.json")
    assert model.patch_size == (PATCH,) * 3
    batch = np.zeros((1, 2, PATCH, PATCH, PATCH), np.float32)
    batch[0, 1, :4] = THRESHOLD + 1.0
    batch[0, 0, :, :48] = 200.0
    logits, organs = model.run_with_organs(batch)
    np.testing.assert_array_equal(logits[0, 1] - logits[0, 0] > 0, batch[0, 1] > THRESHOLD)
    assert organs.shape == (1, 4, 24, 24, 24)
    codes = organs[0].argmax(axis=0)
    assert np.all(codes[:, :12] == CODE["liver"]) and np.all(codes[:, 12:] == CODE["other"])
    np.testing.assert_array_equal(model.run(batch), logits)
