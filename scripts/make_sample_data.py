"""Rebuild the sample study shipped with the Slicer module from the IBSI soft-tissue-sarcoma case STS_002.

Writes VeloxSegSlicer/Resources/SampleData/STS_002_{CT.nrrd, PET_SUV.nrrd, GTV.seg.nrrd} (gzip NRRD:
CT as int16 HU at full resolution, PET as float32 SUVbw, the expert tumour contour as a Slicer
segmentation) and prints the SHA-256 values that VeloxSegSlicerLib/sampledata.py must list.
Data: CC BY 3.0, see Resources/SampleData/README.md for attribution.

    python scripts/make_sample_data.py [--source DIR]

--source defaults to shared/data/ibsi-sts/cases/STS_002 inside the checkout or beside it.
"""

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VeloxSegSlicer"))
OUT = REPO / "VeloxSegSlicer" / "Resources" / "SampleData"
CASE = Path("data") / "ibsi-sts" / "cases" / "STS_002"


def default_source() -> Path:
    """STS_002 in shared/ inside the checkout or beside it (where the project keeps its data)."""
    for shared in (REPO / "shared", REPO.parent / "shared"):
        if (shared / CASE).is_dir():
            return shared / CASE
    return REPO.parent / "shared" / CASE


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=default_source(), help="the IBSI STS_002 case folder")
    args = parser.parse_args()
    source = args.source
    if not (source / "CT_fullres.nii.gz").is_file():
        raise SystemExit(f"IBSI case STS_002 not found at {source} (CT_fullres.nii.gz missing); pass --source DIR")
    OUT.mkdir(parents=True, exist_ok=True)

    ct = sitk.ReadImage(str(source / "CT_fullres.nii.gz"))
    ct_array = sitk.GetArrayFromImage(ct)
    if not np.array_equal(ct_array, np.round(ct_array)):
        raise SystemExit("CT has non-integer HU values; refusing a lossy int16 conversion")
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(OUT / "STS_002_CT.nrrd"), useCompression=True)
    pet = sitk.Cast(sitk.ReadImage(str(source / "PET_SUV.nii.gz")), sitk.sitkFloat32)
    sitk.WriteImage(pet, str(OUT / "STS_002_PET_SUV.nrrd"), useCompression=True)

    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import slicer

    from VeloxSegSlicerLib import terminology
    from VeloxSegSlicerLib.headless import HeadlessSlicer, loadVolume

    with HeadlessSlicer() as app:
        ct_node = loadVolume(OUT / "STS_002_CT.nrrd", "STS_002_CT")
        mask_node = loadVolume(source / "CT_fullres_GTV_mask.nii.gz", "GTV", labelmap=True)
        seg_node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "STS_002_GTV")
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(mask_node, seg_node):
            raise SystemExit("could not import the GTV mask")
        segment = seg_node.GetSegmentation().GetNthSegment(0)
        segment.SetName("GTV (expert contour)")
        segment.SetColor(0.2, 0.9, 1.0)
        segment.SetTerminology(terminology.lesionTerminologyEntry())
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(OUT / "STS_002_GTV.seg.nrrd"))
        storage.SetUseCompression(True)
        if not storage.WriteData(seg_node):
            raise SystemExit("could not write the segmentation")

    for name in ("STS_002_CT.nrrd", "STS_002_PET_SUV.nrrd", "STS_002_GTV.seg.nrrd"):
        path = OUT / name
        print(f"{name}  {path.stat().st_size:>8d} bytes  SHA256:{sha256(path)}")


if __name__ == "__main__":
    main()
