"""Paired Window Attention (PWA, spec §2.2): one joint CT+PET attention per head and window.

Each window pair (big B_i, small s_i) max-pools every B_i-cube by s_i to the same n^3 "salient" token
grid, so all pairs share one sequence length and are attended to in one batched matmul. The result is
upsampled back inside each big window (trilinear, align_corners=True) and mixed by a 1x1x1 conv.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import WindowPair
from .layers import ChannelLayerNorm, PointwiseMLP, conv1x1
from .windows import relative_position_index, upsample_matrix, window_partition, window_reverse


class RelativePositionBias(nn.Module):
    """Swin-style learned bias over (query - key) offsets on the n-grid, one table column per head."""

    def __init__(self, tokens: Sequence[int], heads: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(math.prod(2 * t - 1 for t in tokens), heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        # derived from `tokens`, so not saved: loading checks the authors' copy against it instead
        self.register_buffer("index", relative_position_index(tokens), persistent=False)

    def forward(self) -> torch.Tensor:
        tokens = self.index.shape[0]
        return self.table[self.index.reshape(-1)].reshape(tokens, tokens, -1).permute(2, 0, 1)  # (H, T, T)


class QKVProjection(nn.Module):
    """Three 1x1x1 convs of the normed features: Q, K of width C_qk and V of width C_v."""

    def __init__(self, channels: int, qk_channels: int, v_channels: int, bias: bool):
        super().__init__()
        self.q = conv1x1(channels, qk_channels, bias)
        self.k = conv1x1(channels, qk_channels, bias)
        self.v = conv1x1(channels, v_channels, bias)

    def forward(self, x: torch.Tensor):
        return self.q(x), self.k(x), self.v(x)


class PairedWindowAttention(nn.Module):
    """Joint attention over M modalities' salient tokens; returns E_m + Dropout(Mix_m(A_m)) per modality."""

    def __init__(self, channels: int, qk_channels: int, v_channels: int, heads: int,
                 pairs: List[WindowPair], modalities: int, attn_drop: float, proj_drop: float,
                 qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.pairs = pairs
        self.modalities = modalities
        self.qk_per_pair = qk_channels // len(pairs)  # heads x d
        self.v_per_pair = v_channels // len(pairs)  # heads x dv
        self.scale = (self.qk_per_pair // heads) ** -0.5
        tokens = pairs[0].tokens
        if any(p.tokens != tokens for p in pairs):
            raise ValueError("all window pairs of a stage must pool to the same token grid")

        self.norms = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(modalities))
        self.qkv = nn.ModuleList(QKVProjection(channels, qk_channels, v_channels, qkv_bias)
                                 for _ in range(modalities))
        self.rel_pos = RelativePositionBias(tokens, heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.mixers = nn.ModuleList(conv1x1(v_channels, channels) for _ in range(modalities))
        self.proj_drop = nn.Dropout(proj_drop)
        for i, pair in enumerate(pairs):  # constant in-window upsampling operators, (prod(big), T)
            if pair.small != (1, 1, 1):
                self.register_buffer(f"upsample_{i}", upsample_matrix(tokens, pair.big), persistent=False)

    def _gather(self, x: torch.Tensor, per_pair: int) -> torch.Tensor:
        """(B, P*H*c, S^3) -> (B, H, c, W_total, T): salient tokens of every window of every pair."""
        batch = x.shape[0]
        windows = []
        for i, pair in enumerate(self.pairs):
            part = x[:, i * per_pair:(i + 1) * per_pair]  # channel order is (pair, head, c)
            if pair.small != (1, 1, 1):
                part = F.max_pool3d(part, kernel_size=pair.small, stride=pair.small)
            tokens = window_partition(part.flatten(0, 1), pair.tokens)  # (B*H*c, W_i, T)
            windows.append(tokens.reshape(batch, self.heads, per_pair // self.heads, *tokens.shape[1:]))
        return torch.cat(windows, dim=3)

    def _scatter(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, H, dv, W_total, T) -> (B, P*H*dv, S^3): upsample each window's tokens back in place."""
        batch = x.shape[0]
        outputs, start = [], 0
        for i, pair in enumerate(self.pairs):
            count = math.prod(g // b for g, b in zip(grid, pair.big))
            part = x[:, :, :, start:start + count].flatten(0, 2)  # (B*H*dv, W_i, T)
            start += count
            if pair.small != (1, 1, 1):
                part = torch.matmul(part, getattr(self, f"upsample_{i}").t())  # (B*H*dv, W_i, prod(big))
            volume = window_reverse(part, pair.big, grid)  # (B*H*dv, S, S, S)
            outputs.append(volume.reshape(batch, self.v_per_pair, *grid))
        return torch.cat(outputs, dim=1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention for every window and head at once, channels-first: q, k (B, W, H, d, M*T), v
        (B, W, H, dv, M*T) -> (B, W, H, dv, M*T), i.e. (softmax(q^T k * scale + bias) v^T)^T."""
        scores = torch.matmul((q * self.scale).transpose(-1, -2), k)  # (B, W, H, M*T, M*T)
        attn = self.attn_drop(torch.softmax(scores + bias, dim=-1))
        return torch.matmul(v, attn.transpose(-1, -2))

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        grid = tuple(features[0].shape[2:])
        queries, keys, values = [], [], []
        for m, x in enumerate(features):
            q, k, v = self.qkv[m](self.norms[m](x))
            queries.append(self._gather(q, self.qk_per_pair))
            keys.append(self._gather(k, self.qk_per_pair))
            values.append(self._gather(v, self.v_per_pair))
        # modalities side by side on the token axis: [CT tokens ; PET tokens]. Windows before heads, so the
        # per-head bias below broadcasts over the leading axes only (a fast, cache-friendly add in ORT).
        # Tokens stay the last axis: these permutes move whole token rows, and the matmuls read the
        # transposed operands in place (ORT fuses the transposes into the GEMM).
        q = torch.cat(queries, dim=4).permute(0, 3, 1, 2, 4)  # (B, W, H, d, M*T)
        k = torch.cat(keys, dim=4).permute(0, 3, 1, 2, 4)  # (B, W, H, d, M*T)
        v = torch.cat(values, dim=4).permute(0, 3, 1, 2, 4)  # (B, W, H, dv, M*T)

        # the same bias for all M x M modality blocks: broadcast a pre-tiled copy (no slice writes)
        bias = self.rel_pos().repeat(1, self.modalities, self.modalities)  # (H, M*T, M*T)
        out = self._attend(q, k, v, bias).permute(0, 2, 3, 1, 4)  # (B, H, dv, W, M*T)

        tokens = out.shape[-1] // self.modalities
        results = []
        for m, x in enumerate(features):
            scattered = self._scatter(out[..., m * tokens:(m + 1) * tokens], grid)  # (B, C_v, S^3)
            results.append(x + self.proj_drop(self.mixers[m](scattered)))
        return results


class PWABlock(nn.Module):
    """PWA + per-modality FFN. Out_m = Y_m + FFN_m(cLN_m(Y_m)) with Y_m = E_m + PWA(E)_m.

    PWA already returns E_m + mix, so Y_m = 2 E_m + mix: the authors' double residual (spec §8.4),
    kept so that their checkpoints load and behave the same.
    """

    def __init__(self, channels: int, qk_channels: int, v_channels: int, heads: int,
                 pairs: List[WindowPair], modalities: int, ffn_ratio: int, attn_drop: float,
                 proj_drop: float, qkv_bias: bool):
        super().__init__()
        self.attn = PairedWindowAttention(channels, qk_channels, v_channels, heads, pairs, modalities,
                                          attn_drop, proj_drop, qkv_bias)
        self.ffn_norms = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(modalities))
        self.ffns = nn.ModuleList(PointwiseMLP(channels, ffn_ratio, proj_drop) for _ in range(modalities))

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        mixed = self.attn(features)
        outputs = []
        for m, (x, z) in enumerate(zip(features, mixed)):
            y = x + z
            outputs.append(y + self.ffns[m](self.ffn_norms[m](y)))
        return outputs
