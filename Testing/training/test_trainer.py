"""A 3-step training run lowers the loss; resume and Ctrl-C continue exactly; evaluate writes its reports.

The full network at 96^3 costs ~1-3 s per training step on a 2-core CPU, so the runs share work: run A
(3 steps, a checkpoint after every step) is reused by the resume, interruption and evaluation tests.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from veloxseg_train.checkpoint import load_checkpoint
from veloxseg_train.train_config import load_config
from veloxseg_train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "Training" / "configs" / "smoke.toml"


def _config(**changes):
    config = load_config(SMOKE)
    config.val_every = 3  # validate once, at the end: keeps the test short
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def run_a(tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    summary = Trainer(_config(), out_dir=out, data_dir=tiny_prepared, log=lambda m: None).run()
    return out, summary


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_same_optimizer(a: dict, b: dict):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][name]), (index, name)


def test_three_steps_lower_the_loss_and_write_everything(run_a):
    out, summary = run_a
    assert summary["status"] == "finished" and summary["global_step"] == 3
    steps = _rows(out / "log_steps.csv")
    losses = [float(r["loss"]) for r in steps]
    assert len(losses) == 3 and losses[-1] < losses[0]
    epochs = _rows(out / "log_epochs.csv")
    assert [r["epoch"] for r in epochs] == ["1", "2", "3"]
    assert epochs[-1]["val_dice"] != "" and epochs[0]["val_dice"] == ""
    for name in ("plots/losses.png", "plots/validation.png", "config.toml", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/epoch_0001.pt"):
        assert (out / name).is_file(), name
    payload = load_checkpoint(out / "checkpoints" / "last.pt")
    assert payload["extra"]["spacing_xyz_mm"] == [2.0, 2.0, 3.0]
    assert payload["normalization"]["CT"]["std"] == 400.0
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == 3


def test_resume_restores_everything_and_continues_exactly(run_a, tiny_prepared, tmp_path):
    out_a, _ = run_a
    checkpoint = out_a / "checkpoints" / "epoch_0002.pt"
    saved = load_checkpoint(checkpoint)
    state = saved["extra"]["training_state"]

    trainer = Trainer(_config(), out_dir=tmp_path, data_dir=tiny_prepared, resume=checkpoint, log=lambda m: None)
    trainer.setup()
    _assert_same_tensors(trainer.model.state_dict(), saved["state_dict"])
    _assert_same_optimizer(trainer.optimizer.state_dict(), state["optimizer"])
    assert trainer.scheduler.state_dict() == state["scheduler"]
    assert (trainer.epoch, trainer.step_in_epoch, trainer.global_step) == (2, 0, 2)
    assert torch.equal(torch.get_rng_state(), state["rng"][0]["torch"])
    assert trainer.rng.bit_generator.state == state["rng"][0]["numpy_generator"]

    summary = trainer.run()  # one more step: must land exactly where the uninterrupted run did
    assert summary["global_step"] == 3
    final_a = load_checkpoint(out_a / "checkpoints" / "last.pt")
    final_b = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    _assert_same_tensors(final_b["state_dict"], final_a["state_dict"])
    _assert_same_optimizer(final_b["extra"]["training_state"]["optimizer"],
                           final_a["extra"]["training_state"]["optimizer"])
    assert final_b["extra"]["training_state"]["scheduler"] == final_a["extra"]["training_state"]["scheduler"]


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to itself")
def test_ctrl_c_saves_a_checkpoint_at_a_step_boundary(run_a, tiny_prepared, tmp_path):
    out_a, _ = run_a
    trainer = Trainer(_config(), out_dir=tmp_path, data_dir=tiny_prepared, log=lambda m: None)
    trainer.on_step = lambda t: os.kill(os.getpid(), signal.SIGINT) if t.global_step == 1 else None
    summary = trainer.run()
    assert summary["status"] == "interrupted" and summary["global_step"] == 1
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["extra"]["training_state"]["global_step"] == 1
    reference = load_checkpoint(out_a / "checkpoints" / "epoch_0001.pt")
    _assert_same_tensors(saved["state_dict"], reference["state_dict"])


def test_init_weights_starts_from_a_checkpoint_with_a_fresh_optimiser(run_a, tiny_prepared, tmp_path):
    out_a, _ = run_a
    weights = out_a / "checkpoints" / "last.pt"
    trainer = Trainer(_config(init_weights=str(weights)), out_dir=tmp_path, data_dir=tiny_prepared,
                      log=lambda m: None)
    trainer.setup()
    _assert_same_tensors(trainer.model.state_dict(), load_checkpoint(weights)["state_dict"])
    assert trainer.global_step == 0 and not trainer.optimizer.state_dict()["state"]


def test_init_weights_from_other_data_is_refused(run_a, tiny_prepared, tmp_path):
    from veloxseg_train.checkpoint import model_from_checkpoint, save_checkpoint
    from veloxseg_train.trainer import TrainingError

    out_a, _ = run_a
    payload = load_checkpoint(out_a / "checkpoints" / "last.pt")
    other = dict(payload["normalization"], PET={**payload["normalization"]["PET"], "std": 9.0})
    path = save_checkpoint(tmp_path / "other.pt", model_from_checkpoint(payload), other)
    trainer = Trainer(_config(init_weights=str(path)), out_dir=tmp_path / "run", data_dir=tiny_prepared,
                      log=lambda m: None)
    with pytest.raises(TrainingError, match="normalisation"):
        trainer.setup()


def test_evaluate_checkpoint_and_onnx(run_a, tiny_prepared, tmp_path):
    from veloxseg_train.evaluate import BASELINES, evaluate

    out_a, _ = run_a
    summary = evaluate(out_a / "checkpoints" / "last.pt", tiny_prepared, tmp_path / "pt", threads=2,
                       log=lambda m: None)
    rows = _rows(tmp_path / "pt" / "per_case.csv")
    assert {r["method"] for r in rows} == {"model", *BASELINES}
    assert {r["case"] for r in rows} == {"train_a", "val_a", "test_free"}
    assert summary["all/model"]["cases"] == 3 and summary["all/suv2.5"]["dice_pos"] > 0.2
    assert (tmp_path / "pt" / "summary.csv").is_file()

    # An ONNX model through the engine: a hand-built graph that marks SUV > 4 must score like the
    # SUV >= 4.0 baseline on the same cases (same grids, same voxels).
    sys.path.insert(0, str(ROOT / "Testing" / "helpers"))
    import onnx_models

    manifest = onnx_models.build_threshold_model(tmp_path / "onnx", suv_threshold=4.0,
                                                 spacing_xyz_mm=(2.0, 2.0, 3.0))
    summary = evaluate(manifest, tiny_prepared, tmp_path / "onnx_eval", split="val", threads=1,
                       log=lambda m: None)
    assert summary["all/model"]["cases"] == 1
    assert summary["all/model"]["dice"] == pytest.approx(summary["all/suv4.0"]["dice"], abs=1e-6)
