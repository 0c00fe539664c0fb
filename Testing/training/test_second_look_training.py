"""Calibration sweep, candidate tables and the second-look classifier (training side), end to end with the
engine's tiny threshold model (logit difference = SUV - 4) on the tiny prepared data set: a lesion (SUV 9)
and a hot organ (SUV 5, not a lesion) per case."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "engine"))

from engine_helpers import build_threshold_onnx, write_manifest  # noqa: E402

from veloxseg_train import second_look as sl  # noqa: E402
from veloxseg_train.cli import main  # noqa: E402
from VeloxSegSlicerLib.engine import SegmentOptions, load_model, segment_study  # noqa: E402
from VeloxSegSlicerLib.engine.inference.candidates import FEATURE_NAMES  # noqa: E402
from VeloxSegSlicerLib.engine.inference.manifest import file_sha256, load_manifest  # noqa: E402


@pytest.fixture()
def threshold_model(tmp_path) -> Path:
    return write_manifest(build_threshold_onnx(tmp_path / "model" / "threshold.onnx"))


def test_the_sweep_picks_the_known_optimum():
    # lesion case: 100 lesion voxels at logit 1.0 and 100 others at 0.2 -> Dice 1 for thresholds in [0.2, 1.0)
    lesion_logits = np.concatenate([np.full(100, 1.0), np.full(100, 0.2)]).astype(np.float32)
    truth = np.arange(200) < 100
    # lesion-free case: 50 voxels at -0.5 (1 mL each): false positives below -0.5
    free_logits = np.concatenate([np.full(50, -0.5), np.full(500, -9.0)]).astype(np.float32)
    thresholds = sorted(sl.logit(p) for p in sl.DEFAULT_PROBABILITIES)
    cases = [sl.CaseLogits.of("lesion", lesion_logits, truth, 0.01, thresholds[0]),
             sl.CaseLogits.of("free", free_logits, np.zeros(550, bool), 1.0, thresholds[0])]
    rows = sl.sweep(cases, thresholds, penalty_per_ml=0.01)
    by_t = {round(r["probability"], 4): r for r in rows}
    assert by_t[0.5]["dice_pos"] == pytest.approx(2 * 100 / (2 * 100 + 100))
    assert by_t[0.3]["fp_ml_neg"] == pytest.approx(50.0) and by_t[0.4]["fp_ml_neg"] == 0.0
    assert by_t[0.3]["objective"] == pytest.approx(by_t[0.3]["dice_pos"] - 0.5)
    chosen = sl.best_row(rows)
    # every threshold in [0.2, 1.0) scores 1; the one nearest 0 is probability 0.55 (logit 0.2007)
    assert chosen["probability"] == pytest.approx(0.55) and chosen["objective"] == pytest.approx(1.0)
    assert chosen["threshold_logit"] > 0.2


def test_calibrate_writes_the_table_and_the_manifest_only(tiny_prepared, threshold_model, tmp_path):
    onnx_path = threshold_model.with_suffix(".onnx")
    before = file_sha256(onnx_path)
    out = tmp_path / "calibration"
    assert main(["calibrate", "--model", str(threshold_model), "--cases", str(tiny_prepared), "--split", "",
                 "--out", str(out), "--threads", "1", "--write-manifest", str(threshold_model)]) == 0
    with (out / "calibration.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(sl.DEFAULT_PROBABILITIES)
    record = json.loads((out / "calibration.json").read_text())["lesion_threshold"]
    # the hot organ (logit 1) is gone above the chosen threshold, the lesion (logit 5) stays
    assert 1.0 < record["logit"] < 5.0 and record["fp_ml_neg"] == 0.0 and record["dice_pos"] > 0.9
    assert record["dice_pos"] > record["at_0.5"]["dice_pos"]
    manifest = load_manifest(threshold_model)
    assert manifest.lesion_threshold == record["logit"]
    assert file_sha256(onnx_path) == before == manifest.onnx_sha256


def test_candidates_classifier_and_engine_end_to_end(tiny_prepared, threshold_model, tmp_path):
    table = tmp_path / "features.csv"
    assert main(["candidates", "--model", str(threshold_model), "--cases", str(tiny_prepared), "--split", "",
                 "--out", str(table), "--threads", "1"]) == 0
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    description = json.loads(table.with_suffix(".json").read_text())
    assert description["feature_names"] == list(FEATURE_NAMES)  # the threshold model has no organ output
    assert description["true_lesions"] == description["true_lesions_in_candidates"] == 2
    # per case the hot organ (negative) and, in train_a and val_a, the lesion (positive)
    assert sorted((r["case"], r["label"]) for r in rows) == [
        ("test_free", "0"), ("train_a", "0"), ("train_a", "1"), ("val_a", "0"), ("val_a", "1")]
    for row in rows:
        assert float(row["suv_max"]) == pytest.approx(9.0 if row["label"] == "1" else 5.0, abs=0.6)

    classifier = tmp_path / "model" / "second_look.onnx"
    assert main(["train-classifier", str(table), "--out", str(classifier), "--hidden", "0", "--epochs", "200",
                 "--attach", str(threshold_model)]) == 0
    meta = json.loads(classifier.with_suffix(".json").read_text())
    assert meta["training"]["cv_auc"] == 1.0 and meta["onnx_sha256"] == file_sha256(classifier)
    model = load_model(threshold_model)
    assert model.second_look is not None
    # the case with a lesion: the lesion stays, the organ goes
    from veloxseg_train.evaluate import iter_cases

    case = next(c for c in iter_cases(tiny_prepared, "val"))
    options = SegmentOptions(min_lesion_ml=0.0, min_suv_max=0.0)
    result = segment_study(case.ct, case.pet, model, options)
    assert result.second_look_candidates == 2 and result.second_look_kept == 1
    assert len(result.lesions) == 1 and result.lesions[0].suv_max == pytest.approx(9.0, abs=0.5)


def test_the_classifier_round_trip_on_a_separable_table(tmp_path, threshold_model):
    rng = np.random.default_rng(0)
    names = list(FEATURE_NAMES) + ["organ:liver"]
    rows = []
    for case in range(6):
        for index in range(20):
            label = index % 2
            features = rng.normal(0, 1, len(names))
            features[names.index("suv_max")] = (8.0 if label else 3.0) + rng.normal(0, 0.5)
            features[names.index("ct_hu_mean")] = rng.normal(40, 30)
            rows.append({"case": f"c{case}", "source": "t", "candidate": index + 1, "voxels": 10,
                         "overlap_voxels": 10 * label, "label": label, **dict(zip(names, features))})
    table = tmp_path / "table.csv"
    sl.write_rows(table, ["case", "source", "candidate", "voxels", "overlap_voxels", "label", *names], rows)
    table.with_suffix(".json").write_text(json.dumps({
        "model": "m", "cases": "c", "split": "train", "candidate_threshold": {"logit": -1.0, "probability": 0.27},
        "feature_names": names, "label_rule": "test", "cases_used": 6}))
    out = tmp_path / "cls" / "second_look.onnx"
    meta = sl.train_classifier([table], out, hidden=8, folds=3, epochs=200, log=lambda *_: None)
    assert meta["training"]["cv_auc"] > 0.99 and meta["training"]["cv_folds"] == 3
    assert meta["training"]["cv_at_threshold"]["positives_kept"] >= 0.95
    # the engine's runtime scores the same table as the trained network
    from VeloxSegSlicerLib.engine.inference.manifest import _second_look
    from VeloxSegSlicerLib.engine.inference.second_look import SecondLook

    manifest = _second_look(tmp_path / "cls" / "model.json", {"second_look": "second_look.json"}, 0.0)
    assert manifest.organ_names == ("liver",) and manifest.score_threshold == meta["score_threshold"]
    features, labels, _, _ = sl.read_table(table)
    scores = SecondLook(manifest).score(features)
    assert sl.auc(scores, labels) > 0.99
    kept = scores >= manifest.score_threshold
    assert kept[labels == 1].mean() >= 0.95 and kept[labels == 0].mean() < 0.1


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(40), 1)  # with ties
    labels = (rng.random(40) > 0.5).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert sl.auc(scores, labels) == pytest.approx(pairwise)
    assert math.isnan(sl.auc(scores, np.zeros(40, int)))
