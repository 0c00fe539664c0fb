"""Export-time rewrites: the same functions as the training modules, in forms ONNX Runtime runs faster.

ONNX Runtime's CPU Conv lowers a 3-D convolution to a generic N-d im2col, which is slow for the 5x5x5
grouped convolutions of the JLC blocks. A stride-1 3-D convolution equals a sum over kernel depth of
2-D convolutions of neighbouring depth slices; ORT runs 2-D convolutions on its optimised path, so the
exported graph uses that form. Results agree to float32 rounding; training keeps plain Conv3d.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import DownConv
from .jlc import GroupConvBranch


class DepthSlicedConv3d(nn.Module):
    """A stride-1, 'same'-padded (grouped) Conv3d computed as 2-D convolutions over depth slices."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        out_channels, in_per_group, kd, kh, kw = conv.weight.shape
        if conv.stride != (1, 1, 1) or conv.padding != (kd // 2, kh // 2, kw // 2) or kd % 2 == 0:
            raise ValueError("only stride-1, odd-kernel, same-padded convolutions can be rewritten")
        self.groups, self.depth_kernel, self.out_channels = conv.groups, kd, out_channels
        self.padding = (kh // 2, kw // 2)
        per_group = out_channels // conv.groups
        # 2-D weight with output channels ordered (group, kernel depth, channel): groups stay contiguous
        weight = conv.weight.detach().reshape(conv.groups, per_group, in_per_group, kd, kh, kw)
        weight = weight.permute(0, 3, 1, 2, 4, 5).reshape(conv.groups * kd * per_group, in_per_group, kh, kw)
        self.register_buffer("weight", weight.contiguous())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(out_channels)
        self.register_buffer("bias", bias.reshape(1, out_channels, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        k, pad = self.depth_kernel, self.depth_kernel // 2
        x = F.pad(x, (0, 0, 0, 0, pad, pad))  # zero depth slices, so every shifted view below is in range
        slices = x.reshape(b, c, d + 2 * pad, h * w).transpose(1, 2).reshape(b * (d + 2 * pad), c, h, w)
        y = F.conv2d(slices, self.weight, padding=self.padding, groups=self.groups)
        y = y.reshape(b, d + 2 * pad, self.groups, k, self.out_channels // self.groups, h * w)
        out = y[:, 0:d, :, 0]
        for i in range(1, k):  # output slice z gathers kernel depth i from input slice z + i - pad
            out = out + y[:, i:i + d, :, i]
        out = out.reshape(b, d, self.out_channels, h * w).transpose(1, 2)
        return out.reshape(b, self.out_channels, d, h, w) + self.bias


class StridedDepthSlicedConv3d(nn.Module):
    """A strided Conv3d (e.g. the 7x7x7 stride-4 stem) as one strided 2-D convolution per kernel depth.

    Each kernel depth i reads only the input slices i, i + s, i + 2s, ... so nothing is computed twice.
    """

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if conv.groups != 1 or len(set(conv.stride)) != 1:
            raise ValueError("only ungrouped convolutions with one stride on all axes can be rewritten")
        self.stride = conv.stride[0]
        self.depth_padding = conv.padding[0]
        self.padding = conv.padding[1:]
        # (kernel depth, out, in, kh, kw): one 2-D kernel per depth tap
        self.register_buffer("weight", conv.weight.detach().permute(2, 0, 1, 3, 4).contiguous())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.reshape(1, -1, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        k, s, pad = self.weight.shape[0], self.stride, self.depth_padding
        out_depth = (d + 2 * pad - k) // s + 1
        x = F.pad(x, (0, 0, 0, 0, pad, pad + s))  # the extra s slices keep the last strided slice in range
        slices = x.reshape(b, c, -1, h * w).transpose(1, 2)  # (B, D', C, H*W)
        out = None
        for i in range(k):
            taps = slices[:, i:i + s * out_depth:s].reshape(b * out_depth, c, h, w)
            y = F.conv2d(taps, self.weight[i], stride=s, padding=self.padding)
            out = y if out is None else out + y
        channels, out_h, out_w = out.shape[1:]
        out = out.reshape(b, out_depth, channels, out_h * out_w).transpose(1, 2)
        return out.reshape(b, channels, out_depth, out_h, out_w) + self.bias


def rewrite_for_export(model: nn.Module, min_kernel: int = 5) -> nn.Module:
    """A copy of `model` whose slow-in-ORT convolutions are depth-sliced: the JLC branches with kernel
    >= min_kernel and the strided stem of the conv encoder."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, GroupConvBranch) and module.conv.kernel_size[0] >= min_kernel:
            module.conv = DepthSlicedConv3d(module.conv)
        elif isinstance(module, DownConv) and module.conv.kernel_size[0] >= min_kernel:
            module.conv = StridedDepthSlicedConv3d(module.conv)
    return model
