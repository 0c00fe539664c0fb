"""What a training run's checkpoint holds, and how a run starts again from one.

A checkpoint of a run (checkpoints/last.pt, epoch_NNNN.pt, best.pt) holds the model, optimiser, LR scheduler
and GradScaler states, the position (epoch, step within the epoch, global step), the running sums of the
current epoch, the best validation result, the mined hard-negative pool and the RNG states of python, numpy
(global and the sampler's Generator), torch and CUDA of every process. The volume order of an epoch is a
function of (seed, epoch) only, so a resumed run recomputes it and continues with the step it stopped before:
the same batches, the same dropout masks, the same updates. A compact state (run_state.py) lacks the
optimiser moments and the pool: the resumed run re-warms its learning rate instead.

The functions take the `Trainer` whose run they save or restore (its model, optimisation objects and
position attributes); `load_initial_weights` takes the model only.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import load_checkpoint, save_checkpoint
from .run_state import REWARM_STEPS, is_compact

if TYPE_CHECKING:
    from .trainer import Trainer

ORGAN_HEAD_PREFIX = "seg_decoder.organ_head."


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, wrong device, inconsistent resume); the message says why."""


# --------------------------------------------------------------------------- RNG streams
def capture_rng(generator: np.random.Generator) -> dict:
    """RNG states as tensors and plain containers (loadable with torch.load(weights_only=True))."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy_global": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "numpy_generator": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict, generator: np.random.Generator) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    generator.bit_generator.state = state["numpy_generator"]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- saving
def training_state(trainer: Trainer) -> dict:
    """Everything a resume needs besides the weights (collective under DDP: call on all ranks)."""
    rng = capture_rng(trainer.rng)
    if trainer.dist.world_size > 1:
        gathered: List[Optional[dict]] = [None] * trainer.dist.world_size
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]
    return {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "global_step": trainer.global_step,
        "best_metric": trainer.best_metric,
        "best_epoch": trainer.best_epoch,
        "last_val": dict(trainer.last_val),
        "epoch_sums": list(trainer.epoch_sums),
        "elapsed_seconds": trainer.elapsed(),
        "rng": rng_states,
        "world_size": trainer.dist.world_size,
        "mined": trainer.mined.state_dict(),
    }


def save_checkpoints(trainer: Trainer, names: List[str]) -> None:
    """Write checkpoints/<names[0]> and copy it to the other names (collective: call on all ranks)."""
    state = training_state(trainer)
    if not trainer.dist.is_main:
        return
    config = trainer.config
    n_val = len(trainer.val_store) if trainer.val_store else 0
    extra = {
        "training_state": state,
        "config": config.to_dict(),
        "seed": config.seed,
        "epochs": trainer.epoch,
        "steps": trainer.global_step,
        "val": dict(trainer.last_val),
        "data": f"prepared data set {trainer.data_dir}: {len(trainer.train_store)} training and {n_val} "
                f"validation cases",
        "spacing_xyz_mm": list(trainer.dataset.spacing_xyz_mm),  # the model grid the weights expect
        "train_cases": [c.name for c in trainer.train_store.cases],
    }
    folder = trainer.out_dir / "checkpoints"
    first = save_checkpoint(folder / names[0], trainer.model, trainer.dataset.normalization, extra)
    for name in names[1:]:
        tmp = folder / (name + ".tmp")
        shutil.copyfile(first, tmp)
        tmp.replace(folder / name)


# --------------------------------------------------------------------------- starting from a checkpoint
def load_initial_weights(model: torch.nn.Module, path: Path, normalization: dict, data_dir: Path,
                         log: Callable[[str], None]) -> None:
    """Start from earlier weights (a second stage of a run): model only, fresh optimiser and schedule."""
    payload = load_checkpoint(path)
    if payload.get("normalization") != normalization:
        raise TrainingError(f"init_weights {path} was trained with normalisation {payload.get('normalization')}"
                            f", but {data_dir} has {normalization}; use weights trained on the same prepared data")
    result = model.load_state_dict(payload["state_dict"], strict=False)
    # A model without an organ head may seed one with it: the new head starts from its initialisation.
    new_head = [k for k in result.missing_keys if k.startswith(ORGAN_HEAD_PREFIX)]
    missing = sorted(set(result.missing_keys) - set(new_head))
    if missing or result.unexpected_keys:
        raise TrainingError(f"init_weights {path} does not fit this model: missing {missing}"
                            f", unexpected {sorted(result.unexpected_keys)}")
    if new_head:
        log(f"init_weights {path} has no organ head; it starts from its initialisation.")
    steps = payload.get("extra", {}).get("steps")
    log(f"Initial weights from {path}" + (f" (trained {steps} steps)" if steps is not None else "") + ".")


def resume(trainer: Trainer, path: Path) -> None:
    """Put a set-up trainer where the checkpoint's run stopped: weights, optimisation, position, pool, RNGs."""
    payload = load_checkpoint(path)
    state = payload.get("extra", {}).get("training_state")
    if state is None:
        raise TrainingError(f"{path} has no training state (a weights-only checkpoint cannot be resumed)")
    normalization = trainer.dataset.normalization
    if payload.get("normalization") != normalization:
        raise TrainingError(f"{path} was trained with normalisation {payload.get('normalization')}, but "
                            f"{trainer.data_dir} has {normalization}; resume on the same data")
    stored_cases = payload["extra"].get("train_cases")
    if stored_cases is not None and stored_cases != [c.name for c in trainer.train_store.cases]:
        trainer.log("Warning: the training cases differ from the checkpoint's; the continuation is not exact.")
    compact = is_compact(state)
    trainer.model.load_state_dict(payload["state_dict"])  # a compact state's float16 weights are cast back
    _restore_optimisation(trainer, state, compact)
    _restore_position(trainer, state)
    trainer.mined.load_state_dict(state.get("mined", {}))  # a compact state has none: mined afresh
    _restore_rng_streams(trainer, state["rng"])
    note = f" (compact state: fresh optimiser moments, the LR ramps up over {REWARM_STEPS} steps)" if compact else ""
    trainer.log(f"Resumed from {path}: epoch {trainer.epoch}, step {trainer.step_in_epoch} of the epoch, "
                f"global step {trainer.global_step}{note}.")


