"""`veloxseg-train export CHECKPOINT --out MODEL.onnx`: ONNX + manifest, verified against PyTorch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of this project (see import-reference)")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file; the manifest goes beside it (.json)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch axis dynamic")
    parser.add_argument("--normalization", type=Path, help="JSON of CT/PET constants, overriding the checkpoint's")
    parser.add_argument("--data", help="what the weights were trained on (default: from the checkpoint)")
    parser.add_argument("--model-version", default="0.1.0")


def run(args: argparse.Namespace) -> int:
    from VeloxSegSlicerLib.engine import file_sha256

    from ..checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
    from ..export import DEFAULT_SPACING_XYZ_MM, ExportError, export_onnx

    if args.out.suffix != ".onnx":
        print("error: --out must name a .onnx file", file=sys.stderr)
        return 2
    try:
        payload = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(payload)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    normalization = payload.get("normalization")
    if args.normalization:
        normalization = json.loads(args.normalization.read_text())
    if not normalization or not all(m in normalization for m in ("CT", "PET")):
        print("error: the checkpoint holds no CT/PET normalisation constants; pass --normalization FILE.json "
              "(format in docs/architecture.md)", file=sys.stderr)
        return 2
    extra = payload.get("extra") or {}
    provenance = {
        "checkpoint": args.checkpoint.name,
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "data": args.data or extra.get("data", "unknown"),
        "training": {k: v for k, v in extra.items() if k in ("epochs", "steps", "config", "seed", "imported_from")},
    }
    try:
        spacing = extra.get("spacing_xyz_mm") or DEFAULT_SPACING_XYZ_MM  # the grid the model was trained on
        manifest = export_onnx(model, args.out, normalization, provenance, opset=args.opset,
                               dynamic_batch=args.dynamic_batch, model_version=args.model_version,
                               spacing_xyz_mm=spacing)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    check = manifest["provenance"]["verification"]
    print(f"Exported {args.out} (opset {args.opset}, sha256 {manifest['onnx_sha256'][:12]}...) "
          f"and {args.out.with_suffix('.json')}; ORT vs PyTorch: {json.dumps(check)}")
    return 0
