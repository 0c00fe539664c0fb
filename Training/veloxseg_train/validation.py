"""Validation during training: Dice, HD95, precision, recall and AutoPET FP/FN volumes on held-out data.

Two modes (config `val_mode`):
- "crops": a fixed set of crops per validation volume, chosen once from the seed (half centred on a lesion
  voxel when the volume has lesions, moved by `centre_jitter` as in training; the rest on background), so
  every validation sees the same inputs and the numbers are comparable across epochs. Each crop counts as
  one case. Cheap: one forward per crop, which is what a CPU run can afford (the reference also validates on
  random pos/neg crops).
- "sliding_window": whole volumes with the engine's sliding window (the inference code path, on the
  already normalised model-grid volume). Meaningful but ~10-40 forwards per volume.
Under DDP the items are shared out over the processes and the per-item rows gathered on every process.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from VeloxSegSlicerLib.engine import sliding_window_logit_diff

from .metrics import case_metrics, summarize
from .sampling import CropSampler
from .training_data import VolumeStore

Item = Tuple[int, Optional[Tuple[int, int, int]]]  # (volume index, crop centre or None = whole volume)


def plan_items(store: VolumeStore, mode: str, crops_per_volume: int, patch_size, seed: int,
               centre_jitter: float = 0.0) -> List[Item]:
    """The validation items, fixed for the whole run (lesion centres jittered as in training)."""
    if mode == "sliding_window":
        return [(i, None) for i in range(len(store))]
    sampler = CropSampler(patch_size, centre_jitter=centre_jitter)
    items: List[Item] = []
    for index in range(len(store)):
        volume = store[index]
        rng = np.random.default_rng([seed, index, 0xFA1])
        for k in range(crops_per_volume):
            if k % 2 == 0 and len(volume.lesion_index):
                centre = sampler.jittered(sampler.lesion_centre(volume, rng), rng)
            else:
                centre = sampler.background_centre(volume, rng)
            items.append((index, centre))
    return items


def validate(model: torch.nn.Module, store: VolumeStore, items: List[Item], patch_size, device: torch.device,
             autocast: Callable = nullcontext, batch_size: int = 2, overlap: float = 0.25, rank: int = 0,
             world_size: int = 1) -> Tuple[Dict[str, float], List[Dict[str, float]]]:
    """(summary, rows) over `items`; `model` is the bare (non-DDP) network, switched to eval and back."""
    was_training = model.training
    model.eval()
    sampler = CropSampler(patch_size)
    mine = items[rank::world_size]
    rows: List[Dict[str, float]] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast():
            return model(batch)

    def run_patch(batch: np.ndarray) -> np.ndarray:
        return forward(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    try:
        with torch.no_grad():
            crops = [(i, c) for i, c in mine if c is not None]
            for start in range(0, len(crops), batch_size):
                chunk = crops[start:start + batch_size]
                images, labels = [], []
                for index, centre in chunk:
                    image, label = sampler.crop(store[index], centre)
                    images.append(torch.from_numpy(np.ascontiguousarray(image)))
                    labels.append(label)
                pred = forward(torch.stack(images).to(device)).argmax(1).cpu().numpy().astype(bool)
                for (index, _), p, label in zip(chunk, pred, labels):
                    volume = store[index]
                    rows.append({"name": volume.name, **case_metrics(p, label > 0, volume.spacing_zyx)})
            for index, centre in mine:
                if centre is not None:
                    continue
                volume = store[index]
                diff = sliding_window_logit_diff(volume.image[0], volume.image[1], run_patch, patch_size, overlap)
                pred = diff > 0  # lesion logit above background logit == argmax
                # Score on the case's own grid: drop the padding added to reach one crop.
                region = volume.original_region
                rows.append({"name": volume.name,
                             **case_metrics(pred[region], volume.label[region] > 0, volume.spacing_zyx)})
    finally:
        model.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        gathered: List[Optional[List[Dict[str, float]]]] = [None] * world_size
        dist.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    return summarize(rows), rows

