"""`veloxseg`: segment one PET/CT study, a folder of studies, or show the model.

Exit codes: 0 success; 2 usage error or bad input; 3 model problem (missing, tampered, onnxruntime
missing); 4 runtime failure; 130 cancelled or interrupted. Nothing is written when a run fails.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import traceback

from ..errors import Cancelled, InputError, ModelError, VeloxSegError, plural
from ..inference.manifest import load_manifest, verify_model_file
from ..inference.organs import site_counts
from ..inference.pipeline import (
    DEFAULT_MIN_LESION_ML,
    DEFAULT_MIN_SUV_MAX,
    ReleasableImage,
    SegmentOptions,
    segment_study,
)
from ..inference.runtime import load_model
from ..inference.sliding_window import BLENDINGS
from ..inputs import study_inputs
from ..inputs.imageio import LABEL_SUFFIXES, read_ct
from ..inputs.suv import read_pet_suv
from . import batch as batch_module
from .outputs import AtomicOutputs, check_label_path, check_writable
from .progress import ProgressBar

EXIT_OK, EXIT_INPUT, EXIT_MODEL, EXIT_RUNTIME, EXIT_CANCELLED = 0, 2, 3, 4, 130

# `veloxseg batch --help`, in a user's terms (the engine modules' docstrings are written for developers);
# the name rule that follows it is study_inputs' own text, so the help and the code cannot drift apart.
BATCH_EPILOG = """\
Studies run one after another in this process (--workers 1), in N local worker processes (--workers N,
default one per core), or as tasks on a running Dask cluster (--scheduler tcp://HOST:PORT).

Outputs go to <output>/<study>/lesions.nii.gz (the label on the CT grid), lesions.csv (per-lesion
statistics, as `veloxseg segment --stats`) and veloxseg_run.json (the study's record of its inputs, model
and options, written last: a study without it is not finished). A rerun skips a study whose record
matches the same inputs, model and options. <output>/summary.csv has one row per study; a failing study
is reported on stderr and in the summary and the others continue; the run ends with a tally on stderr.
The same from Python and 3D Slicer's console: run_batch (docs/cli.md).

"""


def _checked(convert, ok, requirement: str):
    """An argparse type: `convert` the text, then require `ok(value)`, else say what is needed."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    return parse


_threads = _checked(int, lambda v: v >= 0, "a whole number >= 0 (0 = all cores)")
_overlap = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_volume = _checked(float, lambda v: 0.0 <= v < float("inf"), "a number of mL >= 0")
_suv = _checked(float, lambda v: 0.0 <= v < float("inf"), "an SUV >= 0")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_threads, default=1, metavar="N", help="CPU threads (default 1, 0 = all)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu needs onnxruntime-gpu")
    parser.add_argument(
        "--overlap", type=_overlap, default=0.25, metavar="F", help="sliding-window overlap (default 0.25)"
    )
    parser.add_argument(
        "--blending", choices=BLENDINGS, default="uniform",
        help="how overlapping windows are averaged: uniform (default, as the reference) or gaussian (centre-weighted)"
    )
    parser.add_argument(
        "--min-lesion-ml", type=_volume, default=DEFAULT_MIN_LESION_ML, metavar="X",
        help=f"report only lesions of at least X mL (default {DEFAULT_MIN_LESION_ML:g}; 0 keeps all)"
    )
    parser.add_argument(
        "--min-suv-max", type=_suv, default=DEFAULT_MIN_SUV_MAX, metavar="S",
        help=f"report only lesions whose SUVmax is at least S (default {DEFAULT_MIN_SUV_MAX:g}; 0 keeps all)"
    )
    parser.add_argument("--model", metavar="MANIFEST", help="model manifest .json (default: the bundled model)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veloxseg",
        description="Fast PET/CT lesion segmentation (VeloxSeg, ONNX Runtime).",
        epilog="Exit codes: 0 ok, 2 bad input or usage, 3 model problem, 4 runtime failure, 130 cancelled.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    segment = sub.add_parser(
        "segment",
        help="segment one study",
        description="Segment lesions in one PET/CT study. CT and PET: NIfTI, NRRD, MHA or a DICOM series folder "
        "(a DICOM PET is converted to SUVbw from its header; a file PET must already be SUV).",
    )
    segment.add_argument("--ct", required=True, help="CT volume (HU)")
    segment.add_argument("--pet", required=True, help="PET volume (SUVbw) or DICOM PET series folder")
    segment.add_argument("--out", required=True,
                         help="label image on the CT grid; the format follows the extension: "
                         f"{', '.join(LABEL_SUFFIXES)} (.seg.nrrd: a segmentation for 3D Slicer)")
    _add_run_options(segment)
    segment.add_argument("--stats", metavar="STATS.csv", help="write per-lesion statistics to this CSV")
    segment.add_argument("--organs", metavar="ORGANS",
                         help="also write the model's organ map on the CT grid (uint8 organ codes, as the manifest's "
                         "organ_names; needs a model with an organ output); the format follows the extension")

    batch = sub.add_parser(
        "batch",
        help="segment every study subfolder of a folder",
        description="Segment one study per subfolder of --input.",
        epilog=BATCH_EPILOG + study_inputs.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("--input", required=True, metavar="DIR", help="folder with one subfolder per study")
    batch.add_argument("--output", required=True, metavar="DIR", help="results folder (created if missing)")
    batch.add_argument("--ct-pattern", metavar="GLOB", help="glob for the CT of each study (instead of the names)")
    batch.add_argument("--pet-pattern", metavar="GLOB", help="glob for the PET of each study (instead of the names)")
    batch.add_argument(
        "--workers", type=_threads, default=None, metavar="N",
        help="local worker processes, one study each at a time (default 0 = one per core, as memory allows; "
        "1 = one study after another in this process)",
    )
    batch.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT",
        help="run each study as a task on this running Dask cluster (pip install 'veloxseg[cluster]'); "
        "inputs and outputs must be on a filesystem the workers share",
    )
    _add_run_options(batch)

    info = sub.add_parser("info", help="show the model and check its file")
    info.add_argument("--model", metavar="MANIFEST", help="model manifest .json (default: the bundled model)")
    info.add_argument("--verbose", action="store_true", help="also print the whole manifest (provenance, ...)")
    return parser


