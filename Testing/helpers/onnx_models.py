"""Tiny deterministic ONNX models + manifests for fast tests (shared by the engine and Slicer tests).

The model follows the contract in docs/architecture.md: input ``image`` float32 (N, 2, P, P, P),
output ``logits`` float32 (N, 2, P, P, P). It is a pure threshold on the PET channel:

    lesion logit     = normalised PET - threshold (+ ramp: an offset along the patch's z, from -1 to 1)
    background logit = -(lesion logit), or 0 with ``zero_background=True``

With the manifest's PET normalisation (clip 0..30, mean 0, std 1) the normalised PET is the SUV, so
the argmax marks exactly the voxels with SUV > threshold: tests can predict the result with numpy.
With ``zero_background`` the engine's blended logit difference is exactly SUV - threshold (+ ramp), which
the sliding-window tests check; ``ramp`` makes the output depend on where a voxel sits in its window.

With ``organ_bands_hu`` (one CT value per organ code) the graph has a second output ``organs``, float32
(N, organs, P/4, P/4, P/4), as `veloxseg-train export` writes for a model with an organ head: the CT
averaged over each 4x4x4 block of the patch, and per organ the logit -|mean CT - band| / ORGAN_SCALE_HU,
so each block's organ is the band nearest to its mean HU (the test manifest's CT normalisation keeps HU).
``organ_entries`` gives the matching manifest entries for ``write_manifest(organs=...)``.

Import it by file path, e.g. ``sys.path.insert(0, str(TESTING / "helpers")); import onnx_models``.
Never put ``Testing/`` itself on sys.path: ``Testing/slicer/`` would then be merged into slicer-core's
``slicer`` namespace package (it scans every ``slicer/`` folder on sys.path) and its test files
imported as ``slicer.*`` modules.
"""

import hashlib
import json
from pathlib import Path

import numpy as np


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# The organ test model's classes: CT band (HU) per code, its name and the site it names (code 0: "other").
ORGAN_BANDS = (
    ("other", "lymph node / soft tissue", 40.0),
    ("lung", "lung", -800.0),
    ("liver", "liver", 200.0),
    ("bone_marrow", "bone", 700.0),
)
ORGAN_DOWNSAMPLING = 4
ORGAN_SCALE_HU = 50.0


def organ_entries(bands=ORGAN_BANDS, downsampling=ORGAN_DOWNSAMPLING, output="organs"):
    """The manifest's organ entries (docs/architecture.md) of a model built with these bands."""
    return {"organ_output": output, "organ_downsampling": downsampling,
            "organ_names": [name for name, _, _ in bands], "organ_sites": [site for _, site, _ in bands]}


