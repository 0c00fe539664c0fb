"""A progress display for the data commands: tqdm when installed, else a plain line on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """`update(done, total)` redraws; `close()` ends the line."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.start = description, total, time.time()
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, desc=description, unit="case", file=sys.stderr)

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        elapsed = time.time() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        print(f"\r{self.description}: {done}/{total} cases, {elapsed:.0f} s elapsed, ~{eta:.0f} s left",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)
