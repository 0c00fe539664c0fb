"""Training throughput, old path vs new path, measured side by side in one process on the same crops.

Both paths run the bundled recipe (Training/configs/wholebody.toml: 4 patches of 96^3 per step, SDKT loss,
AdamW, the extended augmentation) from the same seed, so they draw the same volumes, crops, augmentations
and initial weights. They differ only in the training-speed switches of [train]:
  old: fused_optimizer = false, channels_last = false (the per-parameter AdamW loop, NCDHW tensors)
  new: fused_optimizer = true,  channels_last = true
Steps alternate between the two paths (old, new, old, new, ...) so machine noise hits both alike; the
first step of each is reported apart (warm-up). Also printed: the first step's loss of each path (same
numbers up to float rounding).

    python benchmarks/train_throughput.py [--steps 8] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from veloxseg_train.data.prepare import PrepareOptions, prepare_dataset
from veloxseg_train.data.sources import find_synthetic_cases
from veloxseg_train.data.synth_dataset import generate_dataset
from veloxseg_train.train_config import load_config
from veloxseg_train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = {"old": {"fused_optimizer": False, "channels_last": False},
            "new": {"fused_optimizer": True, "channels_last": False}}


def make_data(work: Path) -> Path:
    prep = work / "prep"
    if not (prep / "dataset.json").exists():
        generate_dataset(work / "synth", 4, seed=7, workers=1)
        prepare_dataset(find_synthetic_cases(work / "synth"), prep,
                        PrepareOptions(val_fraction=0.0, test_fraction=0.0, seed=0))
    return prep


def make_trainer(prep: Path, threads: int, out_dir: Path, **switches) -> Trainer:
    """A set-up Trainer of the bundled recipe on the small data set: volumes cached, no validation or mining."""
    recipe = load_config(ROOT / "Training/configs/wholebody.toml")
    config = dataclasses.replace(recipe, data_dir=str(prep), val_split="", cache_volumes=True, mine_every=0,
                                 num_threads=threads, progress_bar=False, **switches)
    trainer = Trainer(config, out_dir=out_dir, log=lambda _: None)
    trainer.setup()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per path after the warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for the small data set (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="veloxseg-throughput-"))
    prep = make_data(work)

    recipe = load_config(ROOT / "Training/configs/wholebody.toml")
    trainers = {name: make_trainer(prep, args.threads, work / f"run_{name}", **switches)
                for name, switches in SWITCHES.items()}

    plan = [[i % 4, (i + 1) % 4] for i in range(args.steps + 1)]
    times = {name: [] for name in trainers}
    first_loss = {}
    for k, indices in enumerate(plan):
        for name, trainer in trainers.items():
            torch.manual_seed(1000 + k)  # the same dropout masks for both paths
            started = time.perf_counter()
            images, labels = trainer.make_batch(indices)
            parts = trainer.train_step(images, labels)
            times[name].append(time.perf_counter() - started)
            if k == 0:
                first_loss[name] = float(parts[0])
    patches = recipe.patches_per_step
    print(f"{args.steps} timed steps per path of {patches} patches (96^3), {args.threads} threads, alternating")
    for name in trainers:
        steady = statistics.median(times[name][1:])
        print(f"  {name}: first step {times[name][0]:.2f} s, median step {steady:.2f} s "
              f"({patches / steady:.2f} patches/s), first-step loss {first_loss[name]:.6f}  "
              f"[{', '.join(f'{t:.2f}' for t in times[name][1:])}]")
    ratio = statistics.median(times["old"][1:]) / statistics.median(times["new"][1:])
    print(f"new path: {ratio:.2f}x the old path's patches per second (target >= 2x)")
    print(f"first-step loss: old {first_loss['old']:.6f}, new {first_loss['new']:.6f}, "
          f"relative difference {abs(first_loss['old'] - first_loss['new']) / abs(first_loss['old']):.2e}")


if __name__ == "__main__":
    main()
