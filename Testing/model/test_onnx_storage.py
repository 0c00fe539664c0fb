"""onnx_storage: each weight stored once, derived constants rebuilt by nodes ONNX Runtime folds at load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from veloxseg_train.cli import main
from veloxseg_train.onnx_storage import compact_model, tensor_bytes

BUNDLED = Path(__file__).resolve().parents[2] / "VeloxSegSlicer" / "Resources" / "Models"


def interpolation(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) 1-D linear interpolation, align_corners=True (as the model's upsampling matrices)."""
    positions = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    left = np.minimum(np.floor(positions).astype(int), n_in - 2)
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), left] = 1 - (positions - left)
    matrix[np.arange(n_out), left + 1] += positions - left
    return matrix


def constants_graph() -> tuple:
    """A graph adding four constants of the kinds the export stores whole to its inputs, and the constants."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    block = rng.standard_normal((2, 27, 27)).astype(np.float32)
    d = interpolation(3, 6)
    constants = {
        "weight": weight,
        "weight_copy": weight.copy(),  # the same tensor under a second name
        "tiled": np.tile(block, (1, 2, 2)),  # a relative-position bias tiled for 2 x 2 modality blocks
        "upsample": np.kron(np.kron(d, d), d).astype(np.float32),  # (216, 27), mostly zeros
        "table": rng.standard_normal(40).astype(np.float32)[rng.integers(0, 40, (64, 64))],  # few values
    }
    inputs, outputs, nodes = [], [], []
    for name, value in constants.items():
        inputs.append(helper.make_tensor_value_info(f"x_{name}", TensorProto.FLOAT, list(value.shape)))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, list(value.shape)))
        nodes.append(helper.make_node("Add", [f"x_{name}", name], [f"y_{name}"]))
    graph = helper.make_graph(nodes, "constants", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), constants


def run(model: onnx.ModelProto, constants: dict, tmp_path: Path, optimized: Path = None) -> dict:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {f"x_{k}": np.zeros_like(v) for k, v in constants.items()}
    return dict(zip([o.name[2:] for o in session.get_outputs()], session.run(None, feed)))


def test_each_constant_is_stored_once_and_rebuilt_exactly(tmp_path):
    model, constants = constants_graph()
    before = tensor_bytes(model)
    report = compact_model(model)
    onnx.checker.check_model(model)
    assert set(report["rebuilt"]) >= {"tiled", "upsample", "table"}
    stored = {t.name for t in model.graph.initializer}
    assert "weight" in stored and "weight_copy" not in stored  # one copy, both consumers read it
    # the weight is kept, the tile is a quarter, the Kronecker factors and the palette index are tiny
    assert tensor_bytes(model) < 0.5 * before and report["bytes_after"] == tensor_bytes(model)
    got = run(model, constants, tmp_path)
    for name in ("weight", "weight_copy", "tiled", "table"):
        assert np.array_equal(got[name], constants[name]), name  # lossless
    scale = np.spacing(np.float32(np.abs(constants["upsample"]).max()))
    assert np.abs(got["upsample"] - constants["upsample"]).max() <= 2 * scale  # float32 products of the factors


def test_onnx_runtime_folds_the_rebuilding_nodes_when_the_session_loads(tmp_path):
    model, constants = constants_graph()
    compact_model(model)
    optimized = tmp_path / "optimized.onnx"
    run(model, constants, tmp_path, optimized)
    graph = onnx.load(str(optimized)).graph
    assert [n.op_type for n in graph.node] == ["Add"] * len(constants)  # inference runs the original graph


def test_float16_storage_is_cast_back_to_float32(tmp_path):
    model, constants = constants_graph()
    compact_model(model, float16=True)
    onnx.checker.check_model(model)
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    got = run(model, constants, tmp_path)
    assert got["weight"].dtype == np.float32
    assert np.array_equal(got["weight"], constants["weight"].astype(np.float16).astype(np.float32))


def test_the_bundled_model_holds_no_constant_this_pass_would_shrink():
    model = onnx.load(str(BUNDLED / "veloxseg.onnx"))
    report = compact_model(model)
    assert report["bytes_after"] == report["bytes_before"] and not report["rebuilt"]


def test_compact_command_rewrites_a_model_verified_and_refuses_a_lossy_one(tmp_path, capsys):
    # the bundled model with its constants folded back into whole tensors, as the exporter writes them
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "veloxseg.onnx")
    ort.InferenceSession(str(BUNDLED / "veloxseg.onnx"), options, providers=["CPUExecutionProvider"])
    onnx_path, manifest_path = tmp_path / "veloxseg.onnx", tmp_path / "veloxseg.json"
    manifest = json.loads((BUNDLED / "veloxseg.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    size = onnx_path.stat().st_size
    assert size > 11_000_000

    assert main(["compact", str(manifest_path), "--float16"]) == 3  # float16 storage fails the export's rule
    assert "disagrees" in capsys.readouterr().err
    assert onnx_path.stat().st_size == size and json.loads(manifest_path.read_text()) == manifest
    assert main(["compact", str(manifest_path)]) == 0
    assert onnx_path.stat().st_size < 8_000_000
    written = json.loads(manifest_path.read_text())
    assert written["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert written["provenance"]["storage"]["float16"] is False
    assert written["provenance"]["storage"]["max_abs_delta_vs_previous"] <= 1e-4
