"""Sliding-window inference over a (cropped) model-grid volume, blending lesion-vs-background logits.

Window placement follows MONAI's sliding_window_inference (the reference): stride = int(patch x (1 -
overlap)), windows from index 0, the last one moved back to end at the border. Blending averages LOGITS,
uniformly ("constant" mode, as the reference) or with a Gaussian importance map (sigma = 0.125 x patch).

For two classes argmax(mean logits) == [mean(lesion - background) > 0], so only that difference is
accumulated: one float32 sum plus one float32 weight volume, both the size of the cropped grid.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import Cancelled, InputError

NOT_COVERED = -20.0  # logit difference given to voxels no window covered (skipped air): clearly background


def window_starts(length: int, patch: int, stride: int) -> list:
    if length <= patch:
        return [0]
    count = -(-(length - patch) // stride) + 1
    return sorted({min(i * stride, length - patch) for i in range(count)})


def stride_for(patch: int, overlap: float) -> int:
    return max(1, int(patch * (1.0 - overlap)))


def gaussian_importance(patch_size, sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weights peaking at 1 in the patch centre, floored so borders still count."""
    weights = np.ones((1, 1, 1), dtype=np.float64)
    for axis, size in enumerate(patch_size):
        centre = (size - 1) / 2.0
        sigma = max(size * sigma_scale, 1e-3)
        profile = np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)
        shape = [1, 1, 1]
        shape[axis] = size
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def plan_windows(shape_zyx, patch_size, overlap: float) -> list:
    """Window start indices (z, y, x) covering a volume of the given shape."""
    starts = [window_starts(n, p, stride_for(p, overlap)) for n, p in zip(shape_zyx, patch_size)]
    return list(itertools.product(*starts))


BLENDINGS = ("uniform", "gaussian")  # uniform: plain average of overlapping windows (the reference)


def sliding_window_logit_diff(
    ct: np.ndarray,
    pet: np.ndarray,
    run_patch,
    patch_size=(96, 96, 96),
    overlap: float = 0.25,
    blending: str = "uniform",
    body=None,
    pad_values=(0.0, 0.0),
    progress=None,
    cancelled=None,
    organ_votes=None,
) -> np.ndarray:
    """Blended (lesion - background) logit per voxel, float32, shape of ct/pet.

    ct, pet: normalised (z, y, x) float32 arrays of equal shape. run_patch: (1, 2, *patch) float32 ->
    logits (1, 2, *patch). body: optional boolean (z, y, x) array; windows without a body voxel are not run
    (their voxels get NOT_COVERED unless another window covers them). Volumes smaller than a patch are
    padded with pad_values (normalised CT air, PET zero). progress(fraction) is called after each window;
    cancelled() is checked before each window and raises Cancelled. organ_votes: an organs.OrganVotes of
    the volume's shape, for a model with an organ output; run_patch then returns (logits, organ logits) and
    each window's organ logits go to organ_votes (the blended lesion logits are the same either way).
    """
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}.")
    if blending not in BLENDINGS:
        raise InputError(f"blending must be 'uniform' or 'gaussian', got {blending!r}.")
    if ct.shape != pet.shape:
        raise ValueError(f"CT and PET arrays differ in shape: {ct.shape} vs {pet.shape}")
    shape = ct.shape
    patch_size = tuple(int(p) for p in patch_size)
    padding = [(0, max(0, p - n)) for n, p in zip(shape, patch_size)]
    if any(after for _, after in padding):
        ct = np.pad(ct, padding, mode="constant", constant_values=pad_values[0])
        pet = np.pad(pet, padding, mode="constant", constant_values=pad_values[1])
        if body is not None:
            body = np.pad(body, padding, mode="constant", constant_values=False)
    padded_shape = ct.shape

    weights = gaussian_importance(patch_size) if blending == "gaussian" else None
    total = np.zeros(padded_shape, dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    batch = np.empty((1, 2, *patch_size), dtype=np.float32)

    windows = plan_windows(padded_shape, patch_size, overlap)
    for number, (z, y, x) in enumerate(windows):
        if cancelled is not None and cancelled():
            raise Cancelled("Segmentation cancelled.")
        region = (slice(z, z + patch_size[0]), slice(y, y + patch_size[1]), slice(x, x + patch_size[2]))
        if body is None or body[region].any():
            batch[0, 0] = ct[region]
            batch[0, 1] = pet[region]
            logits = run_patch(batch)
            if organ_votes is not None:
                logits, organ_logits = logits
                organ_votes.add(region, organ_logits[0])
            diff = logits[0, 1] - logits[0, 0]
            if weights is None:
                total[region] += diff
                weight_sum[region] += 1.0
            else:
                total[region] += diff * weights
                weight_sum[region] += weights
        if progress is not None:
            progress((number + 1) / len(windows))

    covered = weight_sum > 0
    np.divide(total, weight_sum, out=total, where=covered)
    total[~covered] = NOT_COVERED
    del weight_sum
    return total[: shape[0], : shape[1], : shape[2]]
