"""Metrics against hand-worked cases, including the empty-set conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from veloxseg_train.metrics import (
    case_metrics,
    dice,
    false_negative_volume,
    false_positive_volume,
    hd95,
    lesion_counts,
    precision,
    recall,
    summarize,
)

SPACING = (3.0, 2.0, 2.0)  # z, y, x mm
VOXEL_ML = 12.0 / 1000


def _mask(shape=(10, 10, 10), *voxels):
    mask = np.zeros(shape, dtype=bool)
    for v in voxels:
        mask[v] = True
    return mask


def test_overlap_metrics_by_hand():
    pred = _mask((4, 4, 4), (0, 0, 0), (0, 0, 1))
    truth = _mask((4, 4, 4), (0, 0, 1), (0, 0, 2), (0, 0, 3))
    assert dice(pred, truth) == pytest.approx(2 * 1 / 5)
    assert precision(pred, truth) == pytest.approx(1 / 2)
    assert recall(pred, truth) == pytest.approx(1 / 3)


def test_empty_set_conventions():
    empty = np.zeros((4, 5, 6), dtype=bool)
    one = _mask((4, 5, 6), (1, 1, 1))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, SPACING) == 0.0
    assert math.isnan(precision(empty, one)) and math.isnan(recall(one, empty))
    assert dice(empty, one) == 0.0 and dice(one, empty) == 0.0
    diagonal = math.sqrt((4 * 3) ** 2 + (5 * 2) ** 2 + (6 * 2) ** 2)
    assert hd95(one, empty, SPACING) == pytest.approx(diagonal)
    assert hd95(empty, one, SPACING) == pytest.approx(diagonal)


def test_hd95_single_voxels_uses_spacing():
    pred = _mask((5, 5, 8), (2, 2, 1))
    truth = _mask((5, 5, 8), (2, 2, 4))  # 3 voxels along x at 2 mm
    assert hd95(pred, truth, SPACING) == pytest.approx(6.0)
    truth_z = _mask((5, 5, 8), (4, 2, 1))  # 2 voxels along z at 3 mm
    assert hd95(pred, truth_z, SPACING) == pytest.approx(6.0)


def _brute_force_hd95(pred, truth, spacing):
    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1))) * spacing

    d = cdist(surface(pred), surface(truth))
    return np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95)


def test_hd95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    for _ in range(3):
        pred = ndimage.binary_dilation(rng.random((20, 24, 22)) > 0.995, iterations=2)
        truth = ndimage.binary_dilation(rng.random((20, 24, 22)) > 0.995, iterations=2)
        assert hd95(pred, truth, SPACING) == pytest.approx(_brute_force_hd95(pred, truth, np.array(SPACING)))


def test_autopet_false_positive_and_false_negative_volumes():
    truth = np.zeros((10, 10, 10), dtype=bool)
    truth[1:3, 1:3, 1:3] = True  # 8 voxels, touched by the prediction
    truth[6:8, 6:8, 6] = True  # 4 voxels, missed entirely -> FN
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:4] = True  # overlaps the first lesion: not a false positive (even its extra voxels)
    pred[7, 1, 1:6] = True  # 5 voxels far from any lesion -> FP
    assert false_positive_volume(pred, truth, VOXEL_ML) == pytest.approx(5 * VOXEL_ML)
    assert false_negative_volume(pred, truth, VOXEL_ML) == pytest.approx(4 * VOXEL_ML)
    metrics = case_metrics(pred, truth, SPACING)
    assert metrics["fp_volume_ml"] == pytest.approx(0.06) and metrics["fn_volume_ml"] == pytest.approx(0.048)
    assert metrics["tp_voxels"] == 1 and metrics["true_volume_ml"] == pytest.approx(12 * VOXEL_ML)


def test_components_are_18_connected():
    # Two predicted voxels sharing an edge form one component (overlapping the truth: no FP); two sharing
    # only a corner are separate (the corner one is an FP).
    truth = _mask((5, 5, 5), (1, 1, 1))
    edge = _mask((5, 5, 5), (1, 1, 1), (2, 2, 1))
    corner = _mask((5, 5, 5), (1, 1, 1), (2, 2, 2))
    assert false_positive_volume(edge, truth, 1.0) == 0.0
    assert false_positive_volume(corner, truth, 1.0) == 1.0


def test_summary_skips_undefined_values_and_splits_positive_cases():
    positive = case_metrics(_mask((4, 4, 4), (1, 1, 1)), _mask((4, 4, 4), (1, 1, 1)), SPACING)
    negative = case_metrics(_mask((4, 4, 4), (0, 0, 0)), np.zeros((4, 4, 4), bool), SPACING)
    summary = summarize([positive, negative])
    assert summary["cases"] == 2 and summary["positive_cases"] == 1
    assert summary["dice_pos"] == 1.0 and summary["dice"] == 0.5
    assert summary["recall"] == 1.0  # the lesion-free case has no recall
    assert summary["fp_volume_ml_neg"] == pytest.approx(VOXEL_ML)


# --- lesion-level counts and the lesion-table rule (issue 12) ----------------------------------------------


def test_lesion_counts_by_hand():
    truth = np.zeros((10, 10, 10), bool)
    truth[1:3, 1:3, 1:3] = True  # lesion A: found
    truth[6:8, 6:8, 6] = True  # lesion B: missed
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:4] = True  # touches A (one component, however much it spills over)
    pred[8, 1, 1:6] = True  # a false positive
    pred[5, 8, 8] = True  # another, on its own
    assert lesion_counts(pred, truth) == {"true_lesions": 2, "found_lesions": 1, "pred_components": 3}
    assert lesion_counts(truth, truth) == {"true_lesions": 2, "found_lesions": 2, "pred_components": 2}
    empty = np.zeros_like(truth)
    assert lesion_counts(empty, empty) == {"true_lesions": 0, "found_lesions": 0, "pred_components": 0}
    # 18-connectivity: an edge joins two voxels into one lesion, a corner does not
    assert lesion_counts(empty, _mask((10, 10, 10), (1, 1, 1), (2, 2, 1)))["true_lesions"] == 1
    assert lesion_counts(empty, _mask((10, 10, 10), (1, 1, 1), (2, 2, 2)))["true_lesions"] == 2
    assert set(lesion_counts(pred, truth)) <= set(case_metrics(pred, truth, SPACING))


def _row(pred_voxels, truth_voxels, reported=None, shape=(12, 12, 12)):
    row = case_metrics(_mask(shape, *pred_voxels), _mask(shape, *truth_voxels), SPACING)
    if reported is not None:
        row["reported_lesions"] = reported
    return row


def test_lesion_sensitivity_is_pooled_and_reported_lesions_are_split_by_kind():
    rows = [
        _row([(1, 1, 1)], [(1, 1, 1), (8, 8, 8)], reported=3),  # 1 of 2 lesions found
        _row([(1, 1, 1), (5, 5, 5), (9, 1, 1)], [(1, 1, 1), (5, 5, 5), (9, 1, 1)], reported=4),  # 3 of 3
        _row([(4, 4, 4)], [], reported=2),  # lesion-free case
        _row([], [], reported=0),  # lesion-free case
    ]
    summary = summarize(rows)
    assert summary["lesion_sensitivity"] == pytest.approx(4 / 5)  # pooled, not the mean of 1/2 and 3/3
    assert summary["reported_lesions"] == pytest.approx((3 + 4 + 2 + 0) / 4)
    assert summary["reported_lesions_neg"] == pytest.approx(1.0)
    # without a reported count (a baseline), the predicted components stand in
    for row in rows:
        del row["reported_lesions"]
    summary = summarize(rows)
    assert summary["reported_lesions"] == pytest.approx((1 + 3 + 1 + 0) / 4)
    assert summary["reported_lesions_neg"] == pytest.approx(0.5)
    assert math.isnan(summarize([_row([], [])])["lesion_sensitivity"])  # no lesions: undefined


def test_summary_of_rows_without_lesion_counts_has_no_lesion_keys():
    row = {key: 0.0 for key in ("dice", "hd95_mm", "precision", "recall", "fp_volume_ml", "fn_volume_ml",
                                "true_volume_ml")}
    assert "lesion_sensitivity" not in summarize([row]) and "reported_lesions" not in summarize([row])


def test_table_rule_keeps_lesions_meeting_both_thresholds():
    from types import SimpleNamespace

    from veloxseg_train.evaluate import TableRule, apply_rule

    ids = np.zeros((6, 6, 6), np.uint16)
    ids[0, 0, :2], ids[2, 2, 2], ids[4, 4, :3] = 1, 2, 3
    lesions = [SimpleNamespace(id=1, mtv_ml=1.0, suv_max=2.0), SimpleNamespace(id=2, mtv_ml=0.2, suv_max=9.0),
               SimpleNamespace(id=3, mtv_ml=0.5, suv_max=2.5)]
    rule = TableRule(min_ml=0.5, min_suv_max=2.5)
    assert rule.name == "model[ml>=0.5,suvmax>=2.5]"
    mask, count = apply_rule(ids, lesions, rule)
    assert count == 1 and np.array_equal(mask, ids == 3)  # at the thresholds counts as meeting them
    mask, count = apply_rule(ids, lesions, TableRule())
    assert count == 3 and np.array_equal(mask, ids > 0)
    mask, count = apply_rule(ids, lesions, TableRule(0.0, 100.0))
    assert count == 0 and mask.dtype == bool and not mask.any()
    assert apply_rule(ids, [], TableRule())[1] == 0


def test_evaluation_gets_every_lesion_from_the_engine(monkeypatch):
    # The engine lists only lesions of >= 0.1 mL and SUVmax >= 2 by default; evaluate applies its rules itself,
    # so it must ask for all of them (it once scored the default rule as "every lesion").
    from types import SimpleNamespace

    import SimpleITK as sitk

    import VeloxSegSlicerLib.engine as engine
    from veloxseg_train import evaluate as evaluation

    asked = {}

    def fake_segment_study(ct, pet, model, options):
        asked["options"] = options
        return SimpleNamespace(label_ct=sitk.Image(4, 4, 4, sitk.sitkUInt16), label_pet=None, lesions=[])

    monkeypatch.setattr(engine, "segment_study", fake_segment_study)
    image = sitk.Image(4, 4, 4, sitk.sitkFloat32)
    case = SimpleNamespace(name="c", ct=image, pet=image, label=sitk.Image(4, 4, 4, sitk.sitkUInt8))
    evaluation.predict_lesions(case, model=None, overlap=0.25, blending="gaussian")
    assert asked["options"].min_lesion_ml == 0 and asked["options"].min_suv_max == 0


@pytest.mark.parametrize("text", ["0.5", "a:b", "1:2:3", ""])
def test_evaluate_refuses_a_malformed_rule(tmp_path, capsys, text):
    from veloxseg_train.cli import main

    code = main(["evaluate", "--model", str(tmp_path / "missing.pt"), "--cases", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--rule", "0.5:2.5", "--rule", text])
    assert code == 2
    assert "expected ML:SUVMAX" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
