"""Seconds per 96^3 patch: PyTorch eager vs ONNX Runtime, one thread each, measured side by side.

    python benchmarks/patch_latency.py [--model MANIFEST.json] [--rounds 12]

Without --model, a randomly initialised network is exported to a temporary folder first (the weights
do not change the cost). Rounds alternate between the runtimes so that machine noise hits all alike;
medians and ratios are printed. Needs the training extras (torch) besides onnxruntime.

Three runtimes: this project's eager model (its JLC blocks already use depth-sliced 2-D convolutions),
the same weights with the JLC convolutions as plain grouped Conv3d (how the authors' implementation runs
them, for comparison with spec §9), and the exported ONNX graph in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from veloxseg_train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from veloxseg_train.export import export_onnx  # noqa: E402
from veloxseg_train.model import VeloxSeg  # noqa: E402
from veloxseg_train.model.export_rewrites import with_plain_branches  # noqa: E402


def ort_session(onnx_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="manifest of an exported model (default: export random weights)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint for the eager side (default: random weights)")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as in training and evaluation; denormals slow eager CPU kernels badly

    model = (model_from_checkpoint(load_checkpoint(args.checkpoint)) if args.checkpoint else VeloxSeg()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            manifest = json.loads(args.model.read_text())
            onnx_path = args.model.parent / manifest["onnx_file"]
        else:
            norm = {m: {"clip_low": -1e9, "clip_high": 1e9, "mean": 0.0, "std": 1.0} for m in ("CT", "PET")}
            onnx_path = Path(tmp) / "random.onnx"
            export_onnx(model, onnx_path, norm, {"checkpoint": "random initialisation", "data": "none"})
        session = ort_session(onnx_path)
        x = torch.randn(1, model.cfg.modalities, *model.cfg.input_size)
        feed = {"image": x.numpy()}
        plain = with_plain_branches(copy.deepcopy(model), max_kernel=99).eval()
        runners = {
            "PyTorch eager (this project)": lambda: model(x),
            "PyTorch eager, plain grouped Conv3d (reference-style)": lambda: plain(x),
            "ONNX Runtime (exported graph)": lambda: session.run(None, feed),
        }
        times = {name: [] for name in runners}
        with torch.inference_mode():
            for run in runners.values():
                run()  # warm-up
            for _ in range(args.rounds):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread, {args.rounds} interleaved rounds")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:55s}: {medians[name]:.3f} s/patch (min {min(t):.3f}, std {np.std(t):.3f})")
    onnx = medians["ONNX Runtime (exported graph)"]
    for name in list(runners)[:2]:
        print(f"ratio {name} / ONNX Runtime: {medians[name] / onnx:.2f}x")


if __name__ == "__main__":
    main()
