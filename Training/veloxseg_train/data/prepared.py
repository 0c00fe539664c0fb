"""The prepared-dataset format (`veloxseg-prepared/1`) that training reads.

PREP/dataset.json lists the cases with their split and holds the normalisation constants (training split
only, in the ONNX-manifest format); PREP/cases/NAME.npz holds one case on the model grid:
ct (float32 HU), pet (float32 SUVbw), label (uint8 0/1), optionally organs (uint8 organ codes, see
organs.ORGAN_NAMES; absent where the case has no organ map), all (z, y, x), and spacing / origin (x, y, z mm,
LPS) and direction (9 values, row-major) of that grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

FORMAT = "veloxseg-prepared/1"
DATASET_FILE = "dataset.json"
CASES_DIR = "cases"
SPLITS = ("train", "val", "test")


@dataclass
class PreparedCase:
    name: str
    ct: np.ndarray  # float32 HU (z, y, x)
    pet: np.ndarray  # float32 SUVbw (z, y, x)
    label: np.ndarray  # uint8 0/1 (z, y, x)
    spacing_xyz: tuple
    origin_xyz: tuple
    direction: tuple
    organs: Optional[np.ndarray] = None  # uint8 organ codes (z, y, x), or None: no organ labels

    def to_image(self, array: np.ndarray):
        """`array` (z, y, x) as a SimpleITK image on this case's grid (for metrics, export, viewing)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_xyz)
        image.SetDirection(self.direction)
        return image


def save_case(path: Path, ct: np.ndarray, pet: np.ndarray, label: np.ndarray, spacing_xyz: Sequence[float],
              origin_xyz: Sequence[float], direction: Sequence[float], compress: bool = False,
              organs: Optional[np.ndarray] = None) -> None:
    writer = np.savez_compressed if compress else np.savez
    extra = {} if organs is None else {"organs": organs.astype(np.uint8, copy=False)}
    writer(path, ct=ct.astype(np.float32, copy=False), pet=pet.astype(np.float32, copy=False),
           label=label.astype(np.uint8, copy=False), spacing=np.asarray(spacing_xyz, np.float64),
           origin=np.asarray(origin_xyz, np.float64), direction=np.asarray(direction, np.float64), **extra)


def load_dataset(prep_dir: Union[str, Path]) -> dict:
    """PREP/dataset.json, checked for its format."""
    path = Path(prep_dir) / DATASET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; create it with `veloxseg-train prepare`")
    dataset = json.loads(path.read_text(encoding="utf-8"))
    if dataset.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} dataset (format {dataset.get('format')!r})")
    return dataset


def split_cases(dataset: dict, split: str) -> List[dict]:
    """The case records of one split ("train", "val" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [case for case in dataset["cases"] if case["split"] == split]


def load_case(prep_dir: Union[str, Path], record: Union[dict, str]) -> PreparedCase:
    """One prepared case, from its dataset.json record (or its file path relative to PREP)."""
    relative = record["file"] if isinstance(record, dict) else record
    path = Path(prep_dir) / relative
    with np.load(path) as data:
        case = PreparedCase(
            name=record["name"] if isinstance(record, dict) else Path(relative).stem,
            ct=data["ct"], pet=data["pet"], label=data["label"],
            spacing_xyz=tuple(float(v) for v in data["spacing"]),
            origin_xyz=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
            organs=data["organs"] if "organs" in data.files else None)
    if not case.ct.shape == case.pet.shape == case.label.shape:
        raise ValueError(f"{path}: ct {case.ct.shape}, pet {case.pet.shape} and label {case.label.shape} "
                         "differ in shape")
    if case.organs is not None and case.organs.shape != case.label.shape:
        raise ValueError(f"{path}: organs {case.organs.shape} and label {case.label.shape} differ in shape")
    return case
