"""The bundled sample study (IBSI STS_002 FDG-PET/CT), registered with Slicer's Sample Data module.

The files ship inside the extension (Resources/SampleData), so the data set works offline; Sample Data
still verifies each file against its SHA-256 when it copies it into its cache.
"""

import os
from pathlib import Path

CATEGORY = "VeloxSeg"
SAMPLE_NAME = "STS_002 PET/CT"
MODULE_DIR = Path(__file__).resolve().parents[1]
SAMPLE_DIR = MODULE_DIR / "Resources" / "SampleData"
THUMBNAIL = MODULE_DIR / "Resources" / "Icons" / "STS_002.png"

# (file name, node name, Slicer file type, SHA-256) - keep in sync with scripts/make_sample_data.py output
FILES = (
    ("STS_002_CT.nrrd", "STS_002_CT", "VolumeFile",
     "1c52c5a4f3b3a6d994187d028805189a50d00ec421112b03235d7241cd5e519b"),
    ("STS_002_PET_SUV.nrrd", "STS_002_PET_SUV", "VolumeFile",
     "8369353017500e3fb77d2fc776cf7aa91fa8638cf8a82b277782af743066ade5"),
    ("STS_002_GTV.seg.nrrd", "STS_002_GTV", "SegmentationFile",
     "afe4275a80af7b1dee4bf3e19091395e877e7126c0e61cbff37e7e4d9263c368"),
)


def sampleFilePath(fileName):
    return SAMPLE_DIR / fileName


def sampleDataSourceArguments():
    """Keyword arguments for SampleData.SampleDataLogic.registerCustomSampleDataSource."""
    return dict(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[sampleFilePath(name).as_uri() for name, _, _, _ in FILES],
        fileNames=[name for name, _, _, _ in FILES],
        nodeNames=[node for _, node, _, _ in FILES],
        loadFileType=[fileType for _, _, fileType, _ in FILES],
        checksums=[f"SHA256:{digest}" for _, _, _, digest in FILES],
        thumbnailFileName=str(THUMBNAIL) if os.path.exists(THUMBNAIL) else None,
    )


def registerSampleData():
    """Add the study to the Sample Data module (call at startupCompleted, in the Slicer application)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sampleDataSourceArguments())
