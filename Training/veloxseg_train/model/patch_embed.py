"""Patch embedding (one per modality) and patch merging of the transformer branch (spec §2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ChannelLayerNorm, conv1x1


class PatchEmbed(nn.Module):
    """Conv k=p, stride p: (B, 1, D, H, W) -> (B, C, D/p, H/p, W/p); axes not divisible by p are zero-padded."""

    def __init__(self, in_channels: int, channels: int, patch_size: int, dropout: float):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_channels, channels, kernel_size=patch_size, stride=patch_size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [(-s) % self.patch_size for s in x.shape[:1:-1]]  # (W, H, D) order for F.pad
        if any(pad):
            x = F.pad(x, [p for amount in pad for p in (0, amount)])
        return self.drop(self.proj(x))


class PatchMerging(nn.Module):
    """Space-to-depth by 2, cLN over 8C, then a bias-free 1x1x1 conv 8C -> 2C: (B, C, S) -> (B, 2C, S/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ChannelLayerNorm(8 * channels)
        self.reduction = conv1x1(8 * channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 8 sub-lattices in (d, h, w) offset order 000, 001, ..., 111 (last axis fastest);
        # strided slices export as cheap ONNX Slice ops
        parts = [x[:, :, d::2, h::2, w::2] for d in (0, 1) for h in (0, 1) for w in (0, 1)]
        return self.reduction(self.norm(torch.cat(parts, dim=1)))
