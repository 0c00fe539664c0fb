"""This project's checkpoint format: weights plus everything needed to rebuild and normalise.

{"format": "veloxseg-checkpoint/1", "model_config": dict, "state_dict": {...}, "normalization": {...},
 "extra": {...}} written with torch.save and read with weights_only=True, so loading never runs code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch

from .model import VeloxSeg, VeloxSegConfig

FORMAT = "veloxseg-checkpoint/1"
PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """The file is not a readable checkpoint of this project (or of the authors' code)."""


def read_tensor_file(path: PathLike) -> object:
    """torch.load with weights_only=True: tensors and plain containers only, nothing executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint this tool can read safely (only tensors and plain containers "
            f"are accepted; nothing in it was executed): {first_line}") from None


def save_checkpoint(path: PathLike, model: VeloxSeg, normalization: dict, extra: Optional[dict] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalization": normalization,
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: PathLike) -> dict:
    payload = read_tensor_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a VeloxSeg checkpoint of this project (format {FORMAT!r} expected). A checkpoint "
            "saved by the authors' code is converted with `veloxseg-train import-reference`.")
    return payload


def model_from_checkpoint(payload: dict) -> VeloxSeg:
    """Build the network from a loaded checkpoint and load its weights strictly."""
    model = VeloxSeg(VeloxSegConfig.from_dict(payload["model_config"]))
    result = model.load_state_dict(payload["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            "Checkpoint weights do not match the network: "
            f"missing {sorted(result.missing_keys)}, unexpected {sorted(result.unexpected_keys)}")
    return model
