"""`veloxseg-train candidates --model M --cases DIR [--split train] --out features.csv`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True,
                        help="an exported model's manifest (.json) or a training checkpoint (.pt)")
    parser.add_argument("--cases", type=Path, required=True, help="cases with ground truth (as for evaluate)")
    parser.add_argument("--split", default="train",
                        help="with a prepared data set: the split to collect from (default train; '' for all)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the candidates table (.csv); its description is written beside it (.json)")
    parser.add_argument("--candidate-probability", type=float, default=0.25,
                        help="candidates: components of lesion probability above this (default 0.25)")
    parser.add_argument("--min-fraction", type=float, default=0.1,
                        help="a candidate is positive when at least this fraction of it is lesion (or it holds "
                             "half of a true lesion); default 0.1")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")


def run(args: argparse.Namespace) -> int:
    from VeloxSegSlicerLib.engine import VeloxSegError

    from ..checkpoint import CheckpointError
    from ..evaluate import EvaluationError
    from ..second_look import collect_candidates
    from ..training_data import DataError

    if not 0.0 < args.candidate_probability < 1.0:
        print("error: --candidate-probability must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        collect_candidates(args.model, args.cases, args.out, split=args.split or None,
                           candidate_probability=args.candidate_probability, device=args.device,
                           threads=args.threads, min_fraction=args.min_fraction)
    except (EvaluationError, VeloxSegError, CheckpointError, DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
