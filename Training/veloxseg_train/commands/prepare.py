"""`veloxseg-train prepare`: resample AutoPET-II / case folders / phantoms onto the model grid (docs/data.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="prepared-dataset folder (PREP)")
    parser.add_argument("--autopet", type=Path, action="append", default=[], metavar="DIR",
                        help="AutoPET-II in nnU-Net raw layout (imagesTr/, labelsTr/); repeatable")
    parser.add_argument("--cases", type=Path, action="append", default=[], metavar="DIR",
                        help="folder with one sub-folder per case (CT, PET, label); repeatable")
    parser.add_argument("--synthetic", type=Path, action="append", default=[], metavar="DIR",
                        help="folder written by `veloxseg-train synth`; repeatable")
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.036, 2.036, 3.0), metavar=("X", "Y", "Z"),
                        help="model grid spacing in mm (default 2.036 2.036 3.0)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="per source (default 0.15)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="per source (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--pet-clip-high", type=float, default=30.0, help="PET clip ceiling in SUV (default 30)")
    parser.add_argument("--compress", action="store_true",
                        help="compress the case files (about 40%% smaller, slower to write and load)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unusable cases (listed in dataset.json 'excluded') instead of failing")
    parser.add_argument("--normalization", type=Path, metavar="JSON",
                        help="keep these normalisation constants instead of computing them: a JSON file with a "
                             "'normalization' entry (a run's data_fingerprint.json, a dataset.json, a model "
                             "manifest), so a run resumed on regenerated data scales its inputs as before")
    parser.add_argument("--force", action="store_true", help="replace an existing prepared dataset in --out")


def _given_normalization(path: Path) -> dict:
    """The 'normalization' entry of a JSON file, checked for what the loader uses (ValueError otherwise)."""
    try:
        constants = json.loads(path.read_text(encoding="utf-8"))["normalization"]
        for modality in ("CT", "PET"):
            for key in ("clip_low", "clip_high", "mean", "std"):
                float(constants[modality][key])
        if float(constants["CT"]["std"]) <= 0 or float(constants["PET"]["std"]) <= 0:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--normalization {path}: not a JSON file with a complete 'normalization' entry (CT and "
                         f"PET clip_low, clip_high, mean, std > 0) ({type(exc).__name__})") from None
    return constants


def run(args: argparse.Namespace) -> int:
    from veloxseg_train.commands.progress import Progress
    from veloxseg_train.data.case import DataError
    from veloxseg_train.data.prepare import DatasetError, PrepareOptions, prepare_dataset
    from veloxseg_train.data.prepared import CASES_DIR, DATASET_FILE
    from veloxseg_train.data.sources import find_all

    if not (args.autopet or args.cases or args.synthetic):
        print("error: give at least one of --autopet, --cases, --synthetic", file=sys.stderr)
        return 2
    if (args.out / DATASET_FILE).exists():
        if not args.force:
            print(f"error: {args.out} already holds a prepared dataset; pass --force to replace it",
                  file=sys.stderr)
            return 2
        (args.out / DATASET_FILE).unlink()
        for old in (args.out / CASES_DIR).glob("*.npz"):
            old.unlink()
    try:
        constants = _given_normalization(args.normalization) if args.normalization else None
        cases = find_all(args.autopet, args.cases, args.synthetic)
        options = PrepareOptions(spacing_xyz=tuple(args.spacing), compress=args.compress,
                                 pet_clip_high=args.pet_clip_high, val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, seed=args.seed,
                                 workers=max(1, args.workers), skip_bad=args.skip_bad, normalization=constants)
        bar = Progress("prepare", len(cases))
        try:
            dataset = prepare_dataset(cases, args.out, options, bar.update)
        finally:
            bar.close()
    except (DataError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = dataset["statistics"]["splits"]
    print(f"prepared {len(dataset['cases'])} cases into {args.out}: {counts['train']} train, {counts['val']} "
          f"val, {counts['test']} test")
    for error in dataset["excluded"]:
        print(f"excluded: {error}", file=sys.stderr)
    norm = dataset["normalization"]
    print("normalisation (train split): CT clip [{clip_low:g}, {clip_high:g}] mean {mean:g} std {std:g}; "
          .format(**norm["CT"]) + "PET clip [{clip_low:g}, {clip_high:g}] mean {mean:g} std {std:g}"
          .format(**norm["PET"]))
    return 0
