"""PNG plots of a run's CSV logs: losses per step (with a running mean) and validation metrics per epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List

LOSS_COLUMNS = ("loss", "seg", "ce", "dice", "recon", "sdkt", "organ")  # organ: logs of runs with an organ head
VAL_COLUMNS = (("val_dice", "Dice (all items)"), ("val_dice_pos", "Dice (items with lesion)"),
               ("val_precision", "precision"), ("val_recall", "recall"))
VAL_VOLUME_COLUMNS = (("val_fp_volume_ml", "FP volume (mL)"), ("val_fn_volume_ml", "FN volume (mL)"),
                      ("val_hd95_mm", "HD95 (mm)"))


def read_csv(path: Path) -> List[Dict[str, float]]:
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _running_mean(values: List[float], window: int) -> List[float]:
    out, total, queue = [], 0.0, []
    for v in values:
        queue.append(v)
        total += v
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def plot_run(out_dir: str | Path) -> List[Path]:
    """Write plots/losses.png and plots/validation.png from log_steps.csv and log_epochs.csv."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (servers, CI)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []

    steps = read_csv(out_dir / "log_steps.csv")
    if steps:
        columns = [c for c in LOSS_COLUMNS if c in steps[0] and steps[0][c] is not None]
        fig, axes = plt.subplots(2, (len(columns) + 1) // 2, figsize=(4.4 * ((len(columns) + 1) // 2), 7),
                                 sharex=True, squeeze=False)
        for ax in axes.ravel()[len(columns):]:
            ax.set_visible(False)
        x = [r["global_step"] for r in steps]
        window = max(1, len(steps) // 50)
        for ax, column in zip(axes.ravel(), columns):
            y = [r[column] for r in steps]
            ax.plot(x, y, color="0.75", linewidth=0.8, label="per step")
            ax.plot(x, _running_mean(y, window), color="C0", label=f"mean of {window}")
            ax.set_title(column)
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("step")
        axes[0, 0].legend(fontsize=8)
        fig.suptitle("training losses (seg = deep-supervised CE + Dice; recon, sdkt, organ unweighted)")
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.25, hspace=0.25)
        path = plot_dir / "losses.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    epochs = [r for r in read_csv(out_dir / "log_epochs.csv") if not math.isnan(r.get("val_dice", math.nan))]
    if epochs:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        x = [r["epoch"] for r in epochs]
        for column, name in VAL_COLUMNS:
            left.plot(x, [r[column] for r in epochs], marker="o", label=name)
        left.set_ylim(-0.02, 1.02)
        left.set_xlabel("epoch")
        left.legend(fontsize=8)
        left.grid(alpha=0.3)
        for column, name in VAL_VOLUME_COLUMNS:
            right.plot(x, [r[column] for r in epochs], marker="o", label=name)
        right.set_xlabel("epoch")
        right.set_yscale("symlog")
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
        fig.suptitle("validation")
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.2)
        path = plot_dir / "validation.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
