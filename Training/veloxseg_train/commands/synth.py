"""`veloxseg-train synth`: write synthetic whole-body PET/CT phantoms (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (DIR/case_XXXX/...)")
    parser.add_argument("--count", required=True, type=int, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="master seed (case i depends on seed and i)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--lesion-free-fraction", type=float, default=0.15,
                        help="fraction of cases without lesions (default 0.15)")
    parser.add_argument("--family", choices=("train", "held_out"), default="train",
                        help="phantom family: train (default), or held_out: bodies, organs and imaging from "
                             "ranges the train family never uses (validation of generalisation only)")
    parser.add_argument("--backgrounds", type=Path, metavar="DIR",
                        help="instead of phantoms: insert synthetic lesions into the real studies of DIR (one "
                             "sub-folder per study: CT, PET in SUV, tumour mask), away from their tumour")
    # The default must be prepare's own default split, or a study prepare holds out could become a background.
    parser.add_argument("--background-split", type=float, nargs=3, default=(0.15, 0.2, 0), metavar=("VAL", "TEST",
                        "SEED"), help="use only the studies `prepare` puts in its train split with these "
                                      "--val-fraction, --test-fraction and --seed (default 0.15 0.2 0, "
                                      "prepare's defaults)")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds cases")


def run(args: argparse.Namespace) -> int:
    from veloxseg_train.commands.progress import Progress
    from veloxseg_train.data.sources import SYNTHETIC_MANIFEST
    from veloxseg_train.data.synth_dataset import generate_dataset
    from veloxseg_train.data.synthetic import PhantomConfig

    if args.count < 1:
        print("error: --count must be at least 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.lesion_free_fraction <= 1.0:
        print("error: --lesion-free-fraction must be between 0 and 1", file=sys.stderr)
        return 2
    out = args.out
    if out.exists() and not args.force and ((out / SYNTHETIC_MANIFEST).exists() or any(out.glob("case_*"))):
        print(f"error: {out} already holds synthetic cases; choose another --out or pass --force",
              file=sys.stderr)
        return 2
    bar = Progress("synth", args.count)
    try:
        if args.backgrounds:
            from veloxseg_train.data.case import DataError
            from veloxseg_train.data.real_background import training_backgrounds, write_real_background_dataset

            val, test, split_seed = args.background_split
            try:
                backgrounds = training_backgrounds(args.backgrounds, val, test, int(split_seed))
            except (DataError, ValueError) as exc:  # ValueError: fractions assign_splits refuses
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if not backgrounds:
                print(f"error: no study of {args.backgrounds} is in the train split", file=sys.stderr)
                return 2
            manifest = write_real_background_dataset(out, backgrounds, args.count, args.seed, bar.update)
        else:
            config = PhantomConfig.family(args.family, lesion_free_fraction=args.lesion_free_fraction)
            manifest = generate_dataset(out, args.count, args.seed, max(1, args.workers), config, bar.update)
    finally:
        bar.close()
    print(f"wrote {manifest['count']} cases ({manifest['lesion_free_cases']} lesion-free) to {out} in "
          f"{manifest['seconds']} s")
    return 0
