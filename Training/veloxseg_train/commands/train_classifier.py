"""`veloxseg-train train-classifier features.csv [...] --out second_look.onnx [--attach M.json]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tables", type=Path, nargs="+", help="candidate tables written by `veloxseg-train candidates`")
    parser.add_argument("--out", type=Path, required=True,
                        help="the classifier (.onnx); its manifest is written beside it (.json)")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units of the MLP (0: logistic regression)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, by case (default 5)")
    parser.add_argument("--min-recall", type=float, default=0.95,
                        help="the score threshold keeps at least this fraction of positive candidates out of "
                             "fold (default 0.95)")
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attach", type=Path, metavar="M.json",
                        help="name the classifier in this model manifest ('second_look'; the .onnx is not touched)")


def run(args: argparse.Namespace) -> int:
    from VeloxSegSlicerLib.engine import VeloxSegError

    from ..evaluate import EvaluationError
    from ..second_look import train_classifier

    if args.out.suffix != ".onnx":
        print("error: --out must name an .onnx file", file=sys.stderr)
        return 2
    try:
        train_classifier(args.tables, args.out, hidden=args.hidden, folds=args.folds, min_recall=args.min_recall,
                         epochs=args.epochs, seed=args.seed, attach=args.attach)
    except (EvaluationError, VeloxSegError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
