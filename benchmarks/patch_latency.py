"""Seconds per 96^3 patch: PyTorch eager vs ONNX Runtime, one thread each, measured side by side.

    python benchmarks/patch_latency.py [--model MANIFEST.json] [--rounds 12]

Without --model, a randomly initialised network is exported to a temporary folder first (the weights
do not change the cost). Rounds alternate eager / ORT so that machine noise hits both alike; medians
and their ratio are printed. Needs the training extras (torch) besides onnxruntime.
"""

from __future__ import annotations

import argparse
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
        eager, onnx = [], []
        with torch.inference_mode():
            model(x)
            session.run(None, feed)  # warm-up both
            for _ in range(args.rounds):
                start = time.perf_counter()
                model(x)
                eager.append(time.perf_counter() - start)
                start = time.perf_counter()
                session.run(None, feed)
                onnx.append(time.perf_counter() - start)
    e, o = statistics.median(eager), statistics.median(onnx)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread, {args.rounds} interleaved rounds")
    print(f"PyTorch eager : {e:.3f} s/patch (min {min(eager):.3f})")
    print(f"ONNX Runtime  : {o:.3f} s/patch (min {min(onnx):.3f})")
    print(f"ratio eager/ORT: {e / o:.2f}x  (min-based {min(eager) / min(onnx):.2f}x)")
    print(f"patches/s: eager {1 / e:.2f}, ORT {1 / o:.2f}; mean |noise| eager {np.std(eager):.3f} s")


if __name__ == "__main__":
    main()
