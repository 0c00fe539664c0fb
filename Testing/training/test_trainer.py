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

import numpy as np
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


def test_hot_threshold_is_the_engines_normalisation_of_the_suv():
    """One normalisation formula: the hard-negative threshold is the SUV put through the engine's normalize,
    which made the volumes, so a voxel of exactly that SUV compares equal to it (and clipping matches)."""
    from types import SimpleNamespace

    from VeloxSegSlicerLib.engine.inference.preprocess import normalize

    params = {"clip_low": 0.0, "clip_high": 30.0, "mean": 0.79686, "std": 1.46814}
    trainer = SimpleNamespace(dataset=SimpleNamespace(normalization={"PET": params}))
    suvs = np.array([-1.0, 0.0, 2.5, 2.7, 29.9, 45.0], np.float32)
    voxels = normalize(suvs, params)
    assert [Trainer._normalised_pet(trainer, float(suv)) for suv in suvs] == voxels.tolist()


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


# --- hard-negative mining and the speed switches (issue 12) -------------------------------------------------

MINING = dict(epochs=2, mine_every=1, mine_after=0, mine_fraction=1.0, val_split="")  # no validation: faster


def _counting_draws(trainer):
    """Count the crops taken from the mined pool (HardNegativePool.draw runs for those only)."""
    trainer.mined_draws = 0
    draw = trainer.mined.draw

    def counted(rng):
        trainer.mined_draws += 1
        return draw(rng)

    trainer.mined.draw = counted
    return trainer


@pytest.fixture(scope="module")
def run_mining(tiny_prepared, tmp_path_factory):
    """2 steps, mining after each; from step 2 on every crop is centred on a mined false positive."""
    out = tmp_path_factory.mktemp("run_mining")
    logs = []
    trainer = Trainer(_config(**MINING), out_dir=out, data_dir=tiny_prepared, log=logs.append)
    trainer.setup()
    _counting_draws(trainer)
    summary = trainer.run()
    return out, summary, logs, trainer.mined_draws


def test_mining_fills_the_pool_and_its_crops_are_used(run_mining):
    out, summary, logs, mined_draws = run_mining
    assert summary["status"] == "finished" and summary["global_step"] == 2
    assert sum("mined train_a" in line for line in logs) == 2  # after steps 1 and 2
    assert mined_draws == 1  # step 1: empty pool, ordinary crop; step 2: a mined crop
    for name in ("epoch_0001.pt", "last.pt"):
        mined = load_checkpoint(out / "checkpoints" / name)["extra"]["training_state"]["mined"]
        assert list(mined) == ["0"] and mined["0"].numel() > 0  # the untrained model calls lesions everywhere


def test_resume_with_mining_continues_exactly(run_mining, tiny_prepared, tmp_path):
    out, _, _, _ = run_mining
    checkpoint = out / "checkpoints" / "epoch_0001.pt"
    saved = load_checkpoint(checkpoint)["extra"]["training_state"]["mined"]
    trainer = Trainer(_config(**MINING), out_dir=tmp_path, data_dir=tiny_prepared, resume=checkpoint,
                      log=lambda m: None)
    trainer.setup()
    assert list(trainer.mined.entries) == [int(k) for k in saved]
    for key, value in saved.items():
        assert torch.equal(torch.from_numpy(trainer.mined.entries[int(key)]), value)
    _counting_draws(trainer)
    summary = trainer.run()
    assert summary["global_step"] == 2 and trainer.mined_draws == 1  # the restored pool feeds step 2
    final_a = load_checkpoint(out / "checkpoints" / "last.pt")
    final_b = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    _assert_same_tensors(final_b["state_dict"], final_a["state_dict"])
    _assert_same_tensors(final_b["extra"]["training_state"]["mined"], final_a["extra"]["training_state"]["mined"])


def test_a_restored_pool_that_does_not_fit_the_data_is_forgotten(run_mining, tiny_prepared, tmp_path):
    """Resumed on regenerated data, a mined voxel may lie outside its volume's (now smaller) grid: that volume
    is dropped from the pool and an ordinary crop taken, instead of the run stopping."""
    out, _, _, _ = run_mining
    trainer = Trainer(_config(**MINING), out_dir=tmp_path, data_dir=tiny_prepared,
                      resume=out / "checkpoints" / "epoch_0001.pt", log=lambda m: None)
    trainer.setup()
    trainer.mined.entries[0] = np.array([10**8], dtype=np.int32)  # beyond any test volume
    _counting_draws(trainer)
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["global_step"] == 2
    final = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["extra"]["training_state"]["mined"]
    assert all(int(v.max()) < 10**8 for v in final.values())  # re-mined, not the stale voxel


