"""Read a prepared data set (`veloxseg-train prepare` output) into normalised in-memory volumes.

Every case is checked when it is loaded; a bad case stops training with a message naming the case and the
problem. Nothing is skipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

AIR_HU = -1000.0  # CT value used to pad volumes smaller than a crop


class DataError(ValueError):
    """A prepared case or the dataset description is unusable; the message says which and why."""


@dataclass
class CaseInfo:
    """One entry of dataset.json."""

    name: str
    split: str
    file: Path
    shape_zyx: Tuple[int, int, int]
    lesion_voxels: int
    lesion_free: bool
    source: str = ""


@dataclass
class Volume:
    """A case ready for cropping: normalised (2, Z, Y, X) image, binary label, centring helpers."""

    name: str
    image: np.ndarray  # float32 (2, Z, Y, X): channel 0 CT, channel 1 PET, both normalised
    label: np.ndarray  # uint8 (Z, Y, X), 0/1
    lesion_index: np.ndarray  # flat indices of the lesion voxels (int64)
    body_lo: Tuple[int, int, int]  # inclusive start of the body's bounding box
    body_hi: Tuple[int, int, int]  # exclusive end
    spacing_zyx: Tuple[float, float, float]
    pad_before: Tuple[int, int, int]  # voxels added in front of each axis to reach the crop size
    original_shape: Tuple[int, int, int]  # shape before that padding
    organs: Optional[np.ndarray] = None  # uint8 (Z, Y, X) organ codes (IGNORE where unknown), organ training only

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.label.shape)

    @property
    def original_region(self) -> Tuple[slice, slice, slice]:
        """Index of the unpadded case inside the padded arrays."""
        return tuple(slice(b, b + s) for b, s in zip(self.pad_before, self.original_shape))


@dataclass
class PreparedDataset:
    root: Path
    spacing_xyz_mm: Tuple[float, float, float]
    normalization: Dict[str, dict]
    cases: List[CaseInfo]

    @property
    def spacing_zyx(self) -> Tuple[float, float, float]:
        return tuple(float(s) for s in reversed(self.spacing_xyz_mm))

    def split(self, name: str) -> List[CaseInfo]:
        return [case for case in self.cases if case.split == name]


def read_dataset(root: str | Path) -> PreparedDataset:
    """Parse PREP/dataset.json (through the data package's reader) and check it describes a usable set."""
    from .data.prepared import load_dataset

    root = Path(root)
    path = root / "dataset.json"
    try:
        document = load_dataset(root)
    except FileNotFoundError:
        raise DataError(f"No prepared data set at {root}: {path.name} is missing (run `veloxseg-train prepare`)"
                        ) from None
    except ValueError as error:  # includes JSON syntax errors
        raise DataError(f"{path}: {error}") from None
    for key in ("spacing_xyz_mm", "cases", "normalization"):
        if key not in document:
            raise DataError(f"{path}: missing '{key}'")
    for modality in ("CT", "PET"):
        params = document["normalization"].get(modality)
        if not isinstance(params, dict) or not {"clip_low", "clip_high", "mean", "std"} <= set(params):
            raise DataError(f"{path}: normalization.{modality} needs clip_low, clip_high, mean and std")
    cases = []
    for i, entry in enumerate(document["cases"]):
        try:
            cases.append(CaseInfo(name=str(entry["name"]), split=str(entry["split"]), file=root / entry["file"],
                                  shape_zyx=tuple(int(s) for s in entry["shape_zyx"]),
                                  lesion_voxels=int(entry["lesion_voxels"]), lesion_free=bool(entry["lesion_free"]),
                                  source=str(entry.get("source", ""))))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}: case #{i} ({entry.get('name', '?')}) is incomplete: {error}") from None
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate case names: {', '.join(duplicates)}")
    return PreparedDataset(root, tuple(float(s) for s in document["spacing_xyz_mm"]), document["normalization"],
                           cases)


def read_case(case: CaseInfo):
    """The data package's PreparedCase (arrays + grid) of a case; unreadable or incomplete files are DataErrors."""
    from .data.prepared import load_case

    if not case.file.is_file():
        raise DataError(f"Case {case.name}: file {case.file} not found (listed in dataset.json)")
    with np.load(case.file) as archive:
        missing = [key for key in ("ct", "pet", "label") if key not in archive.files]
    if missing:
        what = " and ".join({"ct": "CT", "pet": "PET", "label": "the label"}[k] for k in missing)
        raise DataError(f"Case {case.name}: missing {what} (no {', '.join(missing)} array in {case.file.name})")
    try:
        return load_case(case.file.parent, {"name": case.name, "file": case.file.name})
    except (KeyError, ValueError, OSError) as error:
        raise DataError(f"Case {case.name}: cannot read {case.file}: {error}") from None


def load_arrays(case: CaseInfo, with_organs: bool = False):
    """CT (HU), PET (SUV), label of a case, checked: present, same shape, finite, binary, as described;
    with_organs: and the organ codes (None when the case has no organ map)."""
    prepared = read_case(case)
    ct = np.asarray(prepared.ct, dtype=np.float32)
    pet = np.asarray(prepared.pet, dtype=np.float32)
    label = np.asarray(prepared.label)
    check_case(case.name, ct, pet, label, case.shape_zyx, case.lesion_free)
    if with_organs:
        return ct, pet, (label > 0).astype(np.uint8), prepared.organs
    return ct, pet, (label > 0).astype(np.uint8)


