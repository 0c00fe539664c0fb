"""Johnson-Lindenstrauss-guided group convolution block (JLC, spec §2.3).

Parallel grouped convolutions with kernels 1/3/5 (group size chosen by the JL bound: few channels per
group suffice to preserve pairwise distances), summed with the input, then a pre-norm channel MLP.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import conv1x1, instance_norm
from .sliced_conv import depth_sliced_conv3d


class GroupConvBranch(nn.Module):
    """Grouped Conv3d C -> C (kernel k, 'same' padding) + IN + GELU.

    The convolution is evaluated slice by slice in 2-D (`depth_sliced_conv3d`), several times faster on
    CPU than PyTorch's grouped Conv3d; `self.conv` holds the weights in the usual Conv3d layout.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=groups)
        self.norm = instance_norm(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(depth_sliced_conv3d(x, self.conv.weight, self.conv.bias, self.conv.groups)))


class ChannelMLP(nn.Module):
    """Pre-norm channel mixer: IN -> 1x1 C->eC -> GELU -> 1x1 eC->C -> dropout."""

    def __init__(self, channels: int, expansion: int, dropout: float):
        super().__init__()
        self.norm = instance_norm(channels)
        self.fc1 = conv1x1(channels, channels * expansion)
        self.act = nn.GELU()
        self.fc2 = conv1x1(channels * expansion, channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(self.norm(x)))))


class JLCBlock(nn.Module):
    """y = x + sum_k GELU(IN(GConv_k(x))); out = y + MLP(IN(y)). Shape-preserving: (B, C, D, H, W)."""

    def __init__(self, channels: int, group_size: int, expansion: int, kernel_sizes: Sequence[int],
                 dropout: float):
        super().__init__()
        groups = channels // group_size
        self.branches = nn.ModuleList(GroupConvBranch(channels, k, groups) for k in kernel_sizes)
        self.mlp = ChannelMLP(channels, expansion, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for branch in self.branches:
            y = y + branch(x)
        return y + self.mlp(y)
