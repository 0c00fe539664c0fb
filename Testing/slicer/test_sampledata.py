"""The bundled sample study as Slicer's Sample Data module gets it: registration arguments, file:// download
with checksum, loading, and automatic CT/PET selection on it."""

import hashlib
import sys
import types
import urllib.request
from pathlib import Path

import pytest
import slicer

from VeloxSegSlicerLib import inputs, sampledata
from VeloxSegSlicerLib.headless import loadVolume


@pytest.fixture
def registered(monkeypatch):
    calls = []
    fake = types.ModuleType("SampleData")
    fake.SampleDataLogic = type("SampleDataLogic", (), {
        "registerCustomSampleDataSource": staticmethod(lambda **kwargs: calls.append(kwargs))})
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    sampledata.registerSampleData()
    assert len(calls) == 1
    return calls[0]


def test_registration_arguments(registered):
    assert registered["category"] == "VeloxSeg" and registered["sampleName"] == sampledata.SAMPLE_NAME
    count = len(registered["uris"])
    assert count == 3
    for key in ("fileNames", "nodeNames", "loadFileType", "checksums"):
        assert len(registered[key]) == count, key
    assert registered["loadFileType"] == ["VolumeFile", "VolumeFile", "SegmentationFile"]
    assert all(c.startswith("SHA256:") and len(c) == 7 + 64 for c in registered["checksums"])
    assert Path(registered["thumbnailFileName"]).is_file()


def test_download_checksum_load_and_auto_selection(app, registered, tmp_path):
    loaded = {}
    for uri, file_name, node_name, file_type, checksum in zip(
            registered["uris"], registered["fileNames"], registered["nodeNames"], registered["loadFileType"],
            registered["checksums"]):
        assert uri.startswith("file://")
        target = tmp_path / file_name
        urllib.request.urlretrieve(uri, target)  # what SampleData.downloadFile does
        assert "SHA256:" + hashlib.sha256(target.read_bytes()).hexdigest() == checksum
        if file_type == "VolumeFile":
            loaded[node_name] = loadVolume(target, node_name)
        else:
            loaded[node_name] = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
                str(target), False, node_name)
    ct, pet = loaded["STS_002_CT"], loaded["STS_002_PET_SUV"]
    assert inputs.guessCtAndPet() == (ct, pet)
    assert inputs.checkInputs(ct, pet) == ""
    assert loaded["STS_002_GTV"].GetSegmentation().GetNumberOfSegments() == 1
