"""Hard-negative mining on whole volumes: where does the current model see lesions that are not there?

Every `mine_every` steps the trainer runs the sliding window (the inference path, on the normalised
model-grid volume) over a few training volumes with the model as it is, and keeps the voxels it calls lesion
outside the label: its false positives. A share of later crops (`mine_fraction`) is centred on one of them,
so the model is shown, again and again, exactly the patches it gets wrong on whole studies — which random
and hot-voxel crops only find by chance. The pool holds the latest result per volume (a volume mined again
replaces its entry; an empty result removes it) and is saved with the checkpoint, so a resumed run draws the
same crops.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from VeloxSegSlicerLib.engine import sliding_window_logit_diff

from .training_data import VolumeStore


class HardNegativePool:
    """False-positive voxels (flat indices into each volume's padded grid) of recently mined volumes."""

    def __init__(self, max_volumes: int = 32, max_voxels: int = 2000):
        self.max_volumes = max_volumes
        self.max_voxels = max_voxels
        self.entries: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def update(self, index: int, false_positive: np.ndarray) -> int:
        """Record the false-positive mask of volume `index`; returns its voxel count."""
        flat = np.flatnonzero(false_positive)
        self.entries.pop(index, None)
        if flat.size:
            if flat.size > self.max_voxels:  # evenly thinned: every false-positive region stays represented
                flat = flat[:: -(-flat.size // self.max_voxels)]
            self.entries[index] = flat.astype(np.int32)  # small in the checkpoint (< 256 KB in all)
            while len(self.entries) > self.max_volumes:
                self.entries.popitem(last=False)
        return int(np.count_nonzero(false_positive))

    def forget(self, index: int) -> None:
        """Drop volume `index` (its recorded voxels no longer fit it: the data were regenerated)."""
        self.entries.pop(index, None)

    def draw(self, rng: np.random.Generator) -> Tuple[int, int]:
        """(volume index, flat voxel index) of one false positive, volumes equally likely."""
        keys = list(self.entries)
        index = keys[int(rng.integers(len(keys)))]
        voxels = self.entries[index]
        return index, int(voxels[rng.integers(len(voxels))])

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {str(k): torch.from_numpy(v) for k, v in self.entries.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.entries = OrderedDict((int(k), v.numpy().astype(np.int32)) for k, v in state.items())


def mine_volumes(model: torch.nn.Module, store: VolumeStore, indices: Sequence[int], pool: HardNegativePool,
                 patch_size, device: torch.device, autocast: Callable = nullcontext,
                 overlap: float = 0.0) -> List[Tuple[str, int]]:
    """Run the sliding window over `indices`, update the pool; returns (volume name, false-positive voxels)."""
    was_training = model.training
    model.eval()

    def run_patch(batch: np.ndarray) -> np.ndarray:
        with autocast():
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    found: List[Tuple[str, int]] = []
    try:
        with torch.no_grad():
            for index in indices:
                volume = store[index]
                diff = sliding_window_logit_diff(volume.image[0], volume.image[1], run_patch, patch_size, overlap)
                false_positive = (diff > 0) & (volume.label == 0)
                inside = np.zeros_like(false_positive)
                inside[volume.original_region] = True  # not the padding added to reach one crop
                found.append((volume.name, pool.update(int(index), false_positive & inside)))
    finally:
        model.train(was_training)
    return found


def pick_volumes(n_volumes: int, count: int, seed: int, global_step: int, rank: int = 0) -> List[int]:
    """Which volumes a mining round visits: a function of (seed, step, rank) only, so resume repeats it."""
    rng = np.random.default_rng([seed, global_step, rank, 0x313])
    return [int(i) for i in rng.choice(n_volumes, size=min(count, n_volumes), replace=False)]