def _load_model(args):
    model = load_model(args.model, device=args.device, threads=args.threads)
    if model.threads_note:
        print(f"note: {model.threads_note}", file=sys.stderr)
    if model.fallback_reason:
        print(f"warning: {model.fallback_reason}", file=sys.stderr)
    return model


def _options(args) -> SegmentOptions:
    return SegmentOptions(overlap=args.overlap, blending=args.blending, min_lesion_ml=args.min_lesion_ml,
                          min_suv_max=args.min_suv_max)


def command_segment(args, cancelled=None) -> int:
    out = check_label_path(args.out)  # before any work: a long run must not fail at the very end
    stats = check_writable(args.stats, "Statistics file", (".csv",)) if args.stats else None
    if stats is not None and stats.resolve() == out.resolve():
        raise InputError("--stats and --out name the same file.")
    organs = check_writable(args.organs, "Organ map", LABEL_SUFFIXES) if getattr(args, "organs", None) else None
    if organs is not None and organs.resolve() in {out.resolve(), stats.resolve() if stats else None}:
        raise InputError("--organs names the same file as --out or --stats.")
    ct = ReleasableImage(read_ct(args.ct))  # segment_study frees the CT's voxels once resampled
    pet = read_pet_suv(args.pet)
    model = _load_model(args)
    if organs is not None and not model.has_organs:
        raise InputError(f"--organs needs a model with an organ output; {model.manifest.model_name} "
                         f"{model.manifest.model_version} ({model.manifest.path}) has none.")
    bar = ProgressBar()
    started = time.perf_counter()
    try:
        result = segment_study(ct, pet, model, _options(args), progress=bar, cancelled=cancelled)
    finally:
        bar.close()
    del pet
    with AtomicOutputs() as outputs:
        outputs.write_label(result.label_ct, out)
        if stats is not None:
            outputs.write_stats(result.lesions, stats)
        if organs is not None:  # nearest neighbour onto the CT grid, which label_ct carries
            outputs.write_label(result.organ_map.on_grid(result.label_ct, model.threads), organs)
    totals = result.totals
    absent = len(result.not_on_ct)
    sites = ", ".join(f"{site} {count}" for site, count in site_counts(result.lesions))
    sites = f" ({sites})" if sites else ""  # e.g. "3 lesions (liver 2, lung 1)" when the model names sites
    print(
        f"{plural(totals.lesion_count, 'lesion')}{sites}, total MTV {totals.total_mtv_ml:.2f} mL, total TLG "
        f"{totals.total_tlg:.2f}; {plural(result.windows_run, 'patch', 'patches')} on {result.device} in "
        f"{time.perf_counter() - started:.1f} s"
        + (f"; {absent} not on the CT label (PET statistics only)" if absent else "")
    )
    for lesion in result.lesions:
        r, a, s = lesion.centroid_ras_mm
        reason = result.not_on_ct.get(lesion.id)
        print(
            f"  lesion {lesion.id}: MTV {lesion.mtv_ml:.2f} mL, SUVmax {lesion.suv_max:.2f}, SUVpeak "
            f"{lesion.suv_peak:.2f}, SUVmean {lesion.suv_mean:.2f}, TLG {lesion.tlg:.2f}, "
            f"centroid RAS ({r:.1f}, {a:.1f}, {s:.1f}) mm"
            + (f", site {lesion.site}" if lesion.site else "")
            + (f"; not on the CT label: {reason}" if reason else "")
        )
    print("wrote " + " and ".join(str(path) for path in (out, stats, organs) if path is not None))
    for warning in result.warnings:  # e.g. a CT covering only part of the PET
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def command_batch(args, cancelled=None) -> int:
    if args.scheduler and args.workers is not None:
        raise InputError("--workers is for local runs; with --scheduler the Dask cluster's workers run the "
                         "studies (start them with `dask worker --nthreads 1`).")
    report = batch_module.run_batch(
        args.input,
        args.output,
        args.model,
        _options(args),
        workers=0 if args.workers is None else args.workers,
        scheduler=args.scheduler,
        device=args.device,
        threads=args.threads,
        ct_pattern=args.ct_pattern,
        pet_pattern=args.pet_pattern,
        cancelled=cancelled,
    )
    return report.exit_code  # the tally is on stderr; 130 when cancelled (finished studies are kept)


