"""The transformer branch at export: channels-last, one (B, D, H, W, C) tensor per modality.

Training runs this branch channels-first. ONNX Runtime runs that form slowly: a channel LayerNorm
becomes nine elementwise passes over the volume, and a 1x1x1 conv multiplies a small weight by a large
activation that it packs afresh on every call. Channels-last, the same function runs on faster kernels:
- each channel norm is one LayerNormalization over the last axis; its affine is folded into the linear
  map that follows it (every norm in this branch feeds one);
- each 1x1x1 conv is one Gemm on the (voxels, channels) matrix, bias included (a per-modality bias
  added to a stacked (B, M, N, C) tensor instead runs as a slow short-span broadcast);
- a window pair gathers Q, K and V in one projection, one max pool and one window partition per
  modality, and window partitions move whole channel vectors rather than single values;
- the attention scale is folded into the Q weights, the relative-position bias is a constant.
Results agree with the training modules to float32 rounding (export verifies it).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import Fusion, TransformerEncoder, run_stages
from .export_shapes import static_sizes
from .layers import ChannelLayerNorm, instance_norm
from .patch_embed import PatchMerging
from .pwa import PWABlock
from .windows import window_partition, window_reverse

ATTENTION_CHUNK_SCORES = 2**18  # scores (1 MB of float32) per attention chunk: about what stays in L2
NARROW_GEMM_COLUMNS = 8  # MLAS GEMMs with fewer output columns than this are slow: compute them transposed


def conv_matrix(conv: nn.Conv3d, norm: Optional[ChannelLayerNorm] = None) -> tuple:
    """A 1x1x1 conv as (weight (C_out, C_in), bias (C_out)); with `norm`, the norm's affine folded in:
    W (g * x + b) + c = (W g) x + (W b + c)."""
    weight = conv.weight.detach()[:, :, 0, 0, 0].double()
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if norm is not None:
        bias = bias + weight @ norm.bias.detach().double()
        weight = weight * norm.weight.detach().double()
    return weight, bias


def folded_linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    """An nn.Linear holding (weight (C_out, C_in), bias (C_out) or None), stored in float32."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.requires_grad_(False)


def apply_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The linear map on the last axis of x (B, ..., C_in), as one Gemm over a 2-D (voxels, C_in) view."""
    *sizes, channels = static_sizes(x)
    return linear(x.reshape(-1, channels)).reshape(-1, *sizes, linear.out_features)


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise the last axis without affine (the affine is folded into the next linear map)."""
    return F.layer_norm(x, (int(x.shape[-1]),), eps=eps)