def _restore_optimisation(trainer: Trainer, state: dict, compact: bool) -> None:
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    if compact:  # fresh AdamW moments: the LR ramps up again over the first steps (run_state.py)
        trainer.rewarm_from = int(state["global_step"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    fresh = dict(scheduler.lr_lambdas[0].__dict__)
    scheduler.load_state_dict(state["scheduler"])
    factor = scheduler.lr_lambdas[0]

    def follow_schedule() -> None:
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * factor(scheduler.last_epoch)

    if compact:  # the optimiser's groups still hold the start LR: put them at the schedule's position
        follow_schedule()
    if factor.__dict__ != fresh:
        # The recipe's length or LR changed (e.g. --epochs to extend a run): follow the new schedule
        # from here on instead of the checkpoint's, and say so, since the LR curve bends at this point.
        factor.__dict__.update(fresh)
        follow_schedule()
        trainer.log("Note: the LR schedule differs from the checkpoint's; continuing on the new one.")
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])


def _restore_position(trainer: Trainer, state: dict) -> None:
    trainer.epoch = int(state["epoch"])
    trainer.step_in_epoch = int(state["step_in_epoch"])
    trainer.global_step = int(state["global_step"])
    trainer.best_metric = float(state["best_metric"])
    trainer.best_epoch = int(state["best_epoch"])
    trainer.last_val = dict(state.get("last_val", {}))
    sums = [float(v) for v in state["epoch_sums"]]
    width = len(trainer.epoch_sums)  # the loss parts, then patches and seconds
    if len(sums) < width:  # a checkpoint from before the organ loss part: no organ sum
        sums = sums[:-2] + [0.0] * (width - len(sums)) + sums[-2:]
    trainer.epoch_sums = sums
    trainer.elapsed_before = float(state.get("elapsed_seconds", 0.0))


def _restore_rng_streams(trainer: Trainer, rng_states: list) -> None:
    rank, world = trainer.dist.rank, trainer.dist.world_size
    if len(rng_states) == world:
        restore_rng(rng_states[rank], trainer.rng)
        return
    trainer.log(f"Warning: checkpoint has RNG states of {len(rng_states)} processes, this run has {world}; "
                "re-seeding from the step number (not an exact continuation).")
    seed = trainer.config.seed + rank + trainer.global_step
    random.seed(seed)
    trainer.rng = np.random.default_rng([trainer.config.seed, rank, trainer.global_step])
    torch.manual_seed(seed)
