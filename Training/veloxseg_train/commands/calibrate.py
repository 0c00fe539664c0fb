"""`veloxseg-train calibrate --model M --cases DIR [--split val] --out DIR [--write-manifest M.json]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True,
                        help="an exported model's manifest (.json) or a training checkpoint (.pt)")
    parser.add_argument("--cases", type=Path, required=True, help="cases with ground truth (as for evaluate)")
    parser.add_argument("--split", default="val",
                        help="with a prepared data set: the split to calibrate on (default val; '' for all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for calibration.csv and calibration.json")
    parser.add_argument("--penalty-per-ml", type=float, default=0.01,
                        help="Dice given up per mL of false positives on lesion-free cases (default 0.01)")
    parser.add_argument("--write-manifest", type=Path, metavar="M.json",
                        help="write the chosen threshold into this manifest ('lesion_threshold'; the .onnx is "
                             "not touched)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")


def run(args: argparse.Namespace) -> int:
    from VeloxSegSlicerLib.engine import VeloxSegError

    from ..checkpoint import CheckpointError
    from ..evaluate import EvaluationError
    from ..second_look import calibrate
    from ..training_data import DataError

    try:
        calibrate(args.model, args.cases, args.out, split=args.split or None, device=args.device,
                  threads=args.threads, penalty_per_ml=args.penalty_per_ml, write_manifest=args.write_manifest)
    except (EvaluationError, VeloxSegError, CheckpointError, DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out / 'calibration.csv'} and {args.out / 'calibration.json'}"
          + (f"; updated {args.write_manifest}" if args.write_manifest else ""))
    return 0
