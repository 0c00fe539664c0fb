"""The training recipe: one dataclass with every value, read from a TOML file.

The TOML file groups keys into sections ([data], [model], [sampling], ...) for readability; each key
belongs to exactly one section and maps one-to-one onto a `TrainConfig` field. Unknown sections or keys,
keys in the wrong section and values of the wrong type are errors, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib

SECTIONS = ("data", "model", "sampling", "augment", "loss", "optim", "schedule", "train", "validation",
            "checkpoint")


def _f(default: Any, section: str, doc: str, factory: bool = False):
    """A dataclass field that records its TOML section and a one-line description."""
    meta = {"section": section, "doc": doc}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every value of a training run. Defaults are the AutoPET-II recipe of the reference (spec §4)."""

    # [data]
    data_dir: str = _f("", "data", "prepared data set (the folder holding dataset.json); relative to the CWD")
    train_split: str = _f("train", "data", "dataset.json split used for training")
    val_split: str = _f("val", "data", "dataset.json split used for validation ('' = no validation)")
    cache_volumes: bool = _f(True, "data", "keep all volumes in memory (False: load each when used)")
    body_ct_threshold_hu: float = _f(-500.0, "data", "CT above this is body: box for background centres")

    # [model]
    model_preset: str = _f("autopet", "model", "VeloxSegConfig preset")
    model_overrides: Dict[str, Any] = _f(dict, "model", "VeloxSegConfig fields to override", factory=True)

    # [sampling]
    patch_size: List[int] = _f(lambda: [96, 96, 96], "sampling", "crop size (z, y, x); also the model's "
                               "input_size", factory=True)
    volumes_per_step: int = _f(2, "sampling", "volumes per optimiser step (per process)")
    crops_per_volume: int = _f(2, "sampling", "random crops taken from each of those volumes")
    lesion_ratio: float = _f(1.0, "sampling", "relative weight of lesion-centred crops")
    background_ratio: float = _f(1.0, "sampling", "relative weight of background-centred crops")
    steps_per_epoch: int = _f(0, "sampling", "0 = one pass over the training volumes")
    hard_negative_fraction: float = _f(0.0, "sampling", "share of background crops centred on a hot non-lesion "
                                       "voxel (PET >= hard_negative_suv) instead of a uniform one; 0 = reference")
    hard_negative_suv: float = _f(2.5, "sampling", "SUV from which a non-lesion voxel counts as hot")
    mine_every: int = _f(0, "sampling", "every N steps, run the sliding window over some training volumes and "
                         "keep the model's false positives for later crops; 0 = off (reference)")
    mine_after: int = _f(0, "sampling", "first mining round not before this step (an untrained model's false "
                         "positives are everywhere and teach nothing)")
    mine_volumes: int = _f(2, "sampling", "volumes per mining round")
    mine_fraction: float = _f(0.25, "sampling", "share of crops centred on a mined false positive (once any)")
    mine_overlap: float = _f(0.0, "sampling", "sliding-window overlap when mining")
    centre_jitter: float = _f(0.0, "sampling", "move lesion and hot crop centres by up to this fraction of half "
                              "a crop per axis, so lesions are not always central; 0 = reference")

    # [augment]
    rotate: bool = _f(True, "augment", "random rotation about the z axis (in the axial y-x plane)")
    rotate_range_deg: float = _f(15.0, "augment", "rotation angle drawn uniformly from +-this")
    rotate_p: float = _f(0.5, "augment", "probability of rotating a crop")
    flip_z: bool = _f(False, "augment", "random flip along z (head-foot)")
    flip_z_p: float = _f(0.5, "augment", "probability of flipping a crop")
    scale_p: float = _f(0.0, "augment", "probability of anisotropic scaling (each axis its own factor)")
    scale_range: List[float] = _f(lambda: [0.85, 1.15], "augment", "scale factor range per axis", factory=True)
    elastic_p: float = _f(0.0, "augment", "probability of an elastic deformation")
    elastic_voxels: float = _f(3.0, "augment", "std of the elastic control-point displacements, voxels")
    pet_scale_p: float = _f(0.0, "augment", "probability of scaling all SUVs (calibration error)")
    pet_scale_range: List[float] = _f(lambda: [0.8, 1.25], "augment", "SUV factor range", factory=True)
    pet_blur_p: float = _f(0.0, "augment", "probability of blurring the PET (coarser resolution)")
    pet_blur_sigma: List[float] = _f(lambda: [0.3, 1.2], "augment", "PET blur sigma range, voxels", factory=True)
    pet_noise_p: float = _f(0.0, "augment", "probability of extra PET count noise")
    pet_noise_sigma: List[float] = _f(lambda: [0.05, 0.3], "augment", "noise std range, x sqrt(SUV)",
                                      factory=True)
    ct_contrast_p: float = _f(0.0, "augment", "probability of scaling CT contrast")
    ct_contrast_range: List[float] = _f(lambda: [0.85, 1.15], "augment", "CT contrast factor range",
                                        factory=True)

    # [loss]
    ds_weights: List[float] = _f(lambda: [1.0, 1.0, 1.0, 1.0], "loss", "main, ds_up2, ds_up3, ds_enc4; "
                                 "normalised to sum 1", factory=True)
    ce_weight: float = _f(1.0, "loss", "weight of cross-entropy inside each segmentation output's term")
    dice_weight: float = _f(1.0, "loss", "weight of the Dice loss inside each segmentation output's term")
    dice_smooth: float = _f(1e-5, "loss", "Dice smoothing added to numerator and denominator")
    seg_weight: float = _f(1.0, "loss", "weight of the deep-supervised segmentation loss")
    recon_weight: float = _f(0.5, "loss", "weight of the reconstruction MSE")
    sdkt_weight: float = _f(2.0, "loss", "weight of the SDKT Gram-matrix MSE")
    organ_weight: float = _f(0.5, "loss", "weight of the organ CE (models with an organ head: "
                                          "[model.model_overrides] n_organs)")

    # [optim]
    lr: float = _f(2.5e-4, "optim", "AdamW base learning rate")
    weight_decay: float = _f(0.01, "optim", "AdamW weight decay")
    betas: List[float] = _f(lambda: [0.9, 0.999], "optim", "AdamW betas", factory=True)
    eps: float = _f(1e-8, "optim", "AdamW eps")
    grad_clip: float = _f(0.0, "optim", "clip the gradient norm to this (0 = off, as the reference)")

    # [schedule]
    epochs: int = _f(300, "schedule", "number of epochs")
    warmup_epochs: float = _f(10.0, "schedule", "linear warm-up length in epochs")
    eta_min: float = _f(6e-6, "schedule", "learning rate at the end of the cosine")
    scheduler_interval: str = _f("epoch", "schedule", "'epoch' (reference) or 'step': when the LR changes")

    # [train]
    seed: int = _f(12345, "train", "seed of python, numpy and torch (rank r uses seed + r)")
    device: str = _f("auto", "train", "'auto', 'cpu' or 'cuda'")
    amp: str = _f("auto", "train", "'auto' (bf16 if supported on CUDA, else fp16; off on CPU), 'bf16' "
                  "(CUDA or CPU: fast where the CPU has AVX-512 BF16/AMX), 'fp16' (CUDA) or 'off'")
    num_threads: int = _f(0, "train", "torch CPU threads (0 = torch's default)")
    cudnn_deterministic: bool = _f(True, "train", "deterministic cuDNN, benchmark off (the reference)")
    fused_optimizer: bool = _f(False, "train", "AdamW as one fused kernel over all parameters (same update "
                               "rule; on CPU much cheaper than the per-parameter loop)")
    channels_last: bool = _f(False, "train", "keep the network's 5-D tensors channels-last (NDHWC): oneDNN's "
                             "convolutions and their backward run faster on CPU; same numbers up to float rounding "
                             "without dropout (with dropout the masks fall on other voxels: an equivalent, not "
                             "identical, run)")
    init_weights: str = _f("", "train", "start from the weights of this checkpoint of this project (fresh "
                           "optimiser and schedule; '' = random initialisation); relative to the working folder")
    time_budget_minutes: float = _f(0.0, "train", "stop cleanly after this many minutes (0 = no limit)")
    progress_bar: bool = _f(True, "train", "show a tqdm progress bar")

    # [validation]
    val_every: int = _f(5, "validation", "validate every N epochs (and after the last)")
    val_mode: str = _f("crops", "validation", "'crops' (fixed lesion/background crops) or "
                       "'sliding_window' (whole volumes)")
    val_crops_per_volume: int = _f(2, "validation", "fixed crops per volume in 'crops' mode")
    val_overlap: float = _f(0.25, "validation", "sliding-window overlap in 'sliding_window' mode")
    val_max_volumes: int = _f(0, "validation", "validate on at most this many volumes (0 = all)")

    # [checkpoint]
    checkpoint_every: int = _f(5, "checkpoint", "save epoch_NNNN.pt every N epochs (last.pt every epoch)")
    out_dir: str = _f("runs/veloxseg", "checkpoint", "output folder (logs, plots, checkpoints)")

    # ----------------------------------------------------------------- derived values
    @property
    def patches_per_step(self) -> int:
        return self.volumes_per_step * self.crops_per_volume

    def validate(self) -> None:
        """Reject values that cannot work, with the key's name in the message."""
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(len(self.patch_size) == 3 and all(p > 0 for p in self.patch_size),
             "patch_size must be three positive integers (z, y, x)")
        need(self.volumes_per_step >= 1, "volumes_per_step must be >= 1")
        need(self.crops_per_volume >= 1, "crops_per_volume must be >= 1")
        need(self.lesion_ratio >= 0 and self.background_ratio >= 0
             and self.lesion_ratio + self.background_ratio > 0,
             "lesion_ratio and background_ratio must be >= 0 and not both 0")
        need(self.steps_per_epoch >= 0, "steps_per_epoch must be >= 0")
        need(0 <= self.hard_negative_fraction <= 1, "hard_negative_fraction must be in [0, 1]")
        need(self.hard_negative_suv > 0, "hard_negative_suv must be > 0")
        need(0 <= self.centre_jitter <= 1, "centre_jitter must be in [0, 1]")
        need(self.mine_every >= 0 and self.mine_volumes >= 1 and self.mine_after >= 0,
             "mine_every and mine_after must be >= 0, mine_volumes >= 1")
        need(0 <= self.mine_fraction <= 1 and 0 <= self.mine_overlap < 1,
             "mine_fraction must be in [0, 1], mine_overlap in [0, 1)")
        need(0 <= self.rotate_p <= 1 and 0 <= self.flip_z_p <= 1, "rotate_p and flip_z_p must be in [0, 1]")
        need(self.rotate_range_deg >= 0, "rotate_range_deg must be >= 0")
        for name in ("scale", "elastic", "pet_scale", "pet_blur", "pet_noise", "ct_contrast"):
            need(0 <= getattr(self, f"{name}_p") <= 1, f"{name}_p must be in [0, 1]")
        for name in ("scale_range", "pet_scale_range", "pet_blur_sigma", "pet_noise_sigma", "ct_contrast_range"):
            bounds = getattr(self, name)
            need(len(bounds) == 2 and 0 <= bounds[0] <= bounds[1], f"{name} must be [low, high] with 0 <= low <= high")
        need(min(self.scale_range) > 0 and min(self.pet_scale_range) > 0, "scale factors must be > 0")
        need(self.elastic_voxels >= 0, "elastic_voxels must be >= 0")
        need(len(self.ds_weights) == 4 and all(w >= 0 for w in self.ds_weights) and sum(self.ds_weights) > 0,
             "ds_weights must be four non-negative numbers with a positive sum")
        need(all(w >= 0 for w in (self.ce_weight, self.dice_weight, self.seg_weight, self.recon_weight,
                                  self.sdkt_weight, self.organ_weight)), "loss weights must be >= 0")
        need(self.dice_smooth >= 0, "dice_smooth must be >= 0")
        need(self.lr > 0 and self.weight_decay >= 0 and self.eps > 0, "lr and eps must be > 0, "
             "weight_decay >= 0")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)")
        need(self.grad_clip >= 0, "grad_clip must be >= 0")
        need(self.epochs >= 1, "epochs must be >= 1")
        need(0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
             "warmup_epochs must be >= 0 and smaller than epochs")
        need(0 <= self.eta_min <= self.lr, "eta_min must be in [0, lr]")
        need(self.scheduler_interval in ("epoch", "step"), "scheduler_interval must be 'epoch' or 'step'")
        need(self.device in ("auto", "cpu", "cuda"), "device must be 'auto', 'cpu' or 'cuda'")
        need(self.amp in ("auto", "bf16", "fp16", "off"), "amp must be 'auto', 'bf16', 'fp16' or 'off'")
        need(self.num_threads >= 0, "num_threads must be >= 0")
        need(self.time_budget_minutes >= 0 and math.isfinite(self.time_budget_minutes),
             "time_budget_minutes must be >= 0")
        need(self.val_every >= 1, "val_every must be >= 1")
        need(self.val_mode in ("crops", "sliding_window"), "val_mode must be 'crops' or 'sliding_window'")
        need(self.val_crops_per_volume >= 1, "val_crops_per_volume must be >= 1")
        need(0 <= self.val_overlap < 1, "val_overlap must be in [0, 1)")
        need(self.val_max_volumes >= 0, "val_max_volumes must be >= 0")
        need(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        need(bool(self.out_dir), "out_dir must not be empty")
        if problems:
            raise ValueError("Invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain dict (TOML/JSON/torch-weights_only friendly), as stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a flat dict (e.g. the one stored in a checkpoint); unknown keys are errors."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown training config keys: {', '.join(unknown)}")
        converted = {name: _coerce(name, known[name], value) for name, value in values.items()}
        config = cls(**converted)
        config.validate()
        return config


def _coerce(name: str, spec, value: Any) -> Any:
    """Check a TOML value against the field's type; ints are accepted where floats are expected."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind.startswith("List[int]"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                      for v in value)
        value = list(value) if ok else value
    elif kind.startswith("List[float]"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value)
        value = [float(v) for v in value] if ok else value
    elif kind.startswith("Dict"):
        ok = isinstance(value, dict)
        value = dict(value) if ok else value
    else:  # pragma: no cover - a field type this function does not know
        raise TypeError(f"unsupported config field type {kind} for {name}")
    if not ok:
        raise ValueError(f"Training config key '{name}' must be of type {kind}, got {value!r}")
    return value


def field_sections() -> Dict[str, str]:
    """Field name -> TOML section."""
    return {f.name: f.metadata["section"] for f in fields(TrainConfig)}


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML recipe. Every key must sit in its own section; anything unknown is an error."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"Training config not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Training config {path} is not valid TOML: {error}") from None
    sections = field_sections()
    flat: Dict[str, Any] = {}
    for section, table in document.items():
        if section not in SECTIONS:
            raise ValueError(f"{path}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ValueError(f"{path}: '{section}' must be a [section], not a value")
        for key, value in table.items():
            if key not in sections:
                raise ValueError(f"{path}: unknown key '{key}' in [{section}]")
            if sections[key] != section:
                raise ValueError(f"{path}: key '{key}' belongs in [{sections[key]}], not [{section}]")
            flat[key] = value
    try:
        return TrainConfig.from_dict(flat)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def dump_toml(config: TrainConfig) -> str:
    """The config as TOML text in the same section layout (written next to a run for the record)."""
    by_section: Dict[str, List[str]] = {s: [] for s in SECTIONS}
    tables: List[str] = []
    for spec in fields(TrainConfig):
        value = getattr(config, spec.name)
        section = spec.metadata["section"]
        if isinstance(value, dict):
            body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in sorted(value.items()))
            tables.append(f"[{section}.{spec.name}]\n{body}\n")
        else:
            by_section[section].append(f"{spec.name} = {_toml_value(value)}")
    parts = [f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in by_section.items() if lines]
    return "\n".join(parts + tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
