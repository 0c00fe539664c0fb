"""Window partition / reverse, relative-position indices and in-window upsampling matrices.

Partitions use only rank <= 4 transposes (three swaps of adjacent axis groups) rather than one 8-D
permute: ONNX Runtime runs high-rank transposes slowly (spec §9.4), and the tensors here are small.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch


def _swap(x: torch.Tensor, lead: int, a: int, b: int) -> torch.Tensor:
    """Swap two adjacent axis groups of sizes a and b that follow `lead` merged leading elements."""
    return x.reshape(lead, a, b, -1).transpose(1, 2)


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(N, D, H, W) -> (N, windows, tokens): non-overlapping windows, both axes row-major (d, h, w)."""
    n, d, h, w = x.shape
    wd, wh, ww = window
    gd, gh, gw = d // wd, h // wh, w // ww
    # axes: [gd wd gh wh gw ww] -> [gd gh gw wd wh ww] in three adjacent-group swaps
    x = _swap(x, n * gd, wd, gh * wh * gw * ww)  # [gd (gh wh gw ww) wd]
    x = _swap(x, n * gd * gh, wh, gw * ww * wd)  # [gd gh (gw ww wd) wh]
    x = _swap(x, n * gd * gh * gw, ww, wd * wh)  # [gd gh gw (wd wh) ww]
    return x.reshape(n, gd * gh * gw, wd * wh * ww)


def window_reverse(x: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of `window_partition`: (N, windows, tokens) -> (N, D, H, W)."""
    n = x.shape[0]
    wd, wh, ww = window
    gd, gh, gw = (g // w for g, w in zip(grid, window))
    # [gd gh gw wd wh ww] -> [gd wd gh wh gw ww], undoing the partition's swaps in reverse order
    x = _swap(x, n * gd * gh * gw, wd * wh, ww)  # [gd gh gw ww (wd wh)]
    x = _swap(x, n * gd * gh, gw * ww * wd, wh)  # [gd gh wh (gw ww wd)]
    x = _swap(x, n * gd, gh * wh * gw * ww, wd)  # [gd wd (gh wh gw ww)]
    return x.reshape(n, gd * wd, gh * wh, gw * ww)


def relative_position_index(tokens: Sequence[int]) -> torch.Tensor:
    """Swin-style index into a ((2n-1)^3, heads) table for every (query, key) pair of an n-grid."""
    coords = np.array(list(itertools.product(*(range(t) for t in tokens))))  # (T, 3), row-major
    delta = coords[:, None, :] - coords[None, :, :] + np.array(tokens) - 1  # query - key, shifted >= 0
    span = 2 * np.array(tokens) - 1
    index = delta[..., 0] * span[1] * span[2] + delta[..., 1] * span[2] + delta[..., 2]
    return torch.from_numpy(index.astype(np.int64))


def _linear_align_corners(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation with align_corners=True."""
    matrix = np.zeros((n_out, n_in))
    if n_in == 1:
        matrix[:, 0] = 1.0
        return matrix
    positions = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
    left = np.minimum(np.floor(positions).astype(int), n_in - 2)
    frac = positions - left
    matrix[np.arange(n_out), left] = 1.0 - frac
    matrix[np.arange(n_out), left + 1] += frac
    return matrix


def upsample_matrix(tokens: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """(prod(size), prod(tokens)) matrix: trilinear align_corners=True upsampling of one window.

    Trilinear interpolation is separable, so the 3-D operator is the Kronecker product of three 1-D
    ones; applying it as one matmul keeps the in-window upsampling a single MatMul in ONNX.
    """
    d, h, w = (_linear_align_corners(t, s) for t, s in zip(tokens, size))
    return torch.from_numpy(np.kron(np.kron(d, h), w).astype(np.float32))
