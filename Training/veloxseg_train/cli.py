"""`veloxseg-train`: the training-side command line.

Each sub-command lives in its own module under `veloxseg_train.commands`, imported only when that command
runs; the modules import their heavy dependencies (torch, onnx) inside `run()`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> (module under veloxseg_train.commands, one-line help)
COMMANDS = {
    "import-reference": ("import_reference", "convert a checkpoint saved by the authors' code into ours"),
    "export": ("export", "export the inference path to ONNX with its manifest, verified against PyTorch"),
    "compact": ("compact", "store an exported model's weights once each (optionally float16), verified"),
    "synth": ("synth", "generate synthetic whole-body PET/CT phantoms"),
    "prepare": ("prepare", "resample AutoPET-II / case folders / phantoms onto the model grid for training"),
    "train": ("train", "train VeloxSeg with SDKT from a config file"),
    "evaluate": ("evaluate", "evaluate a checkpoint or ONNX model on a case folder, with threshold baselines"),
    "calibrate": ("calibrate", "choose the lesion threshold on whole validation volumes (optionally into a manifest)"),
    "candidates": ("candidates", "collect lesion candidates with their features and labels for the second look"),
    "train-classifier": ("train_classifier", "train the second-look candidate classifier and export it to ONNX"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of `command` is imported (so one command's dependencies can't break another)."""
    parser = argparse.ArgumentParser(prog="veloxseg-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"veloxseg_train.commands.{module_name}")
            module.add_arguments(cmd_parser)
            cmd_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
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
