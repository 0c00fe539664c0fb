"""Export the inference path to ONNX, with its manifest, and prove the export right before keeping it.

The ONNX file and manifest are written to temporary names first and moved into place only after ONNX
Runtime reproduces PyTorch on the verification input: max |delta| within 1e-4 of the logits' scale and the
same argmax wherever PyTorch's two logits are further apart than that error could bridge.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from VeloxSegSlicerLib.engine import file_sha256

from .model import VeloxSeg
from .model.export_rewrites import rewrite_for_export
from .onnx_storage import compact_onnx_file

MANIFEST_FORMAT = "veloxseg-manifest/1"
DEFAULT_SPACING_XYZ_MM = (2.036, 2.036, 3.0)  # AutoPET-II's released PET grid (paper Table 5)
TOLERANCE = 1e-4  # relative to the logits' scale (max |logit|, at least 1)
STORE_FLOAT16 = False  # float16 storage fails the TOLERANCE check (measured in Resources/Models/MODEL_CARD.md)


def agreement_limit(expected: np.ndarray) -> float:
    """The largest |ORT - PyTorch| accepted for these logits.

    Float32 kernels differ between CPUs (ORT on one CI machine: 7.6e-4 on logits up to 26, 1.9e-5 on
    another for the same graph), so the limit scales with the logits; a wrong graph is off by ~1e-1 of them.
    """
    return TOLERANCE * max(1.0, float(np.abs(expected).max()))


def agreement_report(got: np.ndarray, expected: np.ndarray) -> dict:
    """Compare ORT's logits with PyTorch's (batch, class, ...); 'agrees' is the verdict."""
    limit = agreement_limit(expected)
    max_delta = float(np.abs(got - expected).max())  # NaN anywhere makes it NaN, which fails below
    # two logits closer than 2 * limit may swap within the accepted error: a numerical tie. Argmax identity
    # is required everywhere else (implied by the limit, checked anyway because it is what a user sees).
    top2 = np.sort(expected, axis=1)
    decided = (top2[:, -1] - top2[:, -2]) > 2 * limit
    flipped = got.argmax(1) != expected.argmax(1)
    argmax_equal = not bool((flipped & decided).any())
    return {"max_abs_delta": max_delta, "limit": limit, "argmax_identical": argmax_equal,
            "near_tie_voxels": int((~decided).sum()), "flipped_near_ties": int((flipped & ~decided).sum()),
            "agrees": bool(max_delta <= limit and argmax_equal)}


class ExportError(RuntimeError):
    pass


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def verification_input(model: VeloxSeg, batch: int = 1) -> torch.Tensor:
    """The fixed input every export is checked on: seeded standard-normal noise of the patch shape."""
    generator = torch.Generator().manual_seed(20260)
    return torch.randn(batch, model.cfg.modalities, *model.cfg.input_size, generator=generator)


class _WithOrgans(torch.nn.Module):
    """The graph of a model with an organ head: (lesion logits, organ logits at 1/4 resolution)."""

    def __init__(self, model: VeloxSeg):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_organs(x)


def output_names(model: VeloxSeg) -> list:
    return ["logits", "organs"] if model.cfg.n_organs else ["logits"]


def verify_onnx(onnx_path: Path, model: VeloxSeg, dynamic_batch: bool) -> dict:
    """Run ORT (1 thread, CPU) against PyTorch eager; raise ExportError unless every output agrees."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    report = {}
    for batch in ((1, 2) if dynamic_batch else (1,)):
        x = verification_input(model, batch)
        with torch.inference_mode():
            expected = model.forward_with_organs(x) if model.cfg.n_organs else (model(x),)
        names = output_names(model)
        got = session.run(names, {"image": x.numpy()})
        for name, ort_out, torch_out in zip(names, got, expected):
            key = f"batch_{batch}" if name == "logits" else f"batch_{batch}_{name}"
            report[key] = result = agreement_report(ort_out, torch_out.numpy())
            if not result.pop("agrees"):
                raise ExportError(f"ONNX Runtime disagrees with PyTorch on '{name}' at batch {batch}: max |delta| "
                                  f"{result['max_abs_delta']:.3g} (limit {result['limit']:.3g}), argmax identical "
                                  f"outside numerical ties: {result['argmax_identical']}. The export was not kept.")
    return report


def _organ_entries(model: VeloxSeg) -> dict:
    """Manifest entries of the organ output: its name, grid factor, organ names and the site each names."""
    if not model.cfg.n_organs:
        return {}
    from .data.organs import ORGAN_NAMES, SITE_NAMES

    return {"organ_output": "organs", "organ_downsampling": model.cfg.patch_size,
            "organ_names": list(ORGAN_NAMES), "organ_sites": [SITE_NAMES[name] for name in ORGAN_NAMES]}


def export_onnx(model: VeloxSeg, out_path: Path, normalization: dict, provenance: dict,
                opset: int = 17, dynamic_batch: bool = False, model_version: str = "0.1.0",
                spacing_xyz_mm=DEFAULT_SPACING_XYZ_MM, manifest_path: Optional[Path] = None,
                float16: bool = STORE_FLOAT16) -> dict:
    """Write MODEL.onnx and its manifest (MODEL.json by default). Returns the manifest. The graph's
    weights are stored once each (onnx_storage.compact_model), as float16 when `float16`, before the check."""
    if opset < 17:
        raise ExportError("opset 17 or newer is required")
    out_path = Path(out_path)
    manifest_path = Path(manifest_path) if manifest_path else out_path.with_suffix(".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    graph_model = rewrite_for_export(model)  # same function, ORT-friendly ops; verified against `model`
    tmp_onnx = out_path.with_name(out_path.name + ".partial")
    try:
        names = output_names(model)
        dynamic_axes = {name: {0: "batch"} for name in ["image", *names]} if dynamic_batch else None
        traced = _WithOrgans(graph_model) if model.cfg.n_organs else graph_model
        with warnings.catch_warnings():  # the TorchScript exporter's notes on IN and Slice folding are expected
            warnings.simplefilter("ignore")
            torch.onnx.export(traced, (verification_input(model),), str(tmp_onnx), input_names=["image"],
                              output_names=names, opset_version=opset, dynamic_axes=dynamic_axes,
                              dynamo=False, do_constant_folding=True)
        storage = compact_onnx_file(tmp_onnx, float16=float16)
        verification = verify_onnx(tmp_onnx, model, dynamic_batch)
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_name": "VeloxSeg",
            "model_version": model_version,
            "onnx_file": out_path.name,
            "onnx_sha256": file_sha256(tmp_onnx),
            "opset": opset,
            "input_name": "image",
            "output_name": "logits",
            "dynamic_batch": dynamic_batch,
            "patch_size_zyx": list(model.cfg.input_size),
            "spacing_xyz_mm": [float(s) for s in spacing_xyz_mm],
            "modalities": ["CT", "PET"],
            "class_names": ["background", "lesion"],
            **_organ_entries(model),
            "normalization": normalization,
            "provenance": {
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "exporter": "veloxseg-train export",
                "git_commit": git_commit(),
                "torch": torch.__version__,
                "verification": verification,
                "storage": {"float16": float16, "tensor_bytes": storage["bytes_after"]},
                **provenance,
            },
        }
        tmp_manifest = manifest_path.with_name(manifest_path.name + ".partial")
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp_onnx.replace(out_path)
        tmp_manifest.replace(manifest_path)
        return manifest
    finally:
        for leftover in (tmp_onnx, manifest_path.with_name(manifest_path.name + ".partial")):
            if leftover.exists():
                leftover.unlink()
