"""Fixtures of the engine tests: the tiny threshold models of engine_helpers and a loaded model."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import build_threshold_onnx, write_manifest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    write_manifest(build_threshold_onnx(folder / "threshold.onnx"))
    write_manifest(build_threshold_onnx(folder / "ramp.onnx", ramp=True))
    return folder


@pytest.fixture(scope="session")
def manifest_path(model_dir) -> Path:
    return model_dir / "threshold.json"


@pytest.fixture(scope="session")
def model(manifest_path):
    from VeloxSegSlicerLib.engine import load_model

    return load_model(manifest_path, threads=1)
