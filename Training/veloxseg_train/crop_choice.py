"""Which crops a training step gets: the planned volumes' crops, mined hard negatives, augmentation.

The step's volumes come from the epoch plan (sampling.epoch_plan). Each volume gives `crops_per_volume`
crops: with mining on, each is, with probability `mine_fraction`, centred on a false positive of the mined
pool (mining.py) instead of the sampler's lesion/background/hot-voxel choice. Every crop then gets its own
augmentation. All draws come from the run's Generator, in a fixed order, so a resumed run draws the same
crops. Volumes not cached in memory are loaded ahead in background threads (`Prefetcher`).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from . import augment
from .mining import HardNegativePool
from .sampling import CropSampler
from .train_config import TrainConfig
from .training_data import VolumeStore


class Prefetcher:
    """Loads the volumes of the next steps in background threads (only when volumes are not cached)."""

    def __init__(self, store: VolumeStore, workers: int):
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="veloxseg-load")
        self.pending: Dict[int, deque] = {}

    def schedule(self, indices: List[int]) -> None:
        for index in indices:
            self.pending.setdefault(index, deque()).append(self.pool.submit(self.store.__getitem__, index))

    def get(self, index: int):
        queue = self.pending.get(index)
        if queue:
            return queue.popleft().result()
        return self.store[index]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(eq=False)
class CropChooser:
    """The crops (and their augmentation) of a step's volumes, as one batch of device tensors.

    `mined` is the run's pool, shared with the mining rounds and the checkpoints; the Generator is passed
    with every call, since a resume may replace the run's.
    """

    config: TrainConfig  # crops_per_volume, mine_every, mine_fraction, cache_volumes
    store: VolumeStore
    sampler: CropSampler
    mined: HardNegativePool
    settings: augment.AugmentSettings
    device: torch.device
    memory_format: torch.memory_format
    prefetcher: Optional[Prefetcher] = field(init=False)

    def __post_init__(self) -> None:
        self.prefetcher = None if self.config.cache_volumes else Prefetcher(self.store, workers=2)

    def prefetch(self, plan: List[List[int]]) -> None:
        """Start loading the volumes of these steps (nothing to do when the volumes are cached)."""
        if self.prefetcher:
            for indices in plan:
                self.prefetcher.schedule(indices)

    def close(self) -> None:
        if self.prefetcher:
            self.prefetcher.close()

    def crops(self, index: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The crops of one planned volume; with mining on, each may instead come from a mined false positive."""
        volume = self.prefetcher.get(index) if self.prefetcher else self.store[index]
        config = self.config
        if not config.mine_every:
            return [(image, label) for image, label, _ in self.sampler.sample(volume, config.crops_per_volume, rng)]
        crops = []
        for _ in range(config.crops_per_volume):
            mined = self.mined.draw(rng) if rng.random() < config.mine_fraction and len(self.mined) else None
            source = self._mined_source(mined)
            if source is not None:
                centre = tuple(int(i) for i in np.unravel_index(mined[1], source.shape))
                crops.append(self.sampler.crop(source, self.sampler.jittered(centre, rng)))
            else:
                image, label, _ = self.sampler.sample(volume, 1, rng)[0]
                crops.append((image, label))
        return crops

    def _mined_source(self, mined: Optional[Tuple[int, int]]):
        """The volume of a drawn mined voxel, or None (nothing drawn, or a voxel outside its volume)."""
        if mined is None:
            return None
        source = self.store[mined[0]]
        if mined[1] >= int(np.prod(source.shape)):
            # A pool restored from a checkpoint of other (regenerated) data: its voxel lies outside this
            # volume's grid. Forget that volume; the next mining round records it afresh.
            self.mined.forget(mined[0])
            return None
        return source

    def batch(self, indices: List[int], rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """Crops (and their augmentation) of the given volumes, as device tensors."""
        images, labels = [], []
        for index in indices:
            for image, label in self.crops(index, rng):
                params = augment.draw_params(self.settings, rng)
                image_t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
                label_t = torch.from_numpy(np.ascontiguousarray(label)).to(self.device, non_blocking=True)
                image_t, label_t = augment.apply(image_t, label_t, params)
                images.append(image_t)
                labels.append(label_t)
        return torch.stack(images).contiguous(memory_format=self.memory_format), torch.stack(labels)
