"""The two 4-stage encoders and their one-way transformer -> conv fusion (spec §2.1, §2.3).

- Transformer ("modal-cooperative") branch: per-modality patch embedding, a PWA block per stage that
  attends across CT and PET jointly, per-modality patch merging.
- Conv ("modal-fusion") branch: CT and PET concatenated, strided conv + IN per stage, one JLC block.
- At every stage the per-modality transformer features are concatenated, 1x1x1-convolved, instance
  normalised and added to the conv branch's downsampled tensor before that stage's JLC block.
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple

import torch
from torch import nn

from .config import VeloxSegConfig
from .jlc import JLCBlock
from .layers import conv1x1, instance_norm
from .patch_embed import PatchEmbed, PatchMerging
from .pwa import PWABlock


class TransformerEncoder(nn.Module):
    """x (B, M, D, H, W) -> per stage k a list of M tensors (B, C_k, S_k^3), taken before merging."""

    def __init__(self, cfg: VeloxSegConfig):
        super().__init__()
        m = cfg.modalities
        self.patch_embeds = nn.ModuleList(
            PatchEmbed(1, cfg.channels(0), cfg.patch_size, cfg.proj_drop) for _ in range(m))
        self.stages = nn.ModuleList(
            PWABlock(cfg.channels(k), cfg.qk_channels(k), cfg.v_channels(k), cfg.num_heads[k],
                     cfg.window_pairs(k), m, cfg.expansion[k], cfg.attn_drop, cfg.proj_drop, cfg.qkv_bias)
            for k in range(cfg.stages))
        self.merges = nn.ModuleList(
            nn.ModuleList(PatchMerging(cfg.channels(k)) for _ in range(m)) for k in range(cfg.stages - 1))

    def embed(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, M, D, H, W) -> M patch embeddings (B, C_1, S_1^3), one per modality."""
        return [embed(x[:, i:i + 1]) for i, embed in enumerate(self.patch_embeds)]

    def forward(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        return run_stages(self.embed(x), self.stages, self.merges)


def run_stages(features: List[torch.Tensor], stages: nn.ModuleList, merges: nn.ModuleList) -> List[List[torch.Tensor]]:
    """The transformer branch's stage loop over per-modality features: every stage's output is kept (taken
    before merging), and each modality is merged by its own module of merges[k]."""
    outputs = []
    for k, block in enumerate(stages):
        features = block(features)
        outputs.append(features)
        if k < len(merges):
            features = [merge(f) for merge, f in zip(merges[k], features)]
    return outputs


class DownConv(nn.Module):
    """Strided conv (kernel 2p-1, stride p, padding p-1) + IN: (B, C_in, S) -> (B, C_out, S/p)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2 * factor - 1, stride=factor, padding=factor - 1)
        self.norm = instance_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ConvEncoder(nn.Module):
    """Modules of the conv branch; the stage loop lives in DualStreamEncoder because it needs the fusion."""

    def __init__(self, cfg: VeloxSegConfig):
        super().__init__()
        in_channels = [cfg.modalities] + [cfg.channels(k) for k in range(cfg.stages - 1)]
        factors = [cfg.patch_size] + [2] * (cfg.stages - 1)
        self.downs = nn.ModuleList(
            DownConv(c_in, cfg.channels(k), f) for k, (c_in, f) in enumerate(zip(in_channels, factors)))
        self.blocks = nn.ModuleList(
            JLCBlock(cfg.channels(k), cfg.min_dim_group[k], cfg.expansion[k], cfg.kernel_sizes, cfg.conv_drop)
            for k in range(cfg.stages))


class Fusion(nn.Module):
    """IN(1x1x1 conv (M*C -> C)(concat of the modalities' transformer features))."""

    def __init__(self, channels: int, modalities: int):
        super().__init__()
        self.conv = conv1x1(modalities * channels, channels)
        self.norm = instance_norm(channels)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.norm(self.conv(torch.cat(features, dim=1)))


class EncoderOutput(NamedTuple):
    fused: Tuple[torch.Tensor, ...]  # enc_1..enc_4: (B, C_k, S_k^3), the conv branch after fusion + JLC
    transformer: Tuple[List[torch.Tensor], ...]  # A_1..A_4: per-modality transformer features


class DualStreamEncoder(nn.Module):
    def __init__(self, cfg: VeloxSegConfig):
        super().__init__()
        self.transformer = TransformerEncoder(cfg)
        self.conv = ConvEncoder(cfg)
        self.fusions = nn.ModuleList(Fusion(cfg.channels(k), cfg.modalities) for k in range(cfg.stages))

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        transformer = self.transformer(x)
        fused, previous = [], x
        for down, fusion, block, attn in zip(self.conv.downs, self.fusions, self.conv.blocks, transformer):
            previous = block(down(previous) + fusion(attn))
            fused.append(previous)
        return EncoderOutput(tuple(fused), tuple(transformer))