def test_speed_switches_give_the_same_losses(tiny_prepared, tmp_path):
    # Dropout off: channels-last tensors take their dropout masks in another element order, so with dropout
    # the two runs are equivalent but not equal.
    no_dropout = {"attn_drop": 0.0, "proj_drop": 0.0, "conv_drop": 0.0}
    losses = {}
    for fast in (False, True):
        trainer = Trainer(_config(fused_optimizer=fast, channels_last=fast, model_overrides=no_dropout),
                          out_dir=tmp_path / str(fast), data_dir=tiny_prepared, log=lambda m: None)
        trainer.setup()
        assert bool(trainer.optimizer.defaults.get("fused")) == fast
        # a kernel whose layout differs between the formats (several input channels, spatial extent)
        conv = next(p for p in trainer.model.parameters() if p.dim() == 5 and p.shape[1] > 1 and p.shape[2] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) == fast
        steps = []
        for _ in range(2):
            images, labels = trainer.make_batch([0])
            steps.append(trainer.train_step(images, labels))
        losses[fast] = torch.stack(steps)
    # same crops, same initial weights, same update rule: equal up to float rounding
    assert torch.allclose(losses[True], losses[False], rtol=1e-4, atol=1e-6), (losses[True], losses[False])
    assert not torch.equal(losses[False][0], losses[False][1])  # the second step saw updated weights


def test_evaluate_checkpoint_and_onnx(run_a, tiny_prepared, tmp_path):
    from veloxseg_train.evaluate import BASELINES, TableRule, evaluate

    out_a, _ = run_a
    rules = [TableRule(0.0, 0.0), TableRule(0.0, 1000.0)]  # the model's own row again; nothing reaches SUV 1000
    summary = evaluate(out_a / "checkpoints" / "last.pt", tiny_prepared, tmp_path / "pt", threads=2,
                       log=lambda m: None, rules=rules)
    rows = _rows(tmp_path / "pt" / "per_case.csv")
    same, none = "model[ml>=0,suvmax>=0]", "model[ml>=0,suvmax>=1000]"
    assert {r["method"] for r in rows} == {"model", same, none, *BASELINES}
    assert {r["case"] for r in rows} == {"train_a", "val_a", "test_free"}
    assert summary["all/model"]["cases"] == 3 and summary["all/suv2.5"]["dice_pos"] > 0.2
    assert (tmp_path / "pt" / "summary.csv").is_file()
    by_method = {(r["case"], r["method"]): r for r in rows}
    for case in ("train_a", "val_a", "test_free"):
        model_row, same_row, none_row = (by_method[case, m] for m in ("model", same, none))
        assert {k: v for k, v in same_row.items() if k not in ("method", "seconds")} == \
            {k: v for k, v in model_row.items() if k not in ("method", "seconds")}
        assert none_row["reported_lesions"] == "0" and none_row["fp_voxels"] == "0"
        assert int(model_row["true_lesions"]) == (0 if case == "test_free" else 1)
    for key in ("lesion_sensitivity", "reported_lesions", "reported_lesions_neg"):
        assert key in summary["all/model"]
    assert summary[f"all/{none}"]["reported_lesions"] == 0 and summary[f"all/{none}"]["lesion_sensitivity"] == 0
    saved = json.loads((tmp_path / "pt" / "summary.json").read_text())
    assert saved["rules"] == [same, none] and saved["min_suv_max"] == 0.0

    # An ONNX model through the engine: a hand-built graph that marks SUV > 4 must score like the
    # SUV >= 4.0 baseline on the same cases (same grids, same voxels).
    sys.path.insert(0, str(ROOT / "Testing" / "helpers"))
    import onnx_models

    manifest = onnx_models.build_threshold_model(tmp_path / "onnx", suv_threshold=4.0,
                                                 spacing_xyz_mm=(2.0, 2.0, 3.0))
    summary = evaluate(manifest, tiny_prepared, tmp_path / "onnx_eval", split="val", threads=1,
                       log=lambda m: None, rules=[TableRule(0.0, 6.0)])
    assert summary["all/model"]["cases"] == 1
    assert summary["all/model"]["dice"] == pytest.approx(summary["all/suv4.0"]["dice"], abs=1e-6)
    # The val case holds a lesion (SUV 9) and a hot organ (SUV 5) above the model's SUV 4: the rule
    # "SUVmax >= 6" reports the lesion only, from the same network output.
    rows = {r["method"]: r for r in _rows(tmp_path / "onnx_eval" / "per_case.csv")}
    model_row, rule_row = rows["model"], rows["model[ml>=0,suvmax>=6]"]
    assert (model_row["reported_lesions"], model_row["found_lesions"]) == ("2", "1")
    assert (rule_row["reported_lesions"], rule_row["found_lesions"], rule_row["fp_voxels"]) == ("1", "1", "0")
    assert float(rule_row["dice"]) > float(model_row["dice"])
    # --min-suv-max applies the same rule to the "model" row itself
    again = evaluate(manifest, tiny_prepared, tmp_path / "onnx_min_suv", split="val", threads=1,
                     log=lambda m: None, min_suv_max=6.0)
    assert again["all/model"]["dice"] == pytest.approx(summary["all/model[ml>=0,suvmax>=6]"]["dice"])
    assert again["all/model"]["reported_lesions"] == 1