def check_case(name: str, ct: np.ndarray, pet: np.ndarray, label: np.ndarray,
               expected_shape: Optional[Sequence[int]] = None, lesion_free: Optional[bool] = None,
               body_ct_threshold_hu: float = -500.0) -> None:
    """Raise DataError naming the case for anything that would make training or evaluation meaningless."""
    if ct.ndim != 3 or pet.ndim != 3 or label.ndim != 3:
        raise DataError(f"Case {name}: CT, PET and label must be 3-D, got shapes {ct.shape}, {pet.shape}, "
                        f"{label.shape}")
    if not ct.shape == pet.shape == label.shape:
        raise DataError(f"Case {name}: CT {ct.shape}, PET {pet.shape} and label {label.shape} are not on one grid")
    if expected_shape is not None and tuple(ct.shape) != tuple(expected_shape):
        raise DataError(f"Case {name}: arrays have shape {ct.shape}, dataset.json says {tuple(expected_shape)}")
    for modality, array in (("CT", ct), ("PET", pet)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(f"Case {name}: {modality} has {bad} NaN/infinite voxels")
        if float(array.min()) == float(array.max()):
            raise DataError(f"Case {name}: {modality} is constant ({float(array.min()):g}) on the model grid; "
                            "is the modality missing, or do CT and PET not overlap?")
    values = np.unique(label)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise DataError(f"Case {name}: label is not binary (values {shown}); expected 0 = background, 1 = lesion")
    lesion_voxels = int(np.count_nonzero(label))
    if lesion_free is not None:
        if lesion_voxels == 0 and not lesion_free:
            raise DataError(f"Case {name}: label is empty but the case is not marked lesion_free")
        if lesion_voxels > 0 and lesion_free:
            raise DataError(f"Case {name}: marked lesion_free but its label has {lesion_voxels} lesion voxels")
    body = ct > body_ct_threshold_hu
    if body.any() and not np.any(pet[body] > 0):
        raise DataError(f"Case {name}: PET is zero everywhere inside the CT body; CT and PET do not overlap")


def make_volume(name: str, ct: np.ndarray, pet: np.ndarray, label: np.ndarray, normalization: Dict[str, dict],
                patch_size: Sequence[int], spacing_zyx: Sequence[float],
                body_ct_threshold_hu: float = -500.0, organs: Optional[np.ndarray] = None,
                with_organs: bool = False) -> Volume:
    """Pad to at least one crop (air / zero SUV), normalise with the engine's function, index lesions.

    with_organs: keep an organ-code array (IGNORE everywhere when `organs` is None), so every crop of an
    organ-training run carries an organ target of the same shape."""
    from .data.organs import IGNORE

    if with_organs and organs is None:
        organs = np.full(ct.shape, IGNORE, np.uint8)
    from VeloxSegSlicerLib.engine import normalize

    original_shape = tuple(int(s) for s in ct.shape)
    pad = [max(0, int(p) - s) for p, s in zip(patch_size, ct.shape)]
    pad_before = tuple(p // 2 for p in pad)
    if any(pad):
        widths = [(b, p - b) for b, p in zip(pad_before, pad)]
        ct = np.pad(ct, widths, constant_values=AIR_HU)
        pet = np.pad(pet, widths, constant_values=0.0)
        label = np.pad(label, widths, constant_values=0)
        if with_organs:
            organs = np.pad(organs, widths, constant_values=IGNORE)
    image = np.stack([normalize(ct, normalization["CT"]), normalize(pet, normalization["PET"])]).astype(
        np.float32, copy=False)
    body = ct > body_ct_threshold_hu
    if body.any():
        coords = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        lo = tuple(int(c[0]) for c in coords)
        hi = tuple(int(c[-1]) + 1 for c in coords)
    else:  # no body on CT: background centres may come from anywhere
        lo, hi = (0, 0, 0), tuple(ct.shape)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    return Volume(name, np.ascontiguousarray(image), label, np.flatnonzero(label).astype(np.int64), lo, hi,
                  tuple(float(s) for s in spacing_zyx), pad_before, original_shape,
                  np.ascontiguousarray(organs, dtype=np.uint8) if with_organs else None)


class VolumeStore:
    """The volumes of one split: all in memory, or loaded from disk each time one is asked for."""

    def __init__(self, dataset: PreparedDataset, cases: List[CaseInfo], patch_size: Sequence[int],
                 cache: bool = True, body_ct_threshold_hu: float = -500.0, with_organs: bool = False):
        self.dataset = dataset
        self.with_organs = with_organs
        self.cases = cases
        self.patch_size = list(patch_size)
        self.body_ct_threshold_hu = body_ct_threshold_hu
        self._cache: Dict[int, Volume] = {}
        if cache:
            for index in range(len(cases)):
                self._cache[index] = self._load(index)
        else:  # still check every case up front, so a bad one fails now rather than hours later
            for case in cases:
                load_arrays(case)

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, index: int) -> Volume:
        case = self.cases[index]
        ct, pet, label, organs = load_arrays(case, with_organs=True)
        return make_volume(case.name, ct, pet, label, self.dataset.normalization, self.patch_size,
                           self.dataset.spacing_zyx, self.body_ct_threshold_hu, organs, self.with_organs)

    def __getitem__(self, index: int) -> Volume:
        if index in self._cache:
            return self._cache[index]
        return self._load(index)
