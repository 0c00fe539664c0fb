"""Model manifest (`<name>.json` beside `<name>.onnx`): loading, validation and the file hash check.

The manifest carries everything model-specific (grid spacing, patch size, normalisation constants, tensor
names), so the engine hard-codes none of it. Format: docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError

MANIFEST_FORMAT = "veloxseg-manifest/1"
NORMALIZATION_KEYS = ("clip_low", "clip_high", "mean", "std")


def default_manifest_path() -> Path:
    """The model bundled with the Slicer module: <module dir>/Resources/Models/veloxseg.json."""
    return Path(__file__).resolve().parents[3] / "Resources" / "Models" / "veloxseg.json"


@dataclass(frozen=True)
class Manifest:
    path: Path
    model_name: str
    model_version: str
    onnx_path: Path
    onnx_sha256: str
    input_name: str
    output_name: str
    dynamic_batch: bool
    patch_size_zyx: tuple
    spacing_xyz_mm: tuple
    modalities: tuple
    class_names: tuple
    normalization: dict
    opset: Any = None
    provenance: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    # The optional organ output (docs/architecture.md): its tensor name (None: the model names no sites), how
    # many model-grid voxels along each axis one organ voxel covers, and per organ code its name and the
    # lesion site it stands for.
    organ_output: Any = None
    organ_downsampling: int = 0
    organ_names: tuple = ()
    organ_sites: tuple = ()
    # The lesion threshold on the blended (lesion - background) logit: 0 (probability 0.5) unless the manifest
    # has a calibrated "lesion_threshold" (`veloxseg-train calibrate`).
    lesion_threshold: float = 0.0
    # The optional second look (`veloxseg-train train-classifier`): a SecondLookManifest, or None.
    second_look: Any = None

    @property
    def has_organs(self) -> bool:
        return self.organ_output is not None


def _fail(path: Path, what: str) -> ModelError:
    return ModelError(
        f"Model manifest {path} is invalid: {what}. Use the .json written by `veloxseg-train export` "
        "next to its .onnx file."
    )


def _number_list(path: Path, data: dict, key: str, length: int, positive: bool) -> tuple:
    value = data.get(key)
    if not isinstance(value, list) or len(value) != length:
        raise _fail(path, f"'{key}' must be a list of {length} numbers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise _fail(path, f"'{key}' must be a list of {length} numbers")
        if positive and item <= 0:
            raise _fail(path, f"'{key}' must hold positive numbers")
    return tuple(value)


def _string(path: Path, data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(path, f"'{key}' is missing or not a string")
    return value


def _normalization(path: Path, data: dict) -> dict:
    norm = data.get("normalization")
    if not isinstance(norm, dict):
        raise _fail(path, "'normalization' is missing")
    result = {}
    for modality in ("CT", "PET"):
        params = norm.get(modality)
        if not isinstance(params, dict):
            raise _fail(path, f"'normalization.{modality}' is missing")
        clean = {}
        for key in NORMALIZATION_KEYS:
            value = params.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _fail(path, f"'normalization.{modality}.{key}' must be a finite number")
            clean[key] = float(value)
        if clean["clip_low"] >= clean["clip_high"]:
            raise _fail(path, f"'normalization.{modality}': clip_low must be below clip_high")
        if clean["std"] <= 0:
            raise _fail(path, f"'normalization.{modality}.std' must be positive")
        result[modality] = clean
    return result


ORGAN_KEYS = ("organ_output", "organ_downsampling", "organ_names", "organ_sites")
MAX_ORGANS = 255  # organ codes are stored as uint8


def _organ_entries(path: Path, data: dict, output_name: str, patch_size: tuple) -> dict:
    """The optional organ entries, validated: all four or none (a model without them names no sites)."""
    present = [key for key in ORGAN_KEYS if key in data]
    if not present:
        return {}
    missing = [key for key in ORGAN_KEYS if key not in data]
    if missing:
        raise _fail(path, f"it has {', '.join(present)} but not {', '.join(missing)}: an organ output needs all of "
                          f"{', '.join(ORGAN_KEYS)}")
    output = _string(path, data, "organ_output")
    if output == output_name:
        raise _fail(path, f"'organ_output' is the lesion output '{output_name}'; it must name the organ output")
    factor = data["organ_downsampling"]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise _fail(path, f"'organ_downsampling' must be a positive whole number, got {factor!r}")
    if any(p % factor for p in patch_size):
        raise _fail(path, f"'organ_downsampling' {factor} does not divide the patch size {list(patch_size)}")
    lists = {}
    for key in ("organ_names", "organ_sites"):
        value = data[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise _fail(path, f"'{key}' must be a non-empty list of names")
        lists[key] = tuple(v.strip() for v in value)
    names, sites = lists["organ_names"], lists["organ_sites"]
    if len(names) != len(sites):
        raise _fail(path, f"'organ_names' lists {len(names)} organs but 'organ_sites' {len(sites)}; one site per organ")
    if len(names) > MAX_ORGANS:
        raise _fail(path, f"'organ_names' lists {len(names)} organs; at most {MAX_ORGANS} are supported")
    if len(set(names)) != len(names):
        raise _fail(path, "'organ_names' lists an organ twice")
    return {"organ_output": output, "organ_downsampling": factor, "organ_names": names, "organ_sites": sites}


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# A logit beyond this is a probability within 1e-8 of 0 or 1: no threshold of use, and the engine marks voxels
# no window covered with -20 (sliding_window.NOT_COVERED), which must stay below every threshold.
MAX_THRESHOLD_LOGIT = 18.0


def _threshold_logit(path: Path, value, key: str) -> float:
    """A threshold entry: {"logit": t, ...} (other keys say how it was chosen) with t finite, |t| <= 18."""
    logit = value.get("logit") if isinstance(value, dict) else None
    if not _finite(logit) or abs(logit) > MAX_THRESHOLD_LOGIT:
        raise _fail(path, f"'{key}' must be an object with a finite 'logit' between -{MAX_THRESHOLD_LOGIT:g} and "
                          f"{MAX_THRESHOLD_LOGIT:g} (written by `veloxseg-train calibrate`), got {value!r}")
    return float(logit)


SECOND_LOOK_FORMAT = "veloxseg-second-look/1"


@dataclass(frozen=True)
class SecondLookManifest:
    """The candidate classifier's manifest (docs/architecture.md, "The second look")."""

    path: Path
    onnx_path: Path
    onnx_sha256: str
    input_name: str
    output_name: str
    feature_names: tuple
    feature_mean: tuple
    feature_std: tuple
    candidate_threshold: float  # logit
    score_threshold: float
    organ_names: tuple  # the organs of the one-hot site features, in their order
    raw: dict = field(default_factory=dict)