def max_pool_channels_last(x: torch.Tensor, window: Sequence[int], channels: int) -> torch.Tensor:
    """Max pool by `window` (stride = window): (N, D, H, W * e) -> (N, D/sd, H/sh, W/sw * e), e = channels,
    as three maxima over a reshaped axis each (no layout change)."""
    d, h, we = static_sizes(x)
    sd, sh, sw = window
    x = x.reshape(-1, sd, h * we).amax(1)  # (N * D/sd, H * W * e)
    x = x.reshape(-1, sh, we).amax(1)  # (N * D/sd * H/sh, W * e)
    x = x.reshape(-1, sw, channels).amax(1)  # (N * D/sd * H/sh * W/sw, e)
    return x.reshape(-1, d // sd, h // sh, we // sw)


class JointPatchEmbed(nn.Module):
    """All modalities' patch embeddings (Conv3d, kernel = stride = p, one input channel each) as one 2-D
    convolution: (B, M, D, H, W) -> M tensors (B, D/p, H/p, W/p, C), channels-last. Each block of p depth
    slices of one modality is an image whose p channels are the slices, so the input becomes
    (B*M*D/p, p, H, W) by a reshape alone, with no copy; the conv applies every modality's kernel (M x C
    outputs) and each modality keeps its own C."""

    def __init__(self, embeds: nn.ModuleList):
        super().__init__()
        convs = [embed.proj for embed in embeds]
        if any(c.in_channels != 1 or c.kernel_size != c.stride or len(set(c.stride)) != 1 for c in convs):
            raise ValueError("only one-channel, non-overlapping cubic patch embeddings can be joined")
        self.patch = convs[0].stride[0]
        self.channels = convs[0].out_channels
        # (M*C, 1, p, p, p) -> (M*C, p, p, p): the kernel's depth axis becomes the 2-D input channels
        self.register_buffer("weight", torch.cat([c.weight.detach() for c in convs])[:, 0].clone())
        self.register_buffer("bias", torch.cat([c.bias.detach() for c in convs]).clone())

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        modalities, d, h, w = static_sizes(x)
        p, c = self.patch, self.channels
        blocks, out_h, out_w = d // p, h // p, w // p
        y = F.conv2d(x.reshape(-1, p, h, w), self.weight, self.bias, stride=p)  # (B*M*D/p, M*C, H/p, W/p)
        y = y.reshape(-1, modalities, blocks, modalities * c, out_h * out_w)
        return [y[:, m, :, m * c:(m + 1) * c].transpose(-1, -2).reshape(-1, blocks, out_h, out_w, c)
                for m in range(modalities)]


class ChannelsLastPWABlock(nn.Module):
    """PWABlock (attention + FFN, both modalities) on M channels-last tensors (B, D, H, W, C); same function."""

    def __init__(self, block: PWABlock):
        super().__init__()
        attn = block.attn
        self.modalities, self.heads, self.pairs = attn.modalities, attn.heads, attn.pairs
        self.qk_dim = attn.qk_per_pair // attn.heads  # d
        self.v_dim = attn.v_per_pair // attn.heads  # dv
        self.eps = attn.norms[0].eps
        d, dv = self.qk_dim, self.v_dim

        self.projections = nn.ModuleList()  # [pair][modality]: normed C -> (head, [q d | k d | v dv])
        self.mixers = nn.ModuleList()  # [pair][modality]: the mixer's columns of that pair, (head, dv)
        for i in range(len(self.pairs)):
            projections, mixers = nn.ModuleList(), nn.ModuleList()
            for m in range(self.modalities):
                (q_w, q_b), (k_w, k_b), (v_w, v_b) = (conv_matrix(conv, attn.norms[m]) for conv in
                                                      (attn.qkv[m].q, attn.qkv[m].k, attn.qkv[m].v))
                rows_w, rows_b = [], []
                for h in range(self.heads):
                    qk = slice(i * attn.qk_per_pair + h * d, i * attn.qk_per_pair + (h + 1) * d)
                    v = slice(i * attn.v_per_pair + h * dv, i * attn.v_per_pair + (h + 1) * dv)
                    rows_w += [q_w[qk] * attn.scale, k_w[qk], v_w[v]]
                    rows_b += [q_b[qk] * attn.scale, k_b[qk], v_b[v]]
                projections.append(folded_linear(torch.cat(rows_w), torch.cat(rows_b)))
                mix_w, mix_b = conv_matrix(attn.mixers[m])
                columns = slice(i * attn.v_per_pair, (i + 1) * attn.v_per_pair)
                mixers.append(folded_linear(mix_w[:, columns], mix_b if i == 0 else None))  # bias added once
            self.projections.append(projections)
            self.mixers.append(mixers)

        with torch.no_grad():  # the same (H, T, T) bias for every modality block: a tiled constant
            bias = attn.rel_pos().detach().repeat(1, self.modalities, self.modalities)  # (H, M*T, M*T)
        self.register_buffer("bias", bias.clone())
        for i, pair in enumerate(self.pairs):
            if pair.small != (1, 1, 1):
                self.register_buffer(f"upsample_{i}", getattr(attn, f"upsample_{i}").clone())

        self.ffn_in = nn.ModuleList(folded_linear(*conv_matrix(ffn.fc1, norm))
                                    for ffn, norm in zip(block.ffns, block.ffn_norms))
        self.ffn_out = nn.ModuleList(folded_linear(*conv_matrix(ffn.fc2)) for ffn in block.ffns)

    def _attention(self, t: torch.Tensor) -> torch.Tensor:
        """t (B, W, H, M*T, 2d + dv) -> (B, W, H, M*T, dv): softmax(q k^T + bias) v, q already scaled."""
        q, k, v = torch.split(t, [self.qk_dim, self.qk_dim, self.v_dim], dim=-1)
        scores = torch.matmul(q, k.transpose(-1, -2)) + self.bias  # (B, W, H, M*T, M*T)
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    @staticmethod
    def _upsample(part: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """(B, W, T, c) -> (B, W, prod(big), c) with the (prod(big), T) in-window upsampling matrix. With few
        channels the product is computed transposed: a GEMM with under 8 output columns runs ~2.5x slower
        in ONNX Runtime than the transposed one plus the transposes."""
        if int(part.shape[-1]) >= NARROW_GEMM_COLUMNS:
            return torch.matmul(matrix, part)
        return torch.matmul(part.transpose(-1, -2), matrix.t()).transpose(-1, -2)

    def _pair(self, normed: List[torch.Tensor], i: int) -> List[torch.Tensor]:
        """Pair i's attention output mixed back to C channels, per modality: (B, D, H, W, C) each."""
        pair, heads = self.pairs[i], self.heads
        grid = static_sizes(normed[0])[:3]
        e = 2 * self.qk_dim + self.v_dim
        tokens = math.prod(pair.tokens)
        count = math.prod(g // b for g, b in zip(grid, pair.big))  # windows
        td, th, tw = pair.tokens
        gathered = []
        for projection, x in zip(self.projections[i], normed):
            t = apply_linear(projection, x)  # (B, D, H, W, heads * e)
            t = t.reshape(-1, grid[0], grid[1], grid[2] * heads * e)
            if pair.small != (1, 1, 1):
                t = max_pool_channels_last(t, pair.small, heads * e)
            gathered.append(window_partition(t, (td, th, tw * heads * e)))  # (B, windows, T * heads * e)
        # [CT tokens ; PET tokens] per window and head, as in PairedWindowAttention: (B, windows, heads, M*T, e)
        m = self.modalities
        t = torch.stack(gathered, dim=2).reshape(-1, count, m * tokens, heads, e)
        t = t.transpose(2, 3) if heads > 1 else t.reshape(-1, count, 1, m * tokens, e)
        chunk = max(1, ATTENTION_CHUNK_SCORES // (heads * (m * tokens) ** 2))
        parts = [self._attention(t[:, s:s + chunk]) for s in range(0, count, chunk)]
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, W, H, M*T, dv)

        hdv = heads * self.v_dim
        if heads > 1:
            out = out.transpose(2, 3)  # (B, W, M*T, H, dv)
        out = out.reshape(-1, count, m, tokens, hdv)
        bd, bh, bw = pair.big
        mixed = []
        for index, mixer in enumerate(self.mixers[i]):
            part = out[:, :, index]  # (B, W, T, H dv)
            if pair.small != (1, 1, 1):
                part = self._upsample(part, getattr(self, f"upsample_{i}"))  # (B, W, prod(big), H dv)
            volume = window_reverse(part.reshape(-1, count, bd * bh * bw * hdv), (bd, bh, bw * hdv),
                                    (grid[0], grid[1], grid[2] * hdv))  # (B, D, H, W * H dv)
            mixed.append(apply_linear(mixer, volume.reshape(-1, *grid, hdv)))
        return mixed

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        normed = [layer_norm(x, self.eps) for x in features]
        mixes = [self._pair(normed, i) for i in range(len(self.pairs))]
        outputs = []
        for m, x in enumerate(features):
            mix = mixes[0][m]
            for pair_mixes in mixes[1:]:
                mix = mix + pair_mixes[m]
            y = x + (x + mix)  # PWA returns E + mix, the block adds E again (the authors' double residual)
            hidden = F.gelu(apply_linear(self.ffn_in[m], layer_norm(y, self.eps)))
            outputs.append(y + apply_linear(self.ffn_out[m], hidden))
        return outputs


class ChannelsLastMerging(nn.Module):
    """A modality's PatchMerging: (B, D, H, W, C) -> (B, D/2, H/2, W/2, 2C)."""

    def __init__(self, merge: PatchMerging):
        super().__init__()
        self.eps = merge.norm.eps
        self.reduction = folded_linear(*conv_matrix(merge.reduction, merge.norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w, c = static_sizes(x)
        # space to depth: [D/2 2 H/2 2 W/2 2 C] -> [D/2 H/2 W/2 (2 2 2 C)], offsets in PatchMerging's order
        x = x.reshape(-1, 2, h // 2, 2 * w * c).transpose(1, 2)  # [D/2 H/2 2d (2h W/2 2w C)]
        x = x.reshape(-1, 4, w // 2, 2 * c).transpose(1, 2)  # [D/2 H/2 W/2 (2d 2h) (2w C)]
        x = layer_norm(x.reshape(-1, d // 2, h // 2, w // 2, 8 * c), self.eps)
        return apply_linear(self.reduction, x)


class ChannelsLastTransformer(nn.Module):
    """TransformerEncoder on channels-last tensors; per stage, M tensors (B, S_k^3, C_k) before merging."""

    def __init__(self, encoder: TransformerEncoder):
        super().__init__()
        self.embed = JointPatchEmbed(encoder.patch_embeds)
        self.stages = nn.ModuleList(ChannelsLastPWABlock(block) for block in encoder.stages)
        self.merges = nn.ModuleList(nn.ModuleList(ChannelsLastMerging(merge) for merge in merges)
                                    for merges in encoder.merges)

    def forward(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        return run_stages(self.embed(x), self.stages, self.merges)


class ChannelsLastFusion(nn.Module):
    """Fusion (1x1x1 conv over the concatenated modalities, then IN) from M channels-last tensors
    (B, D, H, W, C) to the conv branch's (B, C_out, D, H, W)."""

    def __init__(self, fusion: Fusion):
        super().__init__()
        weight, bias = conv_matrix(fusion.conv)  # (C_out, M * C): input channels ordered (modality, C)
        parts = weight.split(weight.shape[0], dim=1)  # Fusion's conv is M*C -> C: C input channels per modality
        self.linears = nn.ModuleList(folded_linear(part, bias if m == 0 else None) for m, part in enumerate(parts))
        self.norm = instance_norm(fusion.conv.out_channels)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        d, h, w, _ = static_sizes(features[0])
        y = None
        for linear, x in zip(self.linears, features):
            term = apply_linear(linear, x)
            y = term if y is None else y + term
        channels = self.norm.num_features  # (B, D, H, W, C_out) -> (B, C_out, D, H, W)
        y = y.reshape(-1, d * h * w, channels).transpose(1, 2)
        return self.norm(y.reshape(features[0].shape[0], channels, d, h, w))
