"""Model loading: manifest validation, SHA-256 check before any session, onnxruntime missing, devices."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from engine_helpers import build_threshold_onnx, write_manifest

from VeloxSegSlicerLib.engine import ModelError, load_model
from VeloxSegSlicerLib.engine.errors import InputError
from VeloxSegSlicerLib.engine.inference.manifest import default_manifest_path, load_manifest


@pytest.fixture()
def model_copy(tmp_path, model_dir):
    for name in ("threshold.onnx", "threshold.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    return tmp_path / "threshold.json"


def test_loads_and_reports_cpu(model_copy):
    model = load_model(model_copy, threads=1)
    assert model.device == "cpu" and model.fallback_reason is None
    assert model.patch_size == (96, 96, 96)
    assert model.manifest.normalization["PET"]["clip_high"] == 30.0


def test_default_manifest_path_is_in_the_module_resources():
    path = default_manifest_path()
    assert path.parts[-4:] == ("VeloxSegSlicer", "Resources", "Models", "veloxseg.json")


def test_tampered_model_is_refused_before_a_session_exists(model_copy, monkeypatch):
    onnx_path = model_copy.with_suffix(".onnx")
    data = bytearray(onnx_path.read_bytes())
    data[-1] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    import onnxruntime

    def no_session(*args, **kwargs):
        raise AssertionError("a session was created for an unverified model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    with pytest.raises(ModelError, match="SHA-256") as error:
        load_model(model_copy)
    assert "reinstall" in str(error.value)


def test_missing_model_file(model_copy):
    model_copy.with_suffix(".onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(model_copy)


def test_missing_manifest(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("format", "other/9", "format"),
        ("onnx_sha256", "abc", "onnx_sha256"),
        ("spacing_xyz_mm", [2.0, -1.0, 3.0], "positive"),
        ("modalities", ["PET", "CT"], "modalities"),
        ("normalization", {"CT": {"clip_low": 0, "clip_high": 1, "mean": 0, "std": 0}}, "std"),
    ],
)
def test_invalid_manifest_fields_are_named(model_copy, field, value, match):
    data = json.loads(model_copy.read_text())
    data[field] = value
    model_copy.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=match):
        load_manifest(model_copy)


def test_onnxruntime_missing_says_how_to_install(model_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ModelError) as error:
        load_model(model_copy)
    message = str(error.value)
    assert "pip install onnxruntime" in message and "slicer.util.pip_install('onnxruntime')" in message


def test_gpu_falls_back_to_cpu_and_says_so(model_copy):
    import onnxruntime

    model = load_model(model_copy, device="gpu")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and model.device == "gpu":
        pytest.skip("a usable GPU is present")
    assert model.device == "cpu"
    assert "GPU" in model.fallback_reason and "CPU" in model.fallback_reason


def test_bad_device_and_threads(model_copy):
    with pytest.raises(InputError):
        load_model(model_copy, device="tpu")
    with pytest.raises(InputError):
        load_model(model_copy, threads=-1)


def test_graph_not_matching_manifest_names(tmp_path):
    onnx_path = build_threshold_onnx(tmp_path / "m.onnx")
    manifest = write_manifest(onnx_path)
    data = json.loads(manifest.read_text())
    data["output_name"] = "probabilities"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="does not match its manifest"):
        load_model(manifest)
