"""Fixtures for the Slicer-module tests: a real MRML scene on slicer-core, a tiny test model, studies.

The module's Logic runs here exactly as in Slicer: ``slicer.mrmlScene`` and ``slicer.modules.*.logic()``
come from VeloxSegSlicerLib.headless; ``slicer.ScriptedLoadableModule`` comes from stubs/ (slicer-core
lacks it). Any VTK/MRML error message during a test fails that test.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTING = HERE.parent
REPO = TESTING.parent
MODULE_DIR = REPO / "VeloxSegSlicer"

# Testing/ itself must never be on sys.path: slicer-core's `slicer` namespace package would absorb
# Testing/slicer/ and import these test files as slicer.* modules.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTING]
for path in (HERE / "stubs", MODULE_DIR, TESTING / "helpers", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import slicer  # noqa: E402 (after the sys.path set-up above)
import vtk  # noqa: E402

if "slicer.ScriptedLoadableModule" not in sys.modules:
    # slicer was imported before this conftest put the stub folder on sys.path: load the stub by hand
    spec = importlib.util.spec_from_file_location("slicer.ScriptedLoadableModule",
                                                  HERE / "stubs" / "slicer" / "ScriptedLoadableModule.py")
    stub = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = stub
    spec.loader.exec_module(stub)
    slicer.ScriptedLoadableModule = stub

import onnx_models  # noqa: E402

from VeloxSegSlicerLib.headless import HeadlessSlicer  # noqa: E402

# The threshold test model: lesion = SUV > 2.5 on the model grid (see Testing/helpers/onnx_models.py).
SUV_THRESHOLD = 2.5
MODEL_SPACING_XYZ = (3.0, 3.0, 3.0)


class VtkErrorCollector:
    """Collects VTK/MRML error and warning messages (they do not raise in Python)."""

    def __init__(self):
        self.errors = []
        self.warnings = []
        self._window = vtk.vtkOutputWindow.GetInstance()
        self._tags = [
            self._window.AddObserver("ErrorEvent", self._on_error),
            self._window.AddObserver("WarningEvent", self._on_warning),
        ]

    @vtk.calldata_type(vtk.VTK_STRING)
    def _on_error(self, caller, event, calldata):
        self.errors.append(calldata)

    @vtk.calldata_type(vtk.VTK_STRING)
    def _on_warning(self, caller, event, calldata):
        self.warnings.append(calldata)

    def close(self):
        for tag in self._tags:
            self._window.RemoveObserver(tag)


@pytest.fixture
def app():
    """A fresh headless Slicer (scene + module logics); fails the test on any VTK error message."""
    collector = VtkErrorCollector()
    application = HeadlessSlicer()
    application.vtkErrors = collector
    try:
        yield application
    finally:
        application.close()
        collector.close()
    assert not collector.errors, f"VTK/MRML errors during the test: {collector.errors}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Manifest path of the threshold test model (valid sha256, architecture.md contract)."""
    folder = tmp_path_factory.mktemp("tiny_model")
    return onnx_models.build_threshold_model(folder, suv_threshold=SUV_THRESHOLD, spacing_xyz_mm=MODEL_SPACING_XYZ)


@pytest.fixture
def logic(tiny_model):
    from VeloxSegSlicerLib.logic import VeloxSegSlicerLogic

    return VeloxSegSlicerLogic(manifestPath=str(tiny_model))
