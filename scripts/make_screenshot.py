"""Render the extension screenshot and the Sample Data thumbnail with Slicer's slice views (slicer-core).

Shows the bundled sample study (IBSI STS_002, CC BY 3.0): CT in grey, FDG-PET (SUV 0-8) in PET-Heat,
and the outline of a lesion segmentation: by default the expert tumour contour shipped with the
sample data; pass ``--segmentation out/demo/STS_002.seg.nrrd`` to show VeloxSeg's own result.

    python scripts/make_screenshot.py [--segmentation FILE.seg.nrrd]

Writes Screenshots/VeloxSeg_STS_002.png (3 views) and VeloxSegSlicer/Resources/Icons/STS_002.png.
"""

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "VeloxSegSlicer" / "Resources" / "SampleData"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmentation", default=str(SAMPLE_DIR / "STS_002_GTV.seg.nrrd"))
    parser.add_argument("--screenshot", default=str(REPO / "Screenshots" / "VeloxSeg_STS_002.png"))
    parser.add_argument("--thumbnail", default=str(REPO / "VeloxSegSlicer" / "Resources" / "Icons" / "STS_002.png"))
    args = parser.parse_args(argv)
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    sys.path.insert(0, str(REPO / "VeloxSegSlicer"))
    import slicer

    from VeloxSegSlicerLib import rendering, results
    from VeloxSegSlicerLib.headless import HeadlessSlicer, loadVolume

    with HeadlessSlicer() as app:
        ct = loadVolume(SAMPLE_DIR / "STS_002_CT.nrrd", "STS_002_CT")
        pet = loadVolume(SAMPLE_DIR / "STS_002_PET_SUV.nrrd", "STS_002_PET_SUV")
        seg = slicer.modules.segmentations.logic().LoadSegmentationFromFile(args.segmentation, False, "lesions")
        if seg is None:
            raise SystemExit(f"cannot read {args.segmentation}")
        results.showResults(ct, pet, seg)
        center = rendering.lesionCenterRas(seg)
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        rendering.renderSliceViews(app.appLogic, ct, pet, seg, args.screenshot, centerRas=center, size=400)
        rendering.renderSliceViews(app.appLogic, ct, pet, seg, args.thumbnail, centerRas=center, size=260,
                                   orientations=("Axial",))
    print(args.screenshot)
    print(args.thumbnail)


if __name__ == "__main__":
    main()
