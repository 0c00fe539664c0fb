"""A compact run state: what the next session needs to go on with a long training run, in a few MB.

A full checkpoint (`checkpoints/last.pt`) holds the weights in float32, AdamW's two moments per weight, the
mined false-positive pool and the RNG streams: ~28 MB for VeloxSeg. Kept in git at every session, such files
made the repository too big for the Extensions Index (issue 20). The compact state keeps the weights in
float16 (rounding error ~5e-4 relative, below one optimiser step's change at the run's learning rates), the
schedule position, the RNG streams and the log counters, and drops the optimiser moments and the mined pool.
A run resumed from it rebuilds the moments from zero while the learning rate ramps up again over
`REWARM_STEPS` steps (Adam's first steps would otherwise be full-size steps in arbitrary directions), and
mines afresh at its next mining round. The continuation is close to, not exactly, the uninterrupted run.

    python -m veloxseg_train.run_state IN.pt OUT.pt      # compact a full checkpoint
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .checkpoint import load_checkpoint

REWARM_STEPS = 50
DROPPED = ("optimizer", "scaler", "mined")  # rebuilt by the resumed run


def compact_payload(payload: dict) -> dict:
    """The compact form of a loaded full checkpoint (a new dict; `payload` is not changed)."""
    state = payload.get("extra", {}).get("training_state")
    if state is None:
        raise ValueError("the checkpoint has no training state (a weights-only checkpoint has nothing to resume)")
    weights = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    compact_state = {k: v for k, v in state.items() if k not in DROPPED}
    compact_state["compact"] = True
    extra = dict(payload["extra"], training_state=compact_state)
    return dict(payload, state_dict=weights, extra=extra)


def is_compact(state: dict) -> bool:
    return bool(state.get("compact"))


def rewarm_factor(steps_since_resume: int) -> float:
    """LR multiplier for the n-th step (0-based) after resuming from a compact state."""
    return min(1.0, (steps_since_resume + 1) / REWARM_STEPS)


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """The optimiser's learning rates times `scale` inside the block (the re-warm ramp), the scheduler's own
    values again after it: the scheduler never sees the ramp."""
    if scale < 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= scale
    yield
    if scale < 1.0:
        for group in optimizer.param_groups:
            group["lr"] /= scale


def compact_file(source: Path, target: Path) -> Path:
    payload = compact_payload(load_checkpoint(source))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(target)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compact a training checkpoint into a run state for git.")
    parser.add_argument("source", type=Path, help="a full checkpoint (checkpoints/last.pt)")
    parser.add_argument("target", type=Path, help="where to write the compact state")
    args = parser.parse_args(argv)
    out = compact_file(args.source, args.target)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB (from {args.source.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
