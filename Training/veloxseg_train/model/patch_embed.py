"""Patch embedding (one per modality) and patch merging of the transformer branch (spec §2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import ChannelLayerNorm, conv1x1


class _PatchConv(torch.autograd.Function):
    """Conv3d with kernel = stride p (non-overlapping patches) whose backward is one matmul over the patches.

    The forward is the backend's convolution (fast); on CPU, PyTorch's Conv3d backward for this layer
    (1 -> C channels on a 96^3 input) is about 20x slower than the matmul and took ~10 % of a training
    step. The gradients are the same up to float rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, patch):
        ctx.save_for_backward(x, weight)
        ctx.patch = patch
        return F.conv3d(x, weight, bias, stride=patch)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        p = ctx.patch
        # Under autocast the forward ran in bf16/fp16 and grad_out comes in that type while x and the weight
        # are float32: compute the (small) gradients in float32, each returned in its input's own type.
        grad_out = grad_out.to(torch.promote_types(x.dtype, weight.dtype))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv3d_input(x.shape, weight.to(grad_out.dtype), grad_out, stride=p).to(x.dtype)
        if ctx.needs_input_grad[1]:
            patches = rearrange(x, "b c (d p1) (h p2) (w p3) -> b (d h w) (c p1 p2 p3)", p1=p, p2=p, p3=p)
            grad = rearrange(grad_out, "b o d h w -> b o (d h w)")
            grad_w = torch.einsum("bon,bnk->ok", grad, patches.to(grad.dtype)).reshape(weight.shape).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3, 4)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


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
        if x.device.type == "cpu" and torch.is_grad_enabled() and self.proj.weight.requires_grad:
            return self.drop(_PatchConv.apply(x, self.proj.weight, self.proj.bias, self.patch_size))
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
