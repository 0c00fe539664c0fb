"""VeloxSeg demo: segment the bundled PET/CT sample study with the Slicer module's Logic, headless.

Runs the same code a user runs from Slicer's Python console (VeloxSegSlicerLogic.segment on MRML volume
nodes), on the PyPI package slicer-core instead of the Slicer application, and writes to OUTDIR:

    <case>.seg.nrrd       the lesion segmentation (Slicer format, CT geometry, DICOM-coded segments)
    <case>_lesions.csv    per-lesion SUVmax, SUVmean, SUVpeak, MTV, TLG, centroid + the study total
    <case>_overview.png   axial/coronal/sagittal slice views rendered by Slicer's slice-view code

    python scripts/demo.py [--out out/demo] [--ct CT --pet PET_SUV] [--model MANIFEST.json] [--device cpu]

Needs: slicer-core, SimpleITK, numpy, onnxruntime (pip install -e ".[slicer-test]" onnxruntime).
Sample data: IBSI case STS_002 (TCIA Soft-tissue-Sarcoma), CC BY 3.0, see
VeloxSegSlicer/Resources/SampleData/README.md.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "VeloxSegSlicer" / "Resources" / "SampleData"
sys.path.insert(0, str(REPO / "VeloxSegSlicer"))
# The lesion table's rule, defined once in the engine: the demo lists what `veloxseg segment` lists.
from VeloxSegSlicerLib.engine import DEFAULT_MIN_LESION_ML, DEFAULT_MIN_SUV_MAX  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Segment PET/CT lesions with the VeloxSeg Slicer Logic (headless).")
    parser.add_argument("--out", default=str(REPO / "out" / "demo"), help="output folder (default: out/demo)")
    parser.add_argument("--ct", default=str(SAMPLE_DIR / "STS_002_CT.nrrd"), help="CT image (HU)")
    parser.add_argument("--pet", default=str(SAMPLE_DIR / "STS_002_PET_SUV.nrrd"), help="PET image in SUVbw")
    parser.add_argument("--name", default=None, help="case name for the output files (default: from --ct)")
    parser.add_argument("--model", default=None, help="model manifest .json (default: the bundled model)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, 0 = all cores (default 1)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0, 0.25, 0.5)")
    parser.add_argument("--min-lesion-ml", type=float, default=DEFAULT_MIN_LESION_ML,
                        help=f"list only lesions of at least X mL (default {DEFAULT_MIN_LESION_ML:g}; 0 keeps all)")
    parser.add_argument("--min-suv-max", type=float, default=DEFAULT_MIN_SUV_MAX,
                        help=f"list only lesions whose SUVmax is at least S (default {DEFAULT_MIN_SUV_MAX:g}; "
                        "0 keeps all)")
    parser.add_argument("--one-segment", action="store_true", help="one segment for all lesions")
    parser.add_argument("--no-png", action="store_true", help="skip the rendered overview")
    return parser.parse_args(argv)


def case_name(path):
    name = Path(path).name.split(".")[0]
    for suffix in ("_CT", "_ct", "-CT"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no X server
    from VeloxSegSlicerLib import batch, rendering
    from VeloxSegSlicerLib.engine import VeloxSegError
    from VeloxSegSlicerLib.engine.errors import plural
    from VeloxSegSlicerLib.headless import HeadlessSlicer, loadVolume
    from VeloxSegSlicerLib.logic import VeloxSegSlicerLogic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or case_name(args.ct)
    started = time.perf_counter()
    with HeadlessSlicer() as app:
        # --- what a Slicer Python-console user types ---------------------------------------------
        ct = loadVolume(args.ct, f"{name}_CT")
        pet = loadVolume(args.pet, f"{name}_PET")
        logic = VeloxSegSlicerLogic(manifestPath=args.model)
        last_stage = [None]

        def progress(fraction, stage):
            if stage != last_stage[0]:
                print(f"  {100 * fraction:5.1f} %  {stage}", flush=True)
                last_stage[0] = stage

        try:
            seg, table = logic.segment(ct, pet, device=args.device, threads=args.threads, overlap=args.overlap,
                                       minLesionMl=args.min_lesion_ml, minSuvMax=args.min_suv_max,
                                       oneSegmentPerLesion=not args.one_segment, progressCallback=progress)
        except VeloxSegError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        # ----------------------------------------------------------------------------------------
        outputs = batch.saveCaseResults(name, seg, table, str(out))
        if not args.no_png:
            outputs["overview"] = str(rendering.renderSliceViews(
                app.appLogic, ct, pet, seg, out / f"{name}_overview.png",
                centerRas=rendering.lesionCenterRas(seg, table)))
        rows = table.GetTable()
        total = rows.GetNumberOfRows() - 1
        print(f"{name}: {plural(int(table.GetAttribute('VeloxSeg.LesionCount')), 'lesion')}, "
              f"total MTV {rows.GetColumnByName('MTV_mL').GetValue(total):.2f} mL, "
              f"TLG {rows.GetColumnByName('TLG_g').GetValue(total):.2f} g, "
              f"SUVmax {rows.GetColumnByName('SUVmax').GetValue(total):.2f} "
              f"({time.perf_counter() - started:.1f} s)")
        for kind, path in outputs.items():
            print(f"  {kind:12s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