def command_info(args) -> int:
    manifest = load_manifest(args.model)
    spacing = " x ".join(f"{s:g}" for s in manifest.spacing_xyz_mm)
    patch = " x ".join(str(p) for p in manifest.patch_size_zyx)
    print(f"model: {manifest.raw.get('model_name', '?')} {manifest.raw.get('model_version', '')} ({manifest.path})")
    print(f"grid: {spacing} mm (x, y, z), patch {patch} voxels (z, y, x)")
    if manifest.has_organs:
        sites = ", ".join(dict.fromkeys(manifest.organ_sites))
        print(f"sites: named for each lesion from {len(manifest.organ_names)} organ classes (output "
              f"'{manifest.organ_output}', 1/{manifest.organ_downsampling} of the grid): {sites}")
    else:
        print("sites: not named (this model has no organ output; the lesion tables' site column stays empty)")
    if getattr(args, "verbose", False):
        print(json.dumps(manifest.raw, indent=2))
    try:
        verify_model_file(manifest)
        print(f"model file: {manifest.onnx_path} (SHA-256 verified)")
        status = EXIT_OK
    except ModelError as exc:
        print(f"model file: NOT USABLE: {exc}")
        status = EXIT_MODEL
    try:
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__}, providers: {', '.join(onnxruntime.get_available_providers())}")
    except ImportError:
        print("onnxruntime: not installed (pip install onnxruntime)")
    return status


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` cancels cleanly like Ctrl-C
    try:
        if args.command == "segment":
            return command_segment(args)
        if args.command == "batch":
            return command_batch(args)
        return command_info(args)
    except (Cancelled, KeyboardInterrupt):
        print("\nCancelled; no output written.", file=sys.stderr)
        return EXIT_CANCELLED
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ModelError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except VeloxSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # e.g. a full disk while writing the statistics; the partial files are removed
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}. Nothing was written.", file=sys.stderr)
        return EXIT_RUNTIME
    except MemoryError:
        print("error: out of memory. Close other programs or use a machine with more RAM.", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:  # report, with the trace, anything unforeseen as a runtime failure
        traceback.print_exc(file=sys.stderr)
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
