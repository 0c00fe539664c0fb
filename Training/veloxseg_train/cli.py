"""`veloxseg-train`: the training-side command line.

Each sub-command lives in its own module under `veloxseg_train.commands`; those modules import their heavy
dependencies (torch, onnx) inside `run()`, so `veloxseg-train --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> (module under veloxseg_train.commands, one-line help)
COMMANDS = {
    "import-reference": ("import_reference", "convert a checkpoint saved by the authors' code into ours"),
    "export": ("export", "export the inference path to ONNX with its manifest, verified against PyTorch"),
    "synth": ("synth", "generate synthetic whole-body PET/CT phantoms"),
    "prepare": ("prepare", "resample AutoPET-II / case folders / phantoms onto the model grid for training"),
    "train": ("train", "train VeloxSeg with SDKT from a config file"),
    "evaluate": ("evaluate", "evaluate a checkpoint or ONNX model on a case folder, with threshold baselines"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veloxseg-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"veloxseg_train.commands.{module_name}")
        module.add_arguments(cmd_parser)
        cmd_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