def test_compact_state_is_small_and_resumes_with_a_rewarmed_lr(run_a, tiny_prepared, tmp_path):
    from veloxseg_train.run_state import REWARM_STEPS, compact_file

    out_a, _ = run_a
    full = out_a / "checkpoints" / "epoch_0002.pt"
    compact = compact_file(full, tmp_path / "state.pt")
    assert compact.stat().st_size < 0.35 * full.stat().st_size  # no moments, half-size weights
    payload = load_checkpoint(compact)
    state = payload["extra"]["training_state"]
    assert state["compact"] and "optimizer" not in state and "mined" not in state
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())

    messages = []
    trainer = Trainer(_config(), out_dir=tmp_path / "run", data_dir=tiny_prepared, resume=compact,
                      log=messages.append)
    trainer.setup()
    saved = load_checkpoint(full)
    for key, value in trainer.model.state_dict().items():  # float32 again, within float16 rounding
        assert value.dtype == saved["state_dict"][key].dtype
        assert torch.allclose(value, saved["state_dict"][key], rtol=1e-3, atol=1e-4), key
    assert trainer.optimizer.state_dict()["state"] == {}  # fresh moments
    assert (trainer.epoch, trainer.global_step) == (2, 2)
    assert any("compact state" in m for m in messages)
    scheduled = trainer.optimizer.param_groups[0]["lr"]
    used = []
    original_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (used.append(trainer.optimizer.param_groups[0]["lr"]),
                                              original_step(*a, **k))[1]
    summary = trainer.run()
    assert summary["global_step"] == 3
    assert used == [pytest.approx(scheduled / REWARM_STEPS)]  # the first step after the resume is ramped


def test_organ_run_warm_starts_from_a_model_without_organ_head(run_a, tiny_prepared, tmp_path):
    out_a, _ = run_a
    messages = []
    config = _config(init_weights=str(out_a / "checkpoints" / "last.pt"), model_overrides={"n_organs": 16},
                     organ_weight=0.5, amp="bf16")
    trainer = Trainer(config, out_dir=tmp_path, data_dir=tiny_prepared, log=messages.append)
    summary = trainer.run()
    assert summary["global_step"] == 3
    assert any("has no organ head" in m for m in messages)
    assert trainer.amp_dtype == torch.bfloat16
    rows = _rows(tmp_path / "log_steps.csv")
    assert all(float(r["organ"]) == 0.0 for r in rows)  # the tiny set has no organ maps: lesion output only
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    bad = _config(init_weights=str(out_a / "checkpoints" / "last.pt"), model_overrides={"n_organs": 5})
    with pytest.raises(Exception, match="n_organs is 5"):
        Trainer(bad, out_dir=tmp_path / "bad", data_dir=tiny_prepared, log=lambda m: None).setup()
