"""`veloxseg-train import-reference CHECKPOINT --out OURS`: the authors' weights in this project's format."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a state_dict saved by the authors' code, or a dict holding one")
    parser.add_argument("--out", type=Path, required=True, help="where to write this project's checkpoint (.pt)")
    parser.add_argument("--preset", choices=("autopet", "hecktor"), default="autopet",
                        help="network configuration the weights were trained with (default: autopet, 2x96^3)")
    parser.add_argument("--normalization", type=Path,
                        help="JSON with the CT/PET normalisation constants to store with the weights "
                             "(format in docs/architecture.md); needed later by `export`")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError, read_tensor_file, save_checkpoint
    from ..model import VeloxSeg, VeloxSegConfig
    from ..reference import CheckpointMismatchError, convert_reference_state_dict, unwrap_state_dict

    normalization = None
    if args.normalization:
        try:
            normalization = json.loads(args.normalization.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: cannot read normalisation constants from {args.normalization}: {exc}", file=sys.stderr)
            return 2
    config = VeloxSegConfig.autopet() if args.preset == "autopet" else VeloxSegConfig.hecktor()
    model = VeloxSeg(config)
    try:
        reference = unwrap_state_dict(read_tensor_file(args.checkpoint))
        model.load_state_dict(convert_reference_state_dict(reference, model))
    except (CheckpointError, CheckpointMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = {"imported_from": str(args.checkpoint), "source": "authors' VeloxSeg implementation"}
    save_checkpoint(args.out, model, normalization, extra)
    print(f"Imported {len(reference)} tensors from {args.checkpoint} -> {args.out} "
          f"({model.inference_parameters():,} inference parameters)")
    if normalization is None:
        print("note: no normalisation constants stored; pass --normalization to `export`.")
    return 0
