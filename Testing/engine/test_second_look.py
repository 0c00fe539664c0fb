"""The calibrated lesion threshold and the second look (engine side): manifest entries, candidate features,
the classifier stage in segment_study, and labels bit-identical without it.

The threshold test model's blended logit difference is exactly SUV - 4 (engine_helpers), so a lesion
threshold of logit t marks SUV > 4 + t, and the candidate threshold (probability 0.25, logit -1.0986) SUV >
2.90. The study: three spheres in a soft-tissue body, A (SUV 9, CT 200 HU), B (SUV 5, CT 40 HU) and C (SUV
3.5, CT 200 HU: below the lesion threshold, above the candidate threshold). The hand-built classifier keeps
candidates whose mean CT exceeds 100 HU: A kept, B rejected, C rescued.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx_models
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import THRESHOLD, build_threshold_onnx, phantom, write_manifest

from VeloxSegSlicerLib.engine import ModelError, SegmentOptions, load_model, segment_study
from VeloxSegSlicerLib.engine.inference.candidates import FEATURE_NAMES, candidate_features
from VeloxSegSlicerLib.engine.inference.manifest import load_manifest
from VeloxSegSlicerLib.engine.inference.preprocess import Grid
from VeloxSegSlicerLib.engine.inference.statistics import sphere_offsets

GRID = {"size": (50, 50, 40), "spacing": (4.0, 4.0, 4.0), "origin": (-98.0, -98.0, -78.0)}
SPHERES = {  # name -> (centre LPS mm, radius mm, SUV, CT HU)
    "A": ((40.0, 0.0, 0.0), 10.0, 9.0, 200),
    "B": ((-40.0, 0.0, 0.0), 10.0, 5.0, 40),
    "C": ((0.0, -50.0, 20.0), 10.0, 3.5, 200),
}
CANDIDATE_LOGIT = math.log(0.25 / 0.75)
OPTIONS = SegmentOptions(min_lesion_ml=0.0, min_suv_max=0.0)


def make_study():
    ct = phantom([(c, r, hu) for c, r, _, hu in SPHERES.values()], kind="CT", body_radius_mm=90.0, **GRID)
    pet = phantom([(c, r, suv) for c, r, suv, _ in SPHERES.values()], kind="PET", body_radius_mm=90.0, **GRID)
    return ct, pet


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("second_look_model")
    write_manifest(build_threshold_onnx(folder / "threshold.onnx"))
    weights = np.zeros(len(FEATURE_NAMES), np.float32)
    weights[FEATURE_NAMES.index("ct_hu_mean")] = 0.1
    onnx_models.write_second_look_manifest(
        onnx_models.build_linear_classifier(folder / "second_look.onnx", weights, -10.0), FEATURE_NAMES,
        candidate_logit=CANDIDATE_LOGIT)
    return folder


def manifest_with(folder, name, **entries):
    data = json.loads((folder / "threshold.json").read_text())
    data.update(entries)
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def labels_of(result):
    return sitk.GetArrayFromImage(result.label_pet), sitk.GetArrayFromImage(result.label_ct)


def sphere_hit(result, pet, name) -> bool:
    centre = pet.TransformPhysicalPointToIndex(SPHERES[name][0])
    return sitk.GetArrayViewFromImage(result.label_pet)[centre[::-1]] > 0


# --------------------------------------------------------------------------- manifest
@pytest.mark.parametrize("value", [0.5, "0.5", {"logit": "1"}, {"logit": float("nan")}, {"logit": 40.0},
                                   {"probability": 0.4}, {"logit": True}])
def test_a_bad_lesion_threshold_is_refused(model_folder, value):
    path = manifest_with(model_folder, "bad_threshold.json", lesion_threshold=value)
    with pytest.raises(ModelError, match="lesion_threshold"):
        load_manifest(path)


def test_the_lesion_threshold_defaults_to_0_and_is_read(model_folder):
    assert load_manifest(model_folder / "threshold.json").lesion_threshold == 0.0
    path = manifest_with(model_folder, "t.json", lesion_threshold={"logit": -0.75, "chosen_on": "x", "metric": "y"})
    assert load_manifest(path).lesion_threshold == -0.75


def test_a_missing_classifier_manifest_is_refused(model_folder):
    path = manifest_with(model_folder, "missing.json", second_look="nowhere.json")
    with pytest.raises(ModelError, match="nowhere.json.*missing"):
        load_manifest(path)


def test_a_classifier_that_fails_its_sha256_is_refused(model_folder, tmp_path):
    for name in ("threshold.onnx", "second_look.onnx", "second_look.json"):
        shutil.copy(model_folder / name, tmp_path / name)
    path = manifest_with(model_folder, "x.json", second_look="second_look.json")
    shutil.copy(path, tmp_path / "model.json")
    load_model(tmp_path / "model.json")  # intact: loads
    with open(tmp_path / "second_look.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelError, match="second_look.onnx fails its integrity check"):
        load_model(tmp_path / "model.json")
    (tmp_path / "second_look.onnx").unlink()
    with pytest.raises(ModelError, match="second_look.onnx .*missing"):
        load_model(tmp_path / "model.json")


@pytest.mark.parametrize("change, match", [
    ({"feature_names": ["suv_max"]}, "feature_names"),
    ({"feature_std": [0.0] * len(FEATURE_NAMES)}, "feature_std"),
    ({"score_threshold": 1.5}, "score_threshold"),
    ({"candidate_threshold": {"logit": 0.5}}, "above the lesion threshold"),
    ({"format": "other"}, "format"),
])
def test_a_bad_classifier_manifest_is_refused(model_folder, tmp_path, change, match):
    data = json.loads((model_folder / "second_look.json").read_text())
    data.update(change)
    (model_folder / "bad_sl.json").write_text(json.dumps(data))
    path = manifest_with(model_folder, "bad_model.json", second_look="bad_sl.json")
    with pytest.raises(ModelError, match=match):
        load_manifest(path)


# --------------------------------------------------------------------------- features
def test_candidate_features_of_a_handcrafted_volume():
    """Two balls on a 2 x 2 x 3 mm grid: a hot one low in the body and a faint one high, known values."""
    spacing_xyz = (2.0, 2.0, 3.0)
    shape = (60, 40, 40)  # z, y, x
    grid = Grid(origin=(0.0, 0.0, 100.0), spacing=spacing_xyz, size=shape[::-1])
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[5:55] = 40.0  # the body: slices 5 to 54
    pet = np.where(ct > -500, 1.0, 0.0).astype(np.float32)
    logit = np.full(shape, -5.0, np.float32)
    ball_a = ((z * 3.0 - 45.0) ** 2 + (y * 2.0 - 40.0) ** 2 + (x * 2.0 - 40.0) ** 2) <= 12.0 ** 2
    ball_b = ((z * 3.0 - 120.0) ** 2 + (y * 2.0 - 40.0) ** 2 + (x * 2.0 - 40.0) ** 2) <= 8.0 ** 2
    pet[ball_a], ct[ball_a], logit[ball_a] = 8.0, 100.0, 2.0
    pet[ball_b], ct[ball_b], logit[ball_b] = 3.0, 20.0, -0.5
    logit[15, 20, 20] = 4.0  # the hottest logit of A
    pet[15, 20, 20], pet[40, 20, 20] = 9.0, 3.5  # the hottest voxels, at the centres
    organs = np.zeros(shape, np.uint8)
    organs[ball_b] = 2
    found = candidate_features(logit, ct, pet, grid, -1.0, organs, ("other", "lung", "liver"), ("liver", "lung"))
    assert found.count == 2
    assert found.feature_names == FEATURE_NAMES + ("organ:liver", "organ:lung")
    rows = {int(found.labels[15, 20, 20]): "A", int(found.labels[40, 20, 20]): "B"}
    voxel_ml = 2.0 * 2.0 * 3.0 / 1000.0
    for label, name in rows.items():
        f = dict(zip(found.feature_names, found.features[label - 1].astype(float)))
        ball = ball_a if name == "A" else ball_b
        suv, top_suv, hu, value, centre_z = ((8.0, 9.0, 100.0, 2.0, 45.0) if name == "A"
                                             else (3.0, 3.5, 20.0, -0.5, 120.0))
        assert f["suv_max"] == top_suv
        assert f["suv_mean"] == pytest.approx(suv + (top_suv - suv) / ball.sum())
        # the 1 cm^3 sphere around the hottest voxel lies inside the ball
        peak_voxels = len(sphere_offsets(spacing_xyz))
        assert f["suv_peak"] == pytest.approx(suv + (top_suv - suv) / peak_voxels)
        assert f["log10_volume_ml"] == pytest.approx(math.log10(ball.sum() * voxel_ml), abs=1e-6)
        lo, hi = np.argwhere(ball).min(axis=0), np.argwhere(ball).max(axis=0) + 1
        assert f["extent"] == pytest.approx(ball.sum() / np.prod(hi - lo), rel=1e-6)
        assert f["elongation"] == pytest.approx(1.0, abs=0.1)
        assert f["ct_hu_mean"] == pytest.approx(hu)
        # body from slice 5 (z = 115 mm) to 54 (z = 262 mm); the centroid at z = 100 + centre_z mm
        assert f["relative_z"] == pytest.approx((centre_z + 100.0 - 115.0) / (262.0 - 115.0), abs=1e-6)
        top = 4.0 if name == "A" else value
        assert f["prob_max"] == pytest.approx(1 / (1 + math.exp(-top)), rel=1e-6)
        if name == "A":
            expected_mean = ((ball.sum() - 1) / (1 + math.exp(-2.0)) + 1 / (1 + math.exp(-4.0))) / ball.sum()
        else:
            expected_mean = 1 / (1 + math.exp(0.5))
        assert f["prob_mean"] == pytest.approx(expected_mean, rel=1e-6)
        # A is on code 0 ("other": no feature of the classifier), B on code 2 ("liver")
        assert (f["organ:liver"], f["organ:lung"]) == ((0.0, 0.0) if name == "A" else (1.0, 0.0))


def test_elongation_of_a_rod():
    grid = Grid(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), size=(30, 30, 30))
    logit = np.full((30, 30, 30), -5.0, np.float32)
    logit[10:12, 10:12, 2:28] = 1.0  # 2 x 2 x 26 voxels along x
    found = candidate_features(logit, np.zeros_like(logit), np.ones_like(logit), grid, 0.0)
    elongation = found.features[0, FEATURE_NAMES.index("elongation")]
    assert elongation == pytest.approx(math.sqrt((26 ** 2 - 1) / 12 / 0.25), rel=1e-4)
    assert found.features[0, FEATURE_NAMES.index("extent")] == 1.0


# --------------------------------------------------------------------------- the engine with and without
def test_without_the_stage_labels_are_bit_identical(model_folder):
    ct, pet = make_study()
    plain = segment_study(ct, pet, load_model(model_folder / "threshold.json"), OPTIONS)
    zero = segment_study(ct, pet, load_model(manifest_with(model_folder, "zero.json",
                                                           lesion_threshold={"logit": 0.0})), OPTIONS)
    kept = segment_study(ct, pet, load_model(model_folder / "threshold.json"), OPTIONS, keep_maps=True)
    for other in (zero, kept):
        for a, b in zip(labels_of(plain), labels_of(other)):
            assert np.array_equal(a, b)
    assert plain.logit_diff is None and plain.second_look_candidates is None
    assert kept.logit_diff.shape == kept.model_grid.shape_zyx
    # the kept map is the blended logit difference: SUV - 4 on the model grid
    assert np.allclose(kept.logit_diff, np.clip(kept.model_pet_suv, 0, 30) - THRESHOLD, atol=1e-5)
    assert [sphere_hit(plain, pet, n) for n in "ABC"] == [True, True, False]


def test_a_calibrated_threshold_moves_the_lesion_boundary(model_folder):
    ct, pet = make_study()
    model = load_model(manifest_with(model_folder, "t1.json", lesion_threshold={"logit": 1.5}))
    result = segment_study(ct, pet, model, OPTIONS)
    assert [sphere_hit(result, pet, n) for n in "ABC"] == [True, False, False]  # SUV > 5.5 only
    low = segment_study(ct, pet, load_model(manifest_with(model_folder, "t2.json", lesion_threshold={"logit": -1.0})),
                        OPTIONS)
    assert [sphere_hit(low, pet, n) for n in "ABC"] == [True, True, True]  # SUV > 3


def test_the_second_look_keeps_rejects_and_rescues(model_folder):
    ct, pet = make_study()
    model = load_model(manifest_with(model_folder, "sl.json", second_look="second_look.json"))
    assert model.second_look is not None
    result = segment_study(ct, pet, model, OPTIONS)
    assert result.second_look_candidates == 3 and result.second_look_kept == 2
    assert [sphere_hit(result, pet, n) for n in "ABC"] == [True, False, True]
    assert "Second look" in result.seconds
    # A keeps exactly its outline without the stage; C (no voxel above the lesion threshold) its candidate voxels
    plain = segment_study(ct, pet, load_model(model_folder / "threshold.json"), OPTIONS)
    label, plain_label = labels_of(result)[0], labels_of(plain)[0]
    a = plain_label[pet.TransformPhysicalPointToIndex(SPHERES["A"][0])[::-1]]
    a_now = label[pet.TransformPhysicalPointToIndex(SPHERES["A"][0])[::-1]]
    assert np.array_equal(plain_label == a, label == a_now)
    c_now = label[pet.TransformPhysicalPointToIndex(SPHERES["C"][0])[::-1]]
    suv = sitk.GetArrayFromImage(pet)
    sphere_c = suv == np.float32(SPHERES["C"][2])
    rescued = label == c_now
    assert not (rescued & ~sphere_c).any() and rescued.any()
    # exactly the voxels the network alone marks at the candidate threshold
    low = segment_study(ct, pet, load_model(manifest_with(model_folder, "tc.json",
                                                          lesion_threshold={"logit": CANDIDATE_LOGIT})), OPTIONS)
    low_label = labels_of(low)[0]
    assert np.array_equal(rescued, low_label == low_label[pet.TransformPhysicalPointToIndex(SPHERES["C"][0])[::-1]])
