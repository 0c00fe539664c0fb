"""Small building blocks shared by the branches: channels-first LayerNorm, 1x1x1 convs, the channel MLP."""

from __future__ import annotations

import torch
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) tensor ("cLN" in the spec).

    Biased variance and eps 1e-6, then a per-channel affine, as the authors' custom norm.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=bias)


def instance_norm(channels: int) -> nn.InstanceNorm3d:
    """Affine-free instance norm with per-instance statistics in eval mode too (spec notation "IN")."""
    return nn.InstanceNorm3d(channels, affine=False, track_running_stats=False)


class PointwiseMLP(nn.Module):
    """1x1x1 conv C -> rC, exact GELU, dropout, 1x1x1 conv rC -> C, dropout (the transformer FFN)."""

    def __init__(self, channels: int, ratio: int, dropout: float):
        super().__init__()
        self.fc1 = conv1x1(channels, channels * ratio)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = conv1x1(channels * ratio, channels)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
