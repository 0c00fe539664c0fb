"""`veloxseg-train evaluate --model CKPT_OR_MANIFEST --cases DIR --out DIR`: metrics + threshold baselines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True,
                        help="a training checkpoint (.pt) or an exported model's manifest (.json)")
    parser.add_argument("--cases", type=Path, required=True,
                        help="prepared data set (dataset.json), AutoPET-II raw folder, synth output, or one "
                             "sub-folder per case (CT, PET in SUV, label)")
    parser.add_argument("--out", type=Path, required=True, help="folder for per_case.csv, summary.csv/.json")
    parser.add_argument("--split", help="with a prepared data set: evaluate only this split (e.g. test)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default 0.25)")
    parser.add_argument("--blending", choices=("uniform", "gaussian"), default="uniform")
    parser.add_argument("--min-lesion-ml", type=float, default=0.0,
                        help="drop predicted lesions smaller than this (default 0: none, as the reference)")
    parser.add_argument("--min-suv-max", type=float, default=0.0,
                        help="drop predicted lesions whose SUVmax is below this (default 0: none)")
    parser.add_argument("--rule", action="append", default=[], metavar="ML:SUVMAX",
                        help="also score the lesion-table rule 'at least ML mL and SUVmax SUVMAX' from the same "
                             "network output, e.g. --rule 0.5:0 --rule 0:2.5; repeatable")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="model grid spacing in mm for a checkpoint that does not record it")


def run(args: argparse.Namespace) -> int:
    from VeloxSegSlicerLib.engine import VeloxSegError

    from ..checkpoint import CheckpointError
    from ..data.case import DataError as CaseDataError
    from ..evaluate import EvaluationError, TableRule, evaluate
    from ..training_data import DataError

    rules = []
    for text in args.rule:
        try:
            ml, suv = (float(v) for v in text.split(":"))
        except ValueError:
            print(f"error: --rule {text!r}: expected ML:SUVMAX, e.g. 0.5:2.5", file=sys.stderr)
            return 2
        rules.append(TableRule(ml, suv))
    try:
        evaluate(args.model, args.cases, args.out, device=args.device, threads=args.threads, split=args.split,
                 overlap=args.overlap, min_lesion_ml=args.min_lesion_ml, blending=args.blending,
                 spacing_xyz_mm=args.spacing, min_suv_max=args.min_suv_max, rules=rules)
    except (EvaluationError, VeloxSegError, CheckpointError, DataError, CaseDataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out / 'per_case.csv'}, {args.out / 'summary.csv'} and {args.out / 'summary.json'}")
    return 0
