"""Training throughput of two paths, measured side by side in one process on the same crops.

Both paths run the bundled recipe (Training/configs/wholebody.toml: 4 patches of 96^3 per step, SDKT loss,
AdamW, the extended augmentation) from the same seed, so they draw the same volumes, crops, augmentations
and initial weights. They differ only in the switches of [train] that `--compare` picks:
  switches: old = fused_optimizer false (the per-parameter AdamW loop), new = fused_optimizer true
  amp:      old = amp 'off' (float32), new = amp 'bf16' (autocast; fast on CPUs with AVX-512 BF16 / AMX)
Steps alternate between the two paths (old, new, old, new, ...) so machine noise hits both alike; the
first step of each is reported apart (warm-up). Each path trains its own copy of the model, so the loss of
every step is printed for both: the two curves must agree for the new path to be usable.

    python benchmarks/train_throughput.py [--compare switches|amp] [--steps 8] [--threads 2] [--work DIR]
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
COMPARISONS = {
    "switches": {"old": {"fused_optimizer": False, "channels_last": False, "amp": "off"},
                 "new": {"fused_optimizer": True, "channels_last": False, "amp": "off"}},
    "amp": {"old": {"amp": "off"}, "new": {"amp": "bf16"}},
}


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
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="switches")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per path after the warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for the small data set (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="veloxseg-throughput-"))
    prep = make_data(work)

    recipe = load_config(ROOT / "Training/configs/wholebody.toml")
    trainers = {name: make_trainer(prep, args.threads, work / f"run_{name}", **switches)
                for name, switches in COMPARISONS[args.compare].items()}

    plan = [[i % 4, (i + 1) % 4] for i in range(args.steps + 1)]
    times = {name: [] for name in trainers}
    losses = {name: [] for name in trainers}
    for k, indices in enumerate(plan):
        for name, trainer in trainers.items():
            torch.manual_seed(1000 + k)  # the same dropout masks for both paths
            started = time.perf_counter()
            images, labels = trainer.make_batch(indices)
            parts = trainer.train_step(images, labels)
            times[name].append(time.perf_counter() - started)
            losses[name].append(float(parts[0]))
    patches = recipe.patches_per_step
    print(f"--compare {args.compare}: {COMPARISONS[args.compare]}")
    print(f"{args.steps} timed steps per path of {patches} patches (96^3), {args.threads} threads, alternating")
    for name in trainers:
        steady = statistics.median(times[name][1:])
        print(f"  {name}: first step {times[name][0]:.2f} s, median step {steady:.2f} s "
              f"({patches / steady:.2f} patches/s)  [{', '.join(f'{t:.2f}' for t in times[name][1:])}]")
    ratio = statistics.median(times["old"][1:]) / statistics.median(times["new"][1:])
    print(f"new path: {ratio:.2f}x the old path's patches per second")
    print("loss per step (each path trains its own copy from the same start):")
    for k, (old, new) in enumerate(zip(losses["old"], losses["new"])):
        print(f"  step {k}: old {old:.5f}  new {new:.5f}  relative difference {abs(old - new) / abs(old):.2e}")
    mean_old, mean_new = statistics.mean(losses["old"]), statistics.mean(losses["new"])
    print(f"mean loss over the steps: old {mean_old:.5f}, new {mean_new:.5f} "
          f"({(mean_new - mean_old) / abs(mean_old):+.2%})")


if __name__ == "__main__":
    main()
