"""Test helpers: a tiny deterministic ONNX model honouring the VeloxSeg I/O contract, and phantoms.

The model computes, voxel by voxel, lesion logit = PET_normalised - THRESHOLD (+ an optional ramp along z
that makes its output depend on the position inside the patch) and background logit = 0, so a voxel is
"lesion" exactly where the normalised PET exceeds THRESHOLD. That makes geometry tests exact and fast.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "VeloxSegSlicer"))

THRESHOLD = 4.0  # SUV; the test manifest normalises PET as clip(0, 30), mean 0, std 1
PATCH = 96


def build_threshold_onnx(path: Path, threshold: float = THRESHOLD, ramp: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["pet"]),
        helper.make_node("Sub", ["pet", "threshold"], ["lesion"]),
        helper.make_node("Mul", ["pet", "zero"], ["background"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(threshold, dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    lesion = "lesion"
    if ramp:
        # A position-dependent term: the blended output then depends on which windows cover a voxel.
        values = np.linspace(-1.0, 1.0, PATCH, dtype=np.float32).reshape(1, 1, PATCH, 1, 1)
        inits.append(numpy_helper.from_array(values, "ramp"))
        nodes.append(helper.make_node("Add", ["lesion", "ramp"], ["lesion_ramp"]))
        lesion = "lesion_ramp"
    nodes.append(helper.make_node("Concat", ["background", lesion], ["logits"], axis=1))
    graph = helper.make_graph(
        nodes,
        "veloxseg_threshold_test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, PATCH, PATCH, PATCH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, PATCH, PATCH, PATCH])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="veloxseg-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_manifest(onnx_path: Path, manifest_path: Path = None) -> Path:
    manifest_path = manifest_path or onnx_path.with_suffix(".json")
    manifest = {
        "format": "veloxseg-manifest/1",
        "model_name": "VeloxSeg-test-threshold",
        "model_version": "0.0.0",
        "onnx_file": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "opset": 17,
        "input_name": "image",
        "output_name": "logits",
        "dynamic_batch": False,
        "patch_size_zyx": [PATCH, PATCH, PATCH],
        "spacing_xyz_mm": [2.036, 2.036, 3.0],
        "modalities": ["CT", "PET"],
        "class_names": ["background", "lesion"],
        "normalization": {
            "CT": {"clip_low": -1000.0, "clip_high": 1000.0, "mean": 0.0, "std": 1.0, "unit": "HU"},
            "PET": {"clip_low": 0.0, "clip_high": 30.0, "mean": 0.0, "std": 1.0, "unit": "SUVbw"},
        },
        "provenance": {"exporter": "Testing/engine/conftest.py"},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest_path


def make_image(array_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij"), axis=-1)[..., ::-1]
    direction = np.reshape(image.GetDirection(), (3, 3))
    return np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ direction.T


def phantom(
    spheres,
    size,
    spacing,
    origin,
    direction=None,
    kind="PET",
    body_radius_mm=90.0,
    body_centre=(0.0, 0.0),
    seed=0,
) -> sitk.Image:
    """A body cylinder along z with spheres ((centre LPS), radius mm, value) on a given grid.

    PET: air 0, body ~1.2 SUV with a little noise, spheres at their SUV. CT: air -1000, body 40 HU,
    spheres at 60 HU (int16).
    """
    blank = make_image(np.zeros(tuple(reversed(size)), dtype=np.float32), spacing, origin, direction)
    points = physical_points(blank)
    body = np.hypot(points[..., 0] - body_centre[0], points[..., 1] - body_centre[1]) <= body_radius_mm
    rng = np.random.default_rng(seed)
    if kind == "PET":
        values = np.where(body, 1.2 + 0.05 * rng.standard_normal(body.shape), 0.0).astype(np.float32)
    else:
        values = np.where(body, 40.0, -1000.0).astype(np.float32)
    for centre, radius, value in spheres:
        inside = np.linalg.norm(points - np.asarray(centre), axis=-1) <= radius
        values[inside] = value
    if kind == "CT":
        values = values.astype(np.int16)
    return make_image(values, spacing, origin, direction)


def rotation(axis, degrees) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
