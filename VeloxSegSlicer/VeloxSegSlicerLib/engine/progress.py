"""Plain-text progress bar on stderr for the CLI (no tqdm: the engine ships inside Slicer)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Callable as progress(fraction, stage). Redraws one line on a terminal; elsewhere (logs, pipes)
    prints a line per stage and per 25 %, so logs stay short."""

    WIDTH = 30

    def __init__(self, stream=None, prefix: str = ""):
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_draw = 0.0
        self.last_stage = None
        self.last_quarter = -1
        self.started = time.perf_counter()

    def __call__(self, fraction: float, stage: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        now = time.perf_counter()
        if self.interactive:
            if stage == self.last_stage and fraction < 1.0 and now - self.last_draw < 0.1:
                return
            filled = int(round(self.WIDTH * fraction))
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"\r{self.prefix}[{bar}] {fraction * 100:5.1f}% {stage:<16} {now - self.started:6.1f}s"
            self.stream.write(line)
        else:
            quarter = int(fraction * 4)
            if stage == self.last_stage and quarter == self.last_quarter:
                return
            self.stream.write(f"{self.prefix}{fraction * 100:5.1f}% {stage} ({now - self.started:.1f}s)\n")
            self.last_quarter = quarter
        self.stream.flush()
        self.last_stage, self.last_draw = stage, now

    def close(self) -> None:
        if self.interactive and self.last_stage is not None:
            self.stream.write("\n")
            self.stream.flush()
