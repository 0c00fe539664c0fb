"""How fast `veloxseg segment` honours Ctrl-C in the middle of a whole-body inference.

Builds a whole-body study in a temporary folder (the body/lungs/spine/hot-spot builder of
large_study_memory.py, at a clinical whole-body size: CT 256x256x700 at 1.95 x 1.95 x 2.5 mm, PET
200x200x700 at 2.5 mm), starts `veloxseg segment` on it in a child process, sends SIGINT two seconds into
the inference stage and measures the time until the process has exited, for one thread and for all
cores. It also checks what a cancel must leave behind: exit code 130 and no output file. The target
(issue 13) is at most 2 s.

    python benchmarks/cancel_latency.py [--model MANIFEST] [--into-inference 2.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from large_study_memory import build

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0
CT_SIZE, CT_SPACING = (256, 256, 700), (1.953125, 1.953125, 2.5)
PET_SIZE, PET_SPACING = (200, 200, 700), (2.5, 2.5, 2.5)


def cancel_once(ct: Path, pet: Path, out: Path, threads: int, into_inference: float, model) -> dict:
    command = [sys.executable, "-m", "VeloxSegSlicerLib.engine", "segment", "--ct", str(ct), "--pet", str(pet),
               "--out", str(out), "--threads", str(threads)]
    if model:
        command += ["--model", model]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "VeloxSegSlicer"))
    # started from a script's background (`cmd &`) this process has SIGINT ignored, and the child would inherit it
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    inference = threading.Event()

    def read_stderr():
        for line in process.stderr:
            lines.append(line)
            if "Inference" in line:
                inference.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    if not inference.wait(600):
        process.kill()
        raise SystemExit("the run never reached inference:\n" + "".join(lines))
    time.sleep(into_inference)
    if process.poll() is not None:
        raise SystemExit(f"the run finished before the cancel ({into_inference} s into inference): use a bigger study")
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    process.wait()
    latency = time.perf_counter() - sent
    reader.join(5)
    return {"threads": threads, "latency": latency, "code": process.returncode, "wrote": out.exists(),
            "last": lines[-1].strip() if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model manifest (default: the bundled model)")
    parser.add_argument("--into-inference", type=float, default=2.0, help="seconds into inference before Ctrl-C")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="veloxseg-cancel-") as folder:
        folder = Path(folder)
        print(f"building CT {CT_SIZE} and PET {PET_SIZE} ...", flush=True)
        ct = build("ct", CT_SIZE, CT_SPACING, folder)
        pet = build("pet", PET_SIZE, PET_SPACING, folder)
        rows = [cancel_once(ct, pet, folder / f"out_{threads}.nii.gz", threads, args.into_inference, args.model)
                for threads in (1, 0)]
    print(f"\n{'threads':>8} {'Ctrl-C to exit (s)':>19} {'target (s)':>11} {'ratio':>6} {'exit':>5} {'output':>7}")
    ok = True
    for row in rows:
        ratio = row["latency"] / TARGET_S
        good = row["latency"] <= TARGET_S and row["code"] == 130 and not row["wrote"]
        ok &= good
        label = "all" if row["threads"] == 0 else str(row["threads"])
        print(f"{label:>8} {row['latency']:>19.2f} {TARGET_S:>11.1f} {ratio:>6.2f} {row['code']:>5} "
              f"{'written' if row['wrote'] else 'none':>7}")
    print("met" if ok else "NOT met", f"(cores: {os.cpu_count()})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
