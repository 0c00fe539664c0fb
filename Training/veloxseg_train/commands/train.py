"""`veloxseg-train train --config C [--resume CKPT] [--out DIR] [--device cpu|cuda]`: SDKT training.

Multi-GPU: `torchrun --nproc_per_node N -m veloxseg_train.cli train --config C` (one process per GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path,
                        help="training recipe (TOML), e.g. Training/configs/bundled.toml; optional with --resume "
                             "(then the checkpoint's own recipe is used)")
    parser.add_argument("--resume", type=Path, metavar="CKPT",
                        help="continue exactly from a checkpoint of this command (e.g. OUT/checkpoints/last.pt)")
    parser.add_argument("--out", type=Path, help="output folder (default: the config's out_dir)")
    parser.add_argument("--data", type=Path, help="prepared data set folder (default: the config's data_dir)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the config's device ('auto')")
    parser.add_argument("--epochs", type=int, help="override the config's number of epochs (e.g. to extend a run)")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="override the config's wall-clock budget (0 = none)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..checkpoint import CheckpointError, load_checkpoint
    from ..train_config import TrainConfig, load_config
    from ..trainer import Trainer, TrainingError
    from ..training_data import DataError

    try:
        if args.config:
            config = load_config(args.config)
        elif args.resume:
            stored = (load_checkpoint(args.resume).get("extra") or {}).get("config")
            if not stored:
                print(f"error: {args.resume} holds no training config; pass --config", file=sys.stderr)
                return 2
            config = TrainConfig.from_dict(stored)
        else:
            print("error: give --config (or --resume a checkpoint of a run)", file=sys.stderr)
            return 2
        if args.epochs is not None:
            config.epochs = args.epochs
        if args.time_budget is not None:
            config.time_budget_minutes = args.time_budget
        config.validate()
        if not (args.data or config.data_dir):
            print("error: no data: set data_dir in the config or pass --data", file=sys.stderr)
            return 2
        trainer = Trainer(config, out_dir=args.out, device=args.device, resume=args.resume, data_dir=args.data,
                          log=tqdm.write)
        summary = trainer.run()
    except (ValueError, FileNotFoundError, CheckpointError, DataError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        is_main = dist.get_rank() == 0
        dist.destroy_process_group()
        if not is_main:
            return 0 if summary["status"] in ("finished", "time_budget") else 130
    best = summary["best_val_dice"]
    best_text = "-" if best is None else f"{best:.4f} (epoch {summary['best_epoch']})"
    print(f"{summary['status']}: {summary['epochs_completed']} epochs, {summary['global_step']} steps in "
          f"{summary['elapsed_seconds']:.0f} s; best validation Dice {best_text}; output {summary['out_dir']}")
    return 0 if summary["status"] in ("finished", "time_budget") else 130
