"""The SDKT training loop: set-up, steps, schedule, validation, logs, stopping, DDP.

One `Trainer` runs one process of a run. Under `torchrun` (WORLD_SIZE > 1) every process builds the same
model, takes its own share of the volumes each step (global batch = processes x volumes_per_step x
crops_per_volume), gradients are averaged by DistributedDataParallel, and rank 0 alone writes logs, plots and
checkpoints.

What a step trains on is crop_choice.py's job; what a checkpoint holds and how a run resumes exactly (the
same batches, dropout masks and updates as the uninterrupted run) is run_checkpoint.py's.

Stopping: Ctrl-C (SIGINT) or SIGTERM, or the wall-clock budget, stops the run after the step in flight and
saves checkpoints/last.pt (a second Ctrl-C aborts at once without saving). All processes agree on the stop
through the per-step all-reduce, so they stop at the same step.

Learning-rate schedule: one LambdaLR, linear warm-up for warmup_epochs then a half cosine down to eta_min at
the last epoch, changed once per epoch ("epoch", the reference) or once per step ("step", smoother for short
runs). The reference chains LambdaLR and CosineAnnealingLR in a way that runs epoch 10 at 1.1x the base LR;
that quirk is not reproduced.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from . import augment
from .crop_choice import CropChooser
from .data.organs import ORGAN_NAMES
from .losses import LossParts, SDKTLoss
from .metrics import json_safe
from .mining import HardNegativePool, mine_volumes, pick_volumes
from .model import VeloxSeg, VeloxSegConfig
from .plots import plot_run
from .run_checkpoint import TrainingError, load_initial_weights, resume, save_checkpoints
from .run_state import rewarm_factor, scaled_lr
from .sampling import CropSampler, epoch_plan
from .train_config import TrainConfig, dump_toml
from .training_data import VolumeStore, read_dataset
from .validation import plan_items, validate

PART_NAMES = LossParts._fields  # total, seg, ce, dice, recon, sdkt, organ
LOG_PARTS = ["loss", "seg", "ce", "dice", "recon", "sdkt", "organ"]  # PART_NAMES as the logs name them
STEP_COLUMNS = ["global_step", "epoch", "lr", *LOG_PARTS, "seconds"]
VAL_KEYS = ["dice", "dice_pos", "hd95_mm", "precision", "recall", "fp_volume_ml", "fn_volume_ml"]
PLOT_INTERVAL_S = 300.0
EPOCH_COLUMNS = (["epoch", "global_step", "lr", *LOG_PARTS, "patches_per_s", "epoch_seconds"]
                 + [f"val_{k}" for k in VAL_KEYS])


class WarmupCosine:
    """LR factor for LambdaLR: (i + 1) / W for the W warm-up units, then a half cosine from 1 (unit W) to
    floor (the last unit, total - 1).

    A callable object rather than a lambda, so LambdaLR.state_dict() stores its values.
    """

    def __init__(self, total: int, warmup: int, floor: float):
        self.total = int(total)
        self.warmup = int(warmup)
        self.floor = float(floor)

    def __call__(self, i: int) -> float:
        if i < self.warmup:
            return (i + 1) / self.warmup
        progress = min(1.0, (i - self.warmup) / max(1, self.total - self.warmup - 1))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    per_unit = steps_per_epoch if config.scheduler_interval == "step" else 1
    factor = WarmupCosine(config.epochs * per_unit, round(config.warmup_epochs * per_unit),
                          config.eta_min / config.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_model(config: TrainConfig) -> VeloxSeg:
    """The network of the recipe: a VeloxSegConfig preset plus overrides, built for the crop size."""
    preset = getattr(VeloxSegConfig, config.model_preset, None)
    if preset is None or not callable(preset):
        raise ValueError(f"Unknown model_preset {config.model_preset!r} (try 'autopet')")
    values = preset().to_dict()
    values.update(config.model_overrides)
    if "input_size" in config.model_overrides and list(config.model_overrides["input_size"]) != config.patch_size:
        raise ValueError("model_overrides.input_size must equal patch_size (set patch_size only)")
    values["input_size"] = list(config.patch_size)
    return VeloxSeg(VeloxSegConfig.from_dict(values))


# --------------------------------------------------------------------------- process group
@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(use_cuda: bool) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Build everything from a TrainConfig and run it (call `run()`)."""

    def __init__(self, config: TrainConfig, out_dir: Optional[str | Path] = None, device: Optional[str] = None,
                 resume: Optional[str | Path] = None, data_dir: Optional[str | Path] = None,
                 log: Callable[[str], None] = print):
        self.config = config
        self.out_dir = Path(out_dir or config.out_dir)
        self.requested_device = device or config.device
        self.resume_path = Path(resume) if resume else None
        self.data_dir = Path(data_dir or config.data_dir)
        self._log = log
        self.on_step: Optional[Callable[[Trainer], None]] = None  # hook called after every step (tests)
        self.stop_requested = False
        self.stop_reason = ""
        self.is_set_up = False
        self.last_plot = -math.inf

    # ----------------------------------------------------------------- small helpers
    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    def _device(self) -> torch.device:
        wanted = self.requested_device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda" and not torch.cuda.is_available():
            raise TrainingError("device 'cuda' was asked for but torch sees no CUDA GPU "
                                f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        if wanted == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def _amp_dtype(self) -> Optional[torch.dtype]:
        amp = self.config.amp
        if amp == "off":
            return None
        if self.device.type == "cpu":
            # bf16 only when asked for ('auto' stays float32 on CPU): it pays off where the CPU computes bf16
            # natively (AVX-512 BF16, AMX; benchmarks/train_throughput.py measures it) and is slow elsewhere.
            if amp == "fp16":
                raise TrainingError("amp 'fp16' runs on CUDA only; on CPU use 'bf16' or 'off'")
            if amp == "bf16" and not cpu_has_native_bf16():
                self.log("Note: amp 'bf16' on a CPU without native bf16 (AVX-512 BF16 or AMX) is emulated "
                         "and usually slower than float32.")
            return torch.bfloat16 if amp == "bf16" else None
        if amp == "fp16":
            return torch.float16
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build data, model, optimiser, scheduler (and load the resume checkpoint); run() calls it."""
        config = self.config
        self.start_time = time.monotonic()
        self.device = self._device()
        self.dist = setup_distributed(self.device.type == "cuda")
        self.amp_dtype = self._amp_dtype()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        # Real PET/CT crops (large uniform regions -> extreme normalised activations -> GELU/exp underflow)
        # produce denormal floats, which make x86 CPUs ~10x slower; flushing them to zero changes nothing
        # measurable. Process-wide, CPU only.
        torch.set_flush_denormal(True)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = config.cudnn_deterministic
            torch.backends.cudnn.benchmark = not config.cudnn_deterministic

        # Seeds: the model is initialised identically everywhere (seed); each process then gets its own
        # streams (seed + rank) for crops, augmentation and dropout.
        rank = self.dist.rank
        random.seed(config.seed + rank)
        np.random.seed((config.seed + rank) % 2**32)
        self.rng = np.random.default_rng([config.seed, rank])
        torch.manual_seed(config.seed)
        self.model = build_model(config).to(self.device)
        self.memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.model = self.model.to(memory_format=self.memory_format)
        if rank:
            torch.manual_seed(config.seed + rank)

        # Data
        self.dataset = read_dataset(self.data_dir)
        train_cases = self.dataset.split(config.train_split)
        if not train_cases:
            raise TrainingError(f"{self.data_dir}: no cases in split '{config.train_split}'")
        self.log(f"Loading {len(train_cases)} training volumes from {self.data_dir} ...")
        organs = int(config.model_overrides.get("n_organs", 0))
        if organs and organs != len(ORGAN_NAMES):
            raise TrainingError(f"n_organs is {organs}, but the organ maps have {len(ORGAN_NAMES)} classes "
                                f"({', '.join(ORGAN_NAMES)})")
        store = functools.partial(VolumeStore, self.dataset, patch_size=config.patch_size,
                                  cache=config.cache_volumes, body_ct_threshold_hu=config.body_ct_threshold_hu)
        self.train_store = store(train_cases, with_organs=organs > 0)
        val_cases = self.dataset.split(config.val_split) if config.val_split else []
        if config.val_max_volumes:
            val_cases = val_cases[: config.val_max_volumes]
        self.val_store = store(val_cases) if val_cases else None
        self.val_items = (plan_items(self.val_store, config.val_mode, config.val_crops_per_volume,
                                     config.patch_size, config.seed, config.centre_jitter)
                          if self.val_store else [])
        if not self.val_items:
            self.log("No validation cases: validation metrics and best.pt are skipped.")
        sampler = CropSampler(config.patch_size, config.lesion_ratio, config.background_ratio,
                              hard_negative_fraction=config.hard_negative_fraction,
                              hot_threshold=self._normalised_pet(config.hard_negative_suv),
                              centre_jitter=config.centre_jitter)
        self.steps_per_epoch = len(epoch_plan(len(self.train_store), 0, config.seed, config.volumes_per_step,
                                              config.steps_per_epoch, 0, self.dist.world_size))
        self.mined = HardNegativePool()
        self.crop_chooser = CropChooser(config, self.train_store, sampler, self.mined,
                                        augment.AugmentSettings.from_config(config, self.dataset.normalization),
                                        self.device, self.memory_format)

        # Optimisation
        self.net = self.model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn = SDKTLoss.from_config(config)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=tuple(config.betas),
                                           eps=config.eps, weight_decay=config.weight_decay,
                                           fused=True if config.fused_optimizer else None)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # Position and bookkeeping
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch
        self.global_step = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.last_val: Dict[str, float] = {}
        self.epoch_sums = [0.0] * (len(PART_NAMES) + 2)  # parts, patches, seconds
        self.elapsed_before = 0.0  # training seconds of earlier invocations (resume)
        self.rewarm_from: Optional[int] = None  # global step of a resume from a compact state (LR re-warm)
        self.bad_steps = 0
        if self.resume_path:
            resume(self, self.resume_path)
        elif config.init_weights:
            load_initial_weights(self.model, Path(config.init_weights), self.dataset.normalization, self.data_dir,
                                 self.log)
        self.is_set_up = True

    def _normalised_pet(self, suv: float) -> float:
        """An SUV expressed in the normalised PET channel of the prepared data: the engine's formula, which
        normalised the volumes, so a voxel of exactly this SUV compares equal to the threshold."""
        from VeloxSegSlicerLib.engine import normalize

        return float(normalize(np.array([suv], dtype=np.float32), self.dataset.normalization["PET"])[0])

    # ----------------------------------------------------------------- time and logs
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start_time

    def _append(self, name: str, columns: List[str], row: dict) -> None:
        path = self.out_dir / name
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})

    def _truncate_logs(self) -> None:
        """After a resume, drop log rows written after the checkpoint (e.g. resuming an older epoch)."""
        for name, key, limit in (("log_steps.csv", "global_step", self.global_step),
                                 ("log_epochs.csv", "epoch", self.epoch)):
            path = self.out_dir / name
            if not path.exists():
                continue
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                columns = reader.fieldnames or []
                rows = [r for r in reader if float(r[key]) <= limit]
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

    # ----------------------------------------------------------------- steps and mining rounds
    def mine(self) -> None:
        """A mining round (see mining.py): false positives of the current model on a few training volumes."""
        indices = pick_volumes(len(self.train_store), self.config.mine_volumes, self.config.seed, self.global_step,
                               self.dist.rank)
        found = mine_volumes(self.model, self.train_store, indices, self.mined, self.config.patch_size, self.device,
                             self.autocast, self.config.mine_overlap)
        text = ", ".join(f"{name} {voxels} FP voxels" for name, voxels in found)
        self.log(f"step {self.global_step}: mined {text}; pool {len(self.mined)} volumes")

    def make_batch(self, indices: List[int]):
        """Crops (and their augmentation) of the given volumes, as device tensors (crop_choice.py)."""
        return self.crop_chooser.batch(indices, self.rng)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns the loss parts (detached, float32)."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            outputs = self.net(images)
            parts = self.loss_fn(outputs, images, labels)
        self.scaler.scale(parts.total).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        scale = 1.0 if self.rewarm_from is None else rewarm_factor(self.global_step - self.rewarm_from)
        with scaled_lr(self.optimizer, scale):
            self.scaler.step(self.optimizer)
        self.scaler.update()
        return torch.stack([p.detach().float() for p in parts])

    # ----------------------------------------------------------------- validation
    def run_validation(self) -> Dict[str, float]:
        batch = self.config.patches_per_step
        summary, _ = validate(self.model, self.val_store, self.val_items, self.config.patch_size, self.device,
                              self.autocast, batch, self.config.val_overlap, self.dist.rank,
                              self.dist.world_size)
        return summary

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict:
        """Train to the end (or until stopped); returns the run summary also written to summary.json."""
        if not self.is_set_up:
            self.setup()
        config = self.config
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.toml").write_text(dump_toml(config))
            if self.resume_path:
                self._truncate_logs()
        patches = config.patches_per_step * self.dist.world_size
        precision = f"AMP {str(self.amp_dtype).split('.')[-1]}" if self.amp_dtype else "fp32"
        self.log(f"Training on {self.device} ({precision}, {self.dist.world_size} process(es)): "
                 f"{len(self.train_store)} volumes, {self.steps_per_epoch} steps/epoch x {patches} patches, "
                 f"epochs {self.epoch + 1}..{config.epochs}; output {self.out_dir}")
        status = "finished"
        with _stop_signals(self):
            try:
                status = self._loop()
            finally:
                self.crop_chooser.close()
        if self.dist.world_size > 1 and dist.is_initialized():
            dist.barrier()  # rank 0 may still be writing; leave together
        summary = {
            "status": status,
            "epochs_completed": self.epoch,
            "global_step": self.global_step,
            "best_val_dice": None if self.best_epoch < 0 else self.best_metric,
            "best_epoch": None if self.best_epoch < 0 else self.best_epoch,
            "last_val": self.last_val,
            "elapsed_seconds": round(self.elapsed(), 1),
            "out_dir": str(self.out_dir),
        }
        if self.dist.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
            self._plot()
        return summary

    def _stop_due(self) -> bool:
        budget = self.config.time_budget_minutes
        if budget and self.elapsed() - self.elapsed_before >= budget * 60 and not self.stop_requested:
            self.stop_requested, self.stop_reason = True, "time_budget"
        return self.stop_requested

    def _agree_to_stop(self) -> bool:
        local = self._stop_due()
        if self.dist.world_size == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        dist.all_reduce(flag)
        if flag.item() > 0 and not self.stop_requested:
            self.stop_requested, self.stop_reason = True, self.stop_reason or "stopped by another process"
        return flag.item() > 0

    def _stop(self) -> str:
        save_checkpoints(self, ["last.pt"])
        reason = self.stop_reason or "stopped"
        self.log(f"Stopped ({reason}) at epoch {self.epoch + 1}, step {self.step_in_epoch} of "
                 f"{self.steps_per_epoch}; saved {self.out_dir / 'checkpoints' / 'last.pt'}. Continue with "
                 f"--resume {self.out_dir / 'checkpoints' / 'last.pt'}")
        return reason

    def _loop(self) -> str:
        from tqdm import tqdm

        config = self.config
        world = self.dist.world_size
        patches = config.patches_per_step * world
        for epoch in range(self.epoch, config.epochs):
            plan = epoch_plan(len(self.train_store), epoch, config.seed, config.volumes_per_step,
                              config.steps_per_epoch, self.dist.rank, world)
            self.crop_chooser.prefetch(plan[self.step_in_epoch:self.step_in_epoch + 2])
            bar = tqdm(total=len(plan), initial=self.step_in_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="step", dynamic_ncols=True, leave=True,
                       disable=not (config.progress_bar and self.dist.is_main))
            speed = None
            for k in range(self.step_in_epoch, len(plan)):
                started = time.perf_counter()
                self.crop_chooser.prefetch(plan[k + 2:k + 3])  # the step after next (none near the end)
                lr = self.optimizer.param_groups[0]["lr"]
                images, labels = self.make_batch(plan[k])
                parts = self.train_step(images, labels)
                if config.scheduler_interval == "step":
                    self.scheduler.step()
                if world > 1:
                    dist.all_reduce(parts)
                    parts /= world
                values = parts.tolist()
                seconds = time.perf_counter() - started
                self._check_finite(values, plan[k])
                self.global_step += 1
                self.step_in_epoch = k + 1
                for i, v in enumerate(values):
                    self.epoch_sums[i] += v
                self.epoch_sums[-2] += patches
                self.epoch_sums[-1] += seconds
                rate = patches / seconds
                speed = rate if speed is None else 0.9 * speed + 0.1 * rate
                if self.dist.is_main:
                    row = dict(zip(LOG_PARTS, values))
                    self._append("log_steps.csv", STEP_COLUMNS, {"global_step": self.global_step,
                                                                 "epoch": epoch + 1, "lr": lr,
                                                                 "seconds": seconds, **row})
                done = self.step_in_epoch
                bar.set_postfix(loss=f"{self.epoch_sums[0] / done if done else 0:.4f}", lr=f"{lr:.2e}",
                                speed=f"{speed:.2f} patch/s", refresh=False)
                bar.update(1)
                if config.mine_every and self.global_step % config.mine_every == 0 and \
                        self.global_step >= config.mine_after:
                    self.mine()
                if self.on_step:
                    self.on_step(self)
                if self._agree_to_stop():
                    bar.close()
                    return self._stop()
            bar.close()
            self._end_epoch(epoch)
            if self._agree_to_stop():
                return self._stop()
        return "finished"

    def _check_finite(self, values: List[float], indices: List[int]) -> None:
        if all(math.isfinite(v) for v in values):
            self.bad_steps = 0
            return
        self.bad_steps += 1
        names = ", ".join(self.train_store.cases[i].name for i in indices)
        # With fp16 the GradScaler skips an overflowing step by itself; persistent non-finite losses
        # (or any in fp32/bf16) mean the run diverged.
        if self.scaler.is_enabled() and self.bad_steps < 10:
            return
        raise TrainingError(f"loss is not finite at global step {self.global_step + 1} (volumes {names}): "
                            f"{dict(zip(PART_NAMES, values))}. Lower lr, enable grad_clip, or check those cases.")

    def _end_epoch(self, epoch: int) -> None:
        config = self.config
        if config.scheduler_interval == "epoch":
            self.scheduler.step()
        steps = max(1, self.step_in_epoch)
        means = [v / steps for v in self.epoch_sums[: len(PART_NAMES)]]
        patches_per_s = self.epoch_sums[-2] / self.epoch_sums[-1] if self.epoch_sums[-1] else 0.0
        epoch_seconds = self.epoch_sums[-1]
        self.epoch = epoch + 1
        self.step_in_epoch = 0
        self.epoch_sums = [0.0] * (len(PART_NAMES) + 2)
        last_epoch = self.epoch == config.epochs
        val: Dict[str, float] = {}
        if self.val_items and (self.epoch % config.val_every == 0 or last_epoch):
            started = time.perf_counter()
            val = self.run_validation()
            self.last_val = {k: val[k] for k in VAL_KEYS}
            self.log(f"epoch {self.epoch}: validation ({len(self.val_items)} items, "
                     f"{time.perf_counter() - started:.0f} s) " + ", ".join(f"{k} {val[k]:.4g}" for k in VAL_KEYS))
        lr = self.optimizer.param_groups[0]["lr"]
        self.log(f"epoch {self.epoch}: loss {means[0]:.4f} (seg {means[1]:.4f}, recon {means[4]:.4f}, "
                 f"sdkt {means[5]:.3g}), {patches_per_s:.2f} patches/s, next lr {lr:.3g}")
        if self.dist.is_main:
            row = {"epoch": self.epoch, "global_step": self.global_step, "lr": lr,
                   "patches_per_s": patches_per_s, "epoch_seconds": epoch_seconds,
                   **dict(zip(LOG_PARTS, means)),
                   **{f"val_{k}": val[k] for k in VAL_KEYS if val}}
            self._append("log_epochs.csv", EPOCH_COLUMNS, row)
        names = ["last.pt"]
        if self.epoch % config.checkpoint_every == 0 or last_epoch:
            names.append(f"epoch_{self.epoch:04d}.pt")
        if val and math.isfinite(val["dice"]) and val["dice"] > self.best_metric:
            self.best_metric, self.best_epoch = val["dice"], self.epoch
            names.append("best.pt")
            self.log(f"epoch {self.epoch}: new best validation Dice {val['dice']:.4f}")
        save_checkpoints(self, names)
        # Plots cost seconds; redraw at most every PLOT_INTERVAL_S (and always at the end of the run).
        if self.dist.is_main and time.monotonic() - self.last_plot >= PLOT_INTERVAL_S:
            self._plot()

    def _plot(self) -> None:
        self.last_plot = time.monotonic()
        try:
            plot_run(self.out_dir)
        except Exception as error:  # a plotting problem must never stop or lose a run
            self.log(f"Warning: could not write plots: {error}")


@contextmanager
def _stop_signals(trainer: Trainer):
    """First Ctrl-C / SIGTERM: stop after the current step and save; second Ctrl-C: abort now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        trainer.stop_reason = "interrupted" if signum == signal.SIGINT else "terminated"
        trainer.log("\nStopping after the current step and saving a checkpoint (Ctrl-C again to abort "
                    "without saving) ...")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value