def build_threshold_onnx(path, suv_threshold=2.5, patch=96, dynamic_batch=False, opset=17, ramp=False,
                         zero_background=False, organ_bands_hu=None):
    """Write the threshold model to ``path`` (an .onnx file) and return the path; with ``organ_bands_hu``
    (one HU value per organ code) it has the ``organs`` output too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch = "N" if dynamic_batch else 1
    shape = [batch, 2, patch, patch, patch]
    nodes = [
        # channel 1 (PET), kept as a 1-channel 5D tensor
        helper.make_node("Gather", ["image", "pet_index"], ["pet"], axis=1),
        helper.make_node("Sub", ["pet", "threshold"], ["lesion"]),
    ]
    initializers = [
        helper.make_tensor("pet_index", TensorProto.INT64, [1], [1]),
        helper.make_tensor("threshold", TensorProto.FLOAT, [], [float(suv_threshold)]),
    ]
    lesion = "lesion"
    if ramp:
        values = np.linspace(-1.0, 1.0, patch, dtype=np.float32).reshape(1, 1, patch, 1, 1)
        initializers.append(numpy_helper.from_array(values, "ramp"))
        nodes.append(helper.make_node("Add", ["lesion", "ramp"], ["lesion_ramp"]))
        lesion = "lesion_ramp"
    if zero_background:
        initializers.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
        nodes.append(helper.make_node("Mul", [lesion, "zero"], ["background"]))
    else:
        nodes.append(helper.make_node("Neg", [lesion], ["background"]))
    nodes.append(helper.make_node("Concat", ["background", lesion], ["logits"], axis=1))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)]
    if organ_bands_hu is not None:
        f = ORGAN_DOWNSAMPLING
        bands = np.asarray(organ_bands_hu, dtype=np.float32).reshape(1, -1, 1, 1, 1)
        initializers += [
            helper.make_tensor("ct_index", TensorProto.INT64, [1], [0]),
            numpy_helper.from_array(bands, "bands"),
            helper.make_tensor("organ_scale", TensorProto.FLOAT, [], [-1.0 / ORGAN_SCALE_HU]),
        ]
        nodes += [
            helper.make_node("Gather", ["image", "ct_index"], ["ct"], axis=1),
            helper.make_node("AveragePool", ["ct"], ["ct_blocks"], kernel_shape=[f, f, f], strides=[f, f, f]),
            helper.make_node("Sub", ["ct_blocks", "bands"], ["ct_offsets"]),
            helper.make_node("Abs", ["ct_offsets"], ["ct_distances"]),
            helper.make_node("Mul", ["ct_distances", "organ_scale"], ["organs"]),
        ]
        outputs.append(helper.make_tensor_value_info(
            "organs", TensorProto.FLOAT, [batch, len(organ_bands_hu), patch // f, patch // f, patch // f]))
    graph = helper.make_graph(
        nodes,
        "veloxseg_test_threshold",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="veloxseg-tests")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_manifest(onnx_path, spacing_xyz_mm=(4.0, 4.0, 4.0), patch=96, dynamic_batch=False,
                   model_name="VeloxSegTestThreshold", opset=17, organs=None, manifest_path=None):
    """Write ``<name>.json`` (or ``manifest_path``) beside ``onnx_path`` with the architecture.md fields, plus
    the ``organs`` entries when given (see organ_entries); return its path."""
    onnx_path = Path(onnx_path)
    manifest = {
        "format": "veloxseg-manifest/1",
        "model_name": model_name,
        "model_version": "0.0.0-test",
        "onnx_file": onnx_path.name,
        "onnx_sha256": _sha256(onnx_path),
        "opset": opset,
        "input_name": "image",
        "output_name": "logits",
        "dynamic_batch": bool(dynamic_batch),
        "patch_size_zyx": [patch, patch, patch],
        "spacing_xyz_mm": [float(s) for s in spacing_xyz_mm],
        "modalities": ["CT", "PET"],
        "class_names": ["background", "lesion"],
        "normalization": {
            "CT": {"clip_low": -1000.0, "clip_high": 1000.0, "mean": 0.0, "std": 1.0, "unit": "HU"},
            "PET": {"clip_low": 0.0, "clip_high": 30.0, "mean": 0.0, "std": 1.0, "unit": "SUVbw"},
        },
        "provenance": {
            "checkpoint": "none (hand-built threshold graph)",
            "checkpoint_sha256": "",
            "data": "none",
            "git_commit": "",
            "created": "1970-01-01T00:00:00Z",
            "exporter": "Testing/helpers/onnx_models.py",
        },
    }
    manifest.update(organs or {})
    manifest_path = Path(manifest_path) if manifest_path is not None else onnx_path.with_suffix(".json")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest_path


def build_threshold_model(out_dir, suv_threshold=2.5, spacing_xyz_mm=(4.0, 4.0, 4.0), patch=96,
                          dynamic_batch=False, name="threshold"):
    """Build ``out_dir/<name>.onnx`` + ``<name>.json``; return the manifest path."""
    onnx_path = build_threshold_onnx(Path(out_dir) / f"{name}.onnx", suv_threshold, patch, dynamic_batch)
    return write_manifest(onnx_path, spacing_xyz_mm, patch, dynamic_batch)


def expected_lesion_mask(pet_suv, suv_threshold=2.5):
    """What the threshold model marks, for an SUV array already on the model grid."""
    return np.clip(pet_suv, 0.0, 30.0) > suv_threshold


def build_linear_classifier(path, weights, bias):
    """A second-look classifier (docs/architecture.md): ``features`` float32 (N, F) -> ``score`` (N, 1) =
    sigmoid(features @ weights + bias); with the manifest's mean 0 and std 1 the features are the raw ones."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w", "b"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["score"])],
        "veloxseg_test_second_look",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([bias], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="veloxseg-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_second_look_manifest(onnx_path, feature_names, candidate_logit=-1.0986123, score_threshold=0.5,
                               mean=None, std=None):
    """``<name>.json`` beside a classifier of build_linear_classifier; return its path."""
    onnx_path = Path(onnx_path)
    manifest = {
        "format": "veloxseg-second-look/1",
        "onnx_file": onnx_path.name,
        "onnx_sha256": _sha256(onnx_path),
        "input_name": "features",
        "output_name": "score",
        "feature_names": list(feature_names),
        "feature_mean": list(mean) if mean is not None else [0.0] * len(feature_names),
        "feature_std": list(std) if std is not None else [1.0] * len(feature_names),
        "candidate_threshold": {"logit": candidate_logit},
        "score_threshold": score_threshold,
        "training": {"data": "none (hand-built test classifier)"},
    }
    path = onnx_path.with_suffix(".json")
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