def _second_look(path: Path, data: dict, lesion_threshold: float):
    """The manifest's "second_look" entry (a file name beside it), read and validated; None when absent."""
    if "second_look" not in data:
        return None
    from .candidates import FEATURE_NAMES, ORGAN_PREFIX

    name = _string(path, data, "second_look")
    sl_path = path.parent / name
    if not sl_path.is_file():
        raise ModelError(f"The second-look classifier manifest {sl_path} named in {path} ('second_look') is missing; "
                         "install it beside the model, or remove the 'second_look' entry to run without it.")
    try:
        sl = json.loads(sl_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(sl_path, f"cannot be read as JSON ({exc})") from exc
    if not isinstance(sl, dict) or sl.get("format") != SECOND_LOOK_FORMAT:
        raise _fail(sl_path, f"'format' must be {SECOND_LOOK_FORMAT!r} (a second-look classifier manifest)")
    sha = _string(sl_path, sl, "onnx_sha256").lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _fail(sl_path, "'onnx_sha256' must be 64 hexadecimal digits")
    names = sl.get("feature_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or tuple(names[: len(FEATURE_NAMES)]) != FEATURE_NAMES \
            or not all(n.startswith(ORGAN_PREFIX) and len(n) > len(ORGAN_PREFIX) for n in names[len(FEATURE_NAMES):]):
        raise _fail(sl_path, f"'feature_names' must be {list(FEATURE_NAMES)} followed by '{ORGAN_PREFIX}<name>' "
                             "entries (this engine computes those features)")
    stats = {}
    for key in ("feature_mean", "feature_std"):
        values = sl.get(key)
        if not isinstance(values, list) or len(values) != len(names) or not all(_finite(v) for v in values):
            raise _fail(sl_path, f"'{key}' must list {len(names)} finite numbers, one per feature")
        stats[key] = tuple(float(v) for v in values)
    if any(v <= 0 for v in stats["feature_std"]):
        raise _fail(sl_path, "'feature_std' must hold positive numbers")
    candidate = _threshold_logit(sl_path, sl.get("candidate_threshold"), "candidate_threshold")
    if candidate > lesion_threshold:
        raise _fail(sl_path, f"its candidate threshold (logit {candidate:g}) is above the lesion threshold "
                             f"(logit {lesion_threshold:g}) of {path}; candidates must include every lesion")
    score = sl.get("score_threshold")
    if not _finite(score) or not 0.0 <= score <= 1.0:
        raise _fail(sl_path, f"'score_threshold' must be a number in [0, 1], got {score!r}")
    return SecondLookManifest(
        path=sl_path, onnx_path=sl_path.parent / _string(sl_path, sl, "onnx_file"), onnx_sha256=sha,
        input_name=_string(sl_path, sl, "input_name"), output_name=_string(sl_path, sl, "output_name"),
        feature_names=tuple(names), feature_mean=stats["feature_mean"], feature_std=stats["feature_std"],
        candidate_threshold=candidate, score_threshold=float(score),
        organ_names=tuple(n[len(ORGAN_PREFIX):] for n in names[len(FEATURE_NAMES):]), raw=sl)


def load_manifest(manifest_path=None) -> Manifest:
    """Read and validate a manifest; None means the bundled model. Raises ModelError."""
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path()
    if path.is_dir():
        path = path / "veloxseg.json"
    if not path.is_file():
        hint = (
            "The bundled model is missing from this installation; reinstall the extension or pass --model."
            if manifest_path is None
            else "Check the path given with --model (it must be the model's .json manifest)."
        )
        raise ModelError(f"Model manifest not found: {path}. {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise _fail(path, f"'format' is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")

    sha = _string(path, data, "onnx_sha256").lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _fail(path, "'onnx_sha256' must be 64 hexadecimal digits")
    patch = _number_list(path, data, "patch_size_zyx", 3, positive=True)
    if any(int(p) != p for p in patch):
        raise _fail(path, "'patch_size_zyx' must hold integers")
    modalities = tuple(data.get("modalities") or ())
    if modalities != ("CT", "PET"):
        raise _fail(path, f"'modalities' is {list(modalities)}, this engine feeds ['CT', 'PET']")
    class_names = data.get("class_names")
    if not isinstance(class_names, list) or len(class_names) != 2:
        raise _fail(path, "'class_names' must list 2 classes (background, lesion)")
    provenance = data.get("provenance")
    output_name = _string(path, data, "output_name")
    patch_size = tuple(int(p) for p in patch)
    lesion_threshold = (_threshold_logit(path, data["lesion_threshold"], "lesion_threshold")
                        if "lesion_threshold" in data else 0.0)

    return Manifest(
        path=path,
        model_name=str(data.get("model_name", "VeloxSeg")),
        model_version=str(data.get("model_version", "unknown")),
        onnx_path=path.parent / _string(path, data, "onnx_file"),
        onnx_sha256=sha,
        input_name=_string(path, data, "input_name"),
        output_name=output_name,
        dynamic_batch=bool(data.get("dynamic_batch", False)),
        patch_size_zyx=patch_size,
        spacing_xyz_mm=tuple(float(s) for s in _number_list(path, data, "spacing_xyz_mm", 3, positive=True)),
        modalities=modalities,
        class_names=tuple(str(c) for c in class_names),
        normalization=_normalization(path, data),
        opset=data.get("opset"),
        provenance=provenance if isinstance(provenance, dict) else {},
        raw=data,
        lesion_threshold=lesion_threshold,
        second_look=_second_look(path, data, lesion_threshold),
        **_organ_entries(path, data, output_name, patch_size),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(manifest: Manifest) -> None:
    """Refuse a model file whose SHA-256 differs from the manifest (corrupted download, tampering); the same
    for the second-look classifier's file when the manifest names one."""
    _verify_file(manifest)
    if manifest.second_look is not None:
        _verify_file(manifest.second_look)


def _verify_file(manifest) -> None:
    if not manifest.onnx_path.is_file():
        raise ModelError(
            f"Model file {manifest.onnx_path} named in {manifest.path} is missing; "
            "reinstall the model (both the .onnx and its .json)."
        )
    try:
        actual = file_sha256(manifest.onnx_path)
    except OSError as exc:
        raise ModelError(f"Cannot read model file {manifest.onnx_path}: {exc}") from exc
    if actual != manifest.onnx_sha256:
        raise ModelError(
            f"Model file {manifest.onnx_path} fails its integrity check: SHA-256 is {actual}, the manifest "
            f"expects {manifest.onnx_sha256}. The file is corrupted or was modified; reinstall the model "
            "(both the .onnx and its .json) and do not edit either."
        )
