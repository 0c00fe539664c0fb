"""Plain-text progress on stderr for the CLI (no tqdm: the engine ships inside Slicer): one study's bar, and
the batch's cohort display."""

from __future__ import annotations

import sys
import threading
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class CohortProgress:
    """The batch display on stderr: one bar for the cohort (studies done / failed / skipped, ETA) and one
    line per worker (its study and stage). On a terminal it redraws in place; in a log it prints the
    cohort line every `interval` seconds instead. `message` prints a line above the bar (a study's
    result to stdout, a failure to stderr) without tearing it. Thread-safe: Dask delivers worker events
    on its own thread."""

    WIDTH = 30

    def __init__(self, total: int, stdout=None, stderr=None, interval: float = 30.0):
        self.total = total
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = hasattr(self.stderr, "isatty") and self.stderr.isatty()
        self.interval = interval
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "cancelled": 0}
        self.workers = {}  # name -> (study, fraction, stage)
        self.started = time.perf_counter()
        self.first_run = None  # when the first study was handed to a worker (skips take no time)
        self.drawn = 0  # lines of the block on screen
        self.last_draw = self.started
        self.lock = threading.RLock()

    def stage(self, worker: str, study: str, fraction: float, stage: str) -> None:
        with self.lock:
            if self.first_run is None:
                self.first_run = time.perf_counter()
            self.workers[worker] = (study, fraction, stage)
            self._maybe_draw()

    def idle(self, worker: str) -> None:
        with self.lock:
            self.workers.pop(worker, None)

    def finished(self, status: str, text: str = "", error: bool = False) -> None:
        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if text:
                self.message(text, error=error)
            else:
                self._maybe_draw(force=True)

    def message(self, text: str, error: bool = False) -> None:
        with self.lock:
            self._clear()
            stream = self.stderr if error else self.stdout
            stream.write(text + "\n")
            stream.flush()
            self._maybe_draw(force=True)

    def cohort_line(self) -> str:
        c = self.counts
        finished = sum(c.values())
        fraction = finished / self.total if self.total else 1.0
        filled = int(round(self.WIDTH * fraction))
        text = (f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {finished}/{self.total} studies: "
                f"{c['done']} done, {c['failed']} failed, {c['skipped']} skipped")
        processed = c["done"] + c["failed"]
        left = self.total - finished
        if c["done"] and left and self.first_run is not None:  # not from failures alone: they are often instant
            rate = processed / max(time.perf_counter() - self.first_run, 1e-6)
            text += f", ETA {_duration(left / rate)}"
        return text + f" ({_duration(time.perf_counter() - self.started)})"

    def _worker_lines(self) -> list:
        lines = []
        for name in sorted(self.workers):
            study, fraction, stage = self.workers[name]
            lines.append(f"  {name}: {study} {stage} {100 * fraction:3.0f}%")
        return lines

    def _clear(self) -> None:
        if self.interactive and self.drawn:
            self.stderr.write(f"\x1b[{self.drawn}F\x1b[J")  # to the block's first line, erase to the end
            self.drawn = 0

    def _maybe_draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.interactive:
            if not force and now - self.last_draw < 0.2:
                return
            self._clear()
            lines = [self.cohort_line(), *self._worker_lines()]
            self.stderr.write("".join(line + "\x1b[K\n" for line in lines))
            self.drawn = len(lines)
        else:
            if now - self.last_draw < self.interval:
                return
            running = ", ".join(f"{name} {s} {st}" for name, (s, f, st) in sorted(self.workers.items()))
            self.stderr.write(self.cohort_line() + (f"; running: {running}" if running else "") + "\n")
        self.stderr.flush()
        self.last_draw = now

    def close(self) -> None:
        with self.lock:
            self._clear()
            self.workers.clear()
            self.stderr.flush()
