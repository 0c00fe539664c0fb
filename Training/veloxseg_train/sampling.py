"""Which volumes each step uses, and where its crops are centred.

Per step every process takes `volumes_per_step` volumes and cuts `crops_per_volume` crops from each
(the reference: 2 x 2). Each crop is centred on a lesion voxel with probability
lesion_ratio / (lesion_ratio + background_ratio), otherwise on a background voxel inside the body's bounding
box (the reference's CropForeground + RandCropByPosNegLabel). Optionally (not in the reference) a share of the
background crops is centred on a hot non-lesion voxel instead, so that short runs see the physiological
uptake the model must learn to leave out (brain, bladder, kidneys...) more often than uniform centring
would show it. Also optional (`centre_jitter`, not in the reference): lesion and hot centres are moved by a
random offset of up to jitter x half a crop per axis, so the lesion does not always sit in the middle of the
crop. Without it a short run learns "lesions are central" and misses them wherever a sliding window puts
them off-centre. Lesion-free volumes always give background crops. A crop whose centre is near the border
is shifted inwards so it stays inside the volume; volumes smaller than a crop were padded when loaded.

All randomness comes from a `numpy.random.Generator` owned by the caller, so a resumed run can restore it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .training_data import Volume

Centre = Tuple[int, int, int]


def epoch_plan(n_volumes: int, epoch: int, seed: int, volumes_per_step: int, steps_per_epoch: int = 0,
               rank: int = 0, world_size: int = 1) -> List[List[int]]:
    """Volume indices for each step of `epoch` on process `rank`.

    The order is a permutation seeded by (seed, epoch) only, so every process computes the same global plan
    and a resumed run can recompute it. steps_per_epoch = 0 means one pass over the volumes (the last step is
    filled from the next permutation, as DistributedSampler pads); more steps draw further permutations.
    Process r takes slot r of every step, so processes never share a volume within a step.
    """
    if n_volumes < 1:
        raise ValueError("no training volumes")
    per_step = volumes_per_step * world_size
    steps = steps_per_epoch or -(-n_volumes // per_step)
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    order: List[int] = []
    while len(order) < steps * per_step:
        order.extend(int(i) for i in rng.permutation(n_volumes))
    slots = np.asarray(order[: steps * per_step]).reshape(steps, world_size, volumes_per_step)
    return [list(map(int, slots[s, rank])) for s in range(steps)]


class CropSampler:
    """Draws crop centres (lesion or background) and cuts crops out of a `Volume`."""

    # Hot voxels kept per volume for hard-negative centring: enough to cover every hot organ, small in memory.
    MAX_HOT_VOXELS = 50_000

    def __init__(self, patch_size: Sequence[int], lesion_ratio: float = 1.0, background_ratio: float = 1.0,
                 max_tries: int = 100, hard_negative_fraction: float = 0.0,
                 hot_threshold: Optional[float] = None, centre_jitter: float = 0.0):
        """hot_threshold: the normalised PET value (channel 1) from which a voxel is hot; needed when
        hard_negative_fraction > 0."""
        total = lesion_ratio + background_ratio
        if total <= 0 or lesion_ratio < 0 or background_ratio < 0:
            raise ValueError("lesion_ratio and background_ratio must be >= 0 and not both 0")
        if not 0 <= hard_negative_fraction <= 1:
            raise ValueError("hard_negative_fraction must be in [0, 1]")
        if not 0 <= centre_jitter <= 1:
            raise ValueError("centre_jitter must be in [0, 1]")
        if hard_negative_fraction > 0 and hot_threshold is None:
            raise ValueError("hard-negative centring needs the hot PET threshold")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.lesion_probability = lesion_ratio / total
        self.max_tries = max_tries
        self.hard_negative_fraction = hard_negative_fraction
        self.hot_threshold = hot_threshold
        self.max_offset = tuple(int(centre_jitter * (p // 2)) for p in self.patch_size)
        self._hot_index: Dict[str, np.ndarray] = {}

    def hot_index(self, volume: Volume) -> np.ndarray:
        """Flat indices of hot non-lesion voxels of `volume` (computed once; evenly thinned if many)."""
        index = self._hot_index.get(volume.name)
        if index is None:
            hot = (volume.image[1] >= self.hot_threshold) & (volume.label == 0)
            index = np.flatnonzero(hot)
            if len(index) > self.MAX_HOT_VOXELS:  # deterministic thinning keeps every organ represented
                index = index[:: -(-len(index) // self.MAX_HOT_VOXELS)]
            self._hot_index[volume.name] = index
        return index

    def hard_negative_centre(self, volume: Volume, rng: np.random.Generator) -> Optional[Centre]:
        index = self.hot_index(volume)
        if not len(index):
            return None
        return tuple(int(i) for i in np.unravel_index(index[rng.integers(len(index))], volume.shape))

    def lesion_centre(self, volume: Volume, rng: np.random.Generator) -> Centre:
        flat = volume.lesion_index[rng.integers(len(volume.lesion_index))]
        return tuple(int(i) for i in np.unravel_index(flat, volume.shape))

    def jittered(self, centre: Centre, rng: np.random.Generator) -> Centre:
        """`centre` moved by up to max_offset per axis (unchanged, and no draw, when jitter is 0)."""
        if not any(self.max_offset):
            return centre
        return tuple(int(c + rng.integers(-m, m + 1)) for c, m in zip(centre, self.max_offset))

    def background_centre(self, volume: Volume, rng: np.random.Generator) -> Centre:
        """A uniformly drawn label-0 voxel of the body box (rejection sampling: lesions are rare)."""
        lo, hi = volume.body_lo, volume.body_hi
        for _ in range(self.max_tries):
            centre = tuple(int(rng.integers(a, b)) for a, b in zip(lo, hi))
            if volume.label[centre] == 0:
                return centre
        # A box almost filled by lesion: take any background voxel, or the box centre if there is none.
        background = np.flatnonzero(volume.label == 0)
        if len(background):
            return tuple(int(i) for i in np.unravel_index(background[rng.integers(len(background))], volume.shape))
        return tuple((a + b) // 2 for a, b in zip(lo, hi))

    def draw_centre(self, volume: Volume, rng: np.random.Generator) -> Tuple[Centre, bool]:
        """(centre, lesion_centred). A lesion-free volume always yields a background centre.

        One uniform number is always drawn first, so the stream of draws does not depend on the volume.
        """
        want_lesion = rng.random() < self.lesion_probability
        if want_lesion and len(volume.lesion_index):
            return self.jittered(self.lesion_centre(volume, rng), rng), True
        if self.hard_negative_fraction > 0 and rng.random() < self.hard_negative_fraction:
            centre = self.hard_negative_centre(volume, rng)
            if centre is not None:  # a volume without hot background falls back to uniform centring
                return self.jittered(centre, rng), False
        return self.background_centre(volume, rng), False

    def crop_start(self, shape: Sequence[int], centre: Centre) -> Tuple[int, int, int]:
        """Start index of the crop centred on `centre`, shifted to lie inside the volume."""
        return tuple(int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch_size, shape))

    def crop(self, volume: Volume, centre: Centre) -> Tuple[np.ndarray, np.ndarray]:
        """(image (2, *patch), label (*patch)) views into the volume around `centre`; a volume with organ
        codes gives label (2, *patch): lesion, organ code."""
        start = self.crop_start(volume.shape, centre)
        region = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
        if volume.organs is not None:
            return volume.image[(slice(None),) + region], np.stack([volume.label[region], volume.organs[region]])
        return volume.image[(slice(None),) + region], volume.label[region]

    def sample(self, volume: Volume, n: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, np.ndarray, bool]]:
        """n crops of one volume: (image, label, lesion_centred) each."""
        crops = []
        for _ in range(n):
            centre, lesion = self.draw_centre(volume, rng)
            image, label = self.crop(volume, centre)
            crops.append((image, label, lesion))
        return crops
