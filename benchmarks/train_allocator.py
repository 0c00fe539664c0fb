"""Training throughput under different memory allocators, measured side by side.

PyTorch on the CPU allocates and frees activation tensors of tens of MB at every step. glibc's malloc hands
blocks that large straight back to the kernel, so the next step faults every page in again (zeroed by the
kernel): on the wholebody run ~44,000 page faults per second and a fifth of the trainer's CPU time in the
kernel. An allocator that keeps freed memory for reuse avoids that. Each allocator runs in its own process
(it must be chosen before Python starts: LD_PRELOAD / MALLOC_CONF); the processes run the bundled recipe on
the same crops from the same seed and take turns step by step, so machine noise hits them alike.

    python benchmarks/train_allocator.py [--steps 8] [--threads 2] [--work DIR]

Prints per allocator the median step, minor page faults per step and system-CPU share, and the ratio of
patches per second against glibc's default.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
ALLOCATORS = {
    "glibc": {},
    # glibc can keep large blocks too: no mmap for them, and no trimming of the heap's top
    "glibc, no mmap": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"},
    "jemalloc": {"LD_PRELOAD": str(JEMALLOC)},
    "jemalloc, no decay": {"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}


def child(prep: Path, threads: int, work: Path) -> None:
    """One allocator's process: build the trainer, then run the step named on each stdin line."""
    import torch
    from train_throughput import make_trainer  # this folder is on sys.path when the script runs

    torch.set_num_threads(threads)
    trainer = make_trainer(prep, threads, work)
    print("ready", flush=True)
    for line in sys.stdin:
        k = int(line)
        torch.manual_seed(1000 + k)  # the same dropout masks in every process
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        images, labels = trainer.make_batch([k % 4, (k + 1) % 4])
        parts = trainer.train_step(images, labels)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"seconds": seconds, "faults": after.ru_minflt - before.ru_minflt,
                          "user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime,
                          "loss": float(parts[0])}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per allocator after the warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for the small data set (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("PREP", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.threads, Path(args.child[1]))
        return

    from train_throughput import make_data  # this folder is on sys.path when the script runs

    work = args.work or Path(tempfile.mkdtemp(prefix="veloxseg-allocator-"))
    prep = make_data(work)
    allocators = {name: env for name, env in ALLOCATORS.items()
                  if "LD_PRELOAD" not in env or Path(env["LD_PRELOAD"]).is_file()}
    missing = sorted(set(ALLOCATORS) - set(allocators))
    if missing:
        print(f"not measured (library not installed; Debian: libjemalloc2): {', '.join(missing)}")
    processes = {}
    for i, (name, extra) in enumerate(allocators.items()):
        env = {**os.environ, **extra}
        processes[name] = subprocess.Popen(
            [sys.executable, __file__, "--threads", str(args.threads), "--child", str(prep), str(work / f"run_{i}")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for name, process in processes.items():
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {name} process did not start")
    rows = {name: [] for name in processes}
    for k in range(args.steps + 1):
        for name, process in processes.items():  # one at a time: the others wait on stdin
            process.stdin.write(f"{k}\n")
            process.stdin.flush()
            rows[name].append(json.loads(process.stdout.readline()))
    for process in processes.values():
        process.stdin.close()
        process.wait()

    print(f"{args.steps} timed steps per allocator of 4 patches (96^3), {args.threads} threads, taking turns")
    base = None
    for name, measured in rows.items():
        steady = measured[1:]
        median = statistics.median(r["seconds"] for r in steady)
        faults = statistics.median(r["faults"] for r in steady)
        system = sum(r["system"] for r in steady) / max(1e-9, sum(r["user"] + r["system"] for r in steady))
        base = base or median
        print(f"  {name:20s} median step {median:.2f} s ({4 / median:.2f} patches/s), {base / median:.2f}x glibc; "
              f"{faults:,.0f} page faults per step, {100 * system:.0f} % of CPU time in the kernel; "
              f"first-step loss {measured[0]['loss']:.6f}")


if __name__ == "__main__":
    main()
