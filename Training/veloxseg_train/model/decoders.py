"""Segmentation decoder ("student") and the per-modality reconstruction decoders ("texture teachers").

Both climb from the 3^3 bottleneck to 24^3 with ConvTranspose + IN, a skip addition and a JLC block per
stage, then reach 96^3 in one step: a 3x3x3 conv to classes x 4^3 channels and a 4x pixel shuffle
("unified upsampling", spec §2.4-2.5).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import VeloxSegConfig
from .jlc import JLCBlock
from .layers import conv1x1, instance_norm


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C*f^3, D, H, W) -> (B, C, f*D, f*H, f*W); channel = c*f^3 + s1*f^2 + s2*f + s3.

    Done as three swaps of adjacent axis groups (rank <= 4 transposes) instead of one 8-D permute,
    which ONNX Runtime executes slowly.
    """
    b, channels, d, h, w = x.shape
    out_channels = channels // factor**3
    f = factor
    x = x.reshape(b * out_channels, f**3, d, h * w).transpose(1, 2)  # [D s1 s2 s3 H W]
    x = x.reshape(b * out_channels * d * f, f * f, h, w).transpose(1, 2)  # [D s1 H s2 s3 W]
    x = x.reshape(b * out_channels * d * f * h * f, f, w).transpose(1, 2)  # [D s1 H s2 W s3]
    return x.reshape(b, out_channels, d * f, h * f, w * f)


class UpConv(nn.Module):
    """ConvTranspose3d (kernel 2, stride 2) + IN: (B, 2C, S) -> (B, C, 2S)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = instance_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ShuffleHead(nn.Module):
    """3x3x3 conv C -> classes*f^3, then pixel shuffle by f: (B, C, S) -> (B, classes, f*S)."""

    def __init__(self, channels: int, out_channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv3d(channels, out_channels * factor**3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), self.factor)


class DecoderBody(nn.Module):
    """Stages 3 -> 1: u_k = JLC_k(skip_k + UpConv_k(u_{k+1})), starting from u_4 = the bottleneck.

    `ups[k]` and `blocks[k]` produce stage k's features (0-based), so `ups[stages-1]` does not exist.
    """

    def __init__(self, cfg: VeloxSegConfig):
        super().__init__()
        levels = range(cfg.stages - 1)
        self.ups = nn.ModuleList(UpConv(cfg.channels(k + 1), cfg.channels(k)) for k in levels)
        self.blocks = nn.ModuleList(
            JLCBlock(cfg.channels(k), cfg.min_dim_group[k], cfg.expansion[k], cfg.kernel_sizes, cfg.conv_drop)
            for k in levels)

    def forward(self, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """skips: stage features (B, C_k, S_k^3), k = 0..3. Returns [u_1, u_2, u_3] (finest first)."""
        x = skips[-1]
        outputs = [None] * len(self.ups)
        for k in reversed(range(len(self.ups))):
            x = self.blocks[k](skips[k] + self.ups[k](x))
            outputs[k] = x
        return outputs


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, C, C): G = X X^T / (C * D*H*W), no centring (spec §2.6)."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * flat.shape[-1])


class SegOutput(NamedTuple):
    logits: torch.Tensor  # (B, classes, D, H, W)
    deep_supervision: Optional[List[torch.Tensor]]  # on u_2, u_3, enc_4; each resized to (D, H, W)
    gram: Optional[torch.Tensor]  # Gram matrix of u_1, (B, C_1, C_1)
    organs: Optional[torch.Tensor] = None  # organ logits on u_1's grid, (B, organs, D/4, H/4, W/4)


class OrganHead(nn.Module):
    """Anatomy beside the lesion class: a 1x1x1 conv on u_1, (B, C_1, S) -> (B, organs, S), at 1/4 resolution.

    A second head rather than more lesion-head channels: organs and lesions overlap (a liver lesion lies in
    the liver), so they need separate softmaxes; the lesion head stays the authors' 2-class head (their
    checkpoints import), and at 1/4 resolution the head costs ~0.1 % of the network's FLOPs. Its gradient
    teaches u_1 - the features the lesion head reads - where in the body a voxel is.
    """

    def __init__(self, channels: int, organs: int):
        super().__init__()
        self.conv = conv1x1(channels, organs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SegmentationDecoder(nn.Module):
    def __init__(self, cfg: VeloxSegConfig):
        super().__init__()
        self.body = DecoderBody(cfg)
        self.head = ShuffleHead(cfg.channels(0), cfg.n_classes, cfg.patch_size)
        # deep-supervision 1x1x1 heads on u_2, u_3 and the bottleneck enc_4 (spec §8.5), training only
        self.ds_heads = nn.ModuleList(conv1x1(cfg.channels(k), cfg.n_classes) for k in range(1, cfg.stages))
        self.organ_head = OrganHead(cfg.channels(0), cfg.n_organs) if cfg.n_organs else None

    def forward(self, fused: Sequence[torch.Tensor]) -> SegOutput:
        ups = self.body(fused)
        logits = self.head(ups[0])
        organs = self.organ_head(ups[0]) if self.organ_head is not None else None
        if not self.training:
            return SegOutput(logits, None, None, organs)
        sources = list(ups[1:]) + [fused[-1]]
        size = logits.shape[2:]
        deep = [F.interpolate(head(s), size=size, mode="trilinear", align_corners=True)
                for head, s in zip(self.ds_heads, sources)]
        return SegOutput(logits, deep, gram_matrix(ups[0]), organs)


class Adapter(nn.Module):
    """IN(1x1x1 conv (2C -> C)(concat(A_k^m, enc_k))): a modality's view of one encoder stage."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv1x1(2 * channels, channels)
        self.norm = instance_norm(channels)

    def forward(self, transformer_feature: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(torch.cat([transformer_feature, fused], dim=1)))


class ReconstructionDecoder(nn.Module):
    """Texture teacher for one modality: reconstructs that modality's input, (B, 1, D, H, W) + its Gram."""

    def __init__(self, cfg: VeloxSegConfig):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(cfg.channels(k)) for k in range(cfg.stages))
        self.body = DecoderBody(cfg)
        self.head = ShuffleHead(cfg.channels(0), 1, cfg.patch_size)

    def forward(self, transformer: Sequence[torch.Tensor], fused: Sequence[torch.Tensor]):
        skips = [adapter(a, e) for adapter, a, e in zip(self.adapters, transformer, fused)]
        ups = self.body(skips)
        return self.head(ups[0]), gram_matrix(ups[0])
