"""`veloxseg-train import-reference` and `veloxseg-train export`, end to end through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from veloxseg_train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from veloxseg_train.cli import main
from veloxseg_train.export import agreement_report
from veloxseg_train.model import VeloxSeg

NORMALIZATION = {"CT": {"clip_low": -1000.0, "clip_high": 1000.0, "mean": 10.0, "std": 400.0},
                 "PET": {"clip_low": 0.0, "clip_high": 30.0, "mean": 1.0, "std": 2.0}}


def test_import_reference_wrapped_state_dict(tmp_path, reference_state_dict, capsys):
    source = tmp_path / "authors.pth"
    torch.save({"epoch": 299, "model_state_dict": reference_state_dict}, source)
    norm = tmp_path / "norm.json"
    norm.write_text(json.dumps(NORMALIZATION))
    out = tmp_path / "ours.pt"
    assert main(["import-reference", str(source), "--out", str(out), "--normalization", str(norm)]) == 0
    payload = load_checkpoint(out)
    assert payload["normalization"] == NORMALIZATION
    model = model_from_checkpoint(payload)
    table = reference_state_dict["encoder.encoder_attn.layers.1.blocks.0.attn.position_embedding."
                                 "relative_position_bias_table"]
    assert torch.equal(model.encoder.transformer.stages[1].attn.rel_pos.table, table)
    v_weight = reference_state_dict["encoder.encoder_attn.layers.2.blocks.0.attn.qkv_proj.1.2.weight"]
    assert torch.equal(model.encoder.transformer.stages[2].attn.qkv[1].v.weight, v_weight)


def test_import_reference_lists_missing_and_unexpected_keys(tmp_path, reference_state_dict, capsys):
    broken = dict(reference_state_dict)
    del broken["decoder.out_conv1.0.weight"]
    broken["decoder.extra_head.weight"] = torch.zeros(3)
    source = tmp_path / "broken.pth"
    torch.save(broken, source)
    out = tmp_path / "ours.pt"
    assert main(["import-reference", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "decoder.extra_head.weight" in err and "seg_decoder.head.conv.weight" in err
    assert not out.exists()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the hostile file, expected
def test_import_reference_never_unpickles_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pth"
    torch.save({"state_dict": _Exploit(marker)}, source)
    assert main(["import-reference", str(source), "--out", str(tmp_path / "o.pt")]) == 2
    assert not marker.exists()
    assert "nothing in it was executed" in capsys.readouterr().err

    plain = tmp_path / "notes.txt"
    plain.write_text("not a checkpoint")
    assert main(["import-reference", str(plain), "--out", str(tmp_path / "o.pt")]) == 2
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    assert main(["import-reference", str(tmp_path / "raw.pkl"), "--out", str(tmp_path / "o.pt")]) == 2


def test_export_agreement_scales_with_the_logits_and_refuses_a_wrong_graph():
    rng = np.random.default_rng(0)
    expected = rng.normal(0, 8, (1, 2, 16, 16, 16)).astype(np.float32)
    scale = np.abs(expected).max()
    # kernel rounding on another CPU: errors of a few 1e-5 of the logits' scale pass
    noisy = expected + rng.uniform(-3e-5, 3e-5, expected.shape).astype(np.float32) * scale
    assert agreement_report(noisy, expected)["agrees"]
    # a wrong graph (1% of the scale off) does not, nor does a NaN
    assert not agreement_report(expected + 0.01 * scale, expected)["agrees"]
    broken = expected.copy()
    broken[0, 0, 3, 3, 3] = np.nan
    assert not agreement_report(broken, expected)["agrees"]
    # a decided voxel whose classes swap fails even if the error is small elsewhere
    swapped = expected.copy()
    decided = np.argmax(np.abs(expected[0, 1] - expected[0, 0]))
    z, y, x = np.unravel_index(decided, expected.shape[2:])
    swapped[0, :, z, y, x] = swapped[0, ::-1, z, y, x]
    report = agreement_report(swapped, expected)
    assert not report["argmax_identical"] and not report["agrees"]


def test_export_writes_verified_onnx_and_manifest(tmp_path, capsys):
    torch.manual_seed(3)
    model = VeloxSeg()
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, NORMALIZATION, {"data": "unit test"})
    onnx_path = tmp_path / "out" / "veloxseg.onnx"
    assert main(["export", str(checkpoint), "--out", str(onnx_path), "--dynamic-batch"]) == 0
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert manifest["opset"] >= 17 and manifest["patch_size_zyx"] == [96, 96, 96]
    assert manifest["modalities"] == ["CT", "PET"] and manifest["class_names"] == ["background", "lesion"]
    assert manifest["normalization"] == NORMALIZATION
    provenance = manifest["provenance"]
    assert provenance["checkpoint"] == "model.pt" and provenance["data"] == "unit test"
    assert manifest["dynamic_batch"] is True
    for batch in ("batch_1", "batch_2"):
        check = provenance["verification"][batch]
        assert check["max_abs_delta"] <= check["limit"] and check["argmax_identical"]

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 2, 96, 96, 96)
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    got = session.run(["logits"], {"image": x.numpy()})[0]
    assert got.shape == (2, 2, 96, 96, 96)
    assert agreement_report(got, expected)["agrees"]
    # no large tensor is stored twice (each export module holds its constants once, as buffers)
    graph = onnx.load(str(onnx_path)).graph
    tensors = [n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    big = [numpy_helper.to_array(t).tobytes() for t in [*tensors, *graph.initializer] if t.ByteSize() > 4096]
    assert big and len(set(big)) == len(big)


def test_export_refuses_a_checkpoint_without_normalisation(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "model.pt", VeloxSeg(), None)
    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "normalisation" in capsys.readouterr().err
    assert not out.exists()


def test_export_of_a_model_with_organ_head_has_both_outputs_verified(tmp_path):
    from veloxseg_train.data.organs import ORGAN_NAMES, SITE_NAMES
    from veloxseg_train.model import VeloxSegConfig

    torch.manual_seed(4)
    model = VeloxSeg(VeloxSegConfig.autopet(n_organs=len(ORGAN_NAMES)))
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, NORMALIZATION, {"data": "unit test"})
    onnx_path = tmp_path / "veloxseg.onnx"
    assert main(["export", str(checkpoint), "--out", str(onnx_path)]) == 0
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["output_name"] == "logits" and manifest["organ_output"] == "organs"
    assert manifest["organ_names"] == list(ORGAN_NAMES) and manifest["organ_downsampling"] == 4
    assert manifest["organ_sites"][ORGAN_NAMES.index("liver")] == SITE_NAMES["liver"] == "liver"
    verification = manifest["provenance"]["verification"]
    assert verification["batch_1_organs"]["argmax_identical"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 2, 96, 96, 96)
    logits, organs = session.run(["logits", "organs"], {"image": x.numpy()})
    with torch.inference_mode():
        expected_logits, expected_organs = model.eval().forward_with_organs(x)
    assert organs.shape == (1, len(ORGAN_NAMES), 24, 24, 24)
    assert agreement_report(logits, expected_logits.numpy())["agrees"]
    assert agreement_report(organs, expected_organs.numpy())["agrees"]
