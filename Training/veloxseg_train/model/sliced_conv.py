"""3-D convolutions computed as 2-D convolutions over depth slices: same result, much faster on CPU.

A stride-1, 'same'-padded Conv3d equals, for every output slice z, the sum over kernel depth i of 2-D
convolutions of input slice z + i - pad. PyTorch's CPU backend has no fast kernel for *grouped* 3-D
convolutions (it falls back to a slow im2col path, forward and backward), and ONNX Runtime's 3-D im2col
is generic and slow, whereas both run 2-D convolutions on optimised paths. The weights stay those of the
Conv3d, so checkpoints and parameter names are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def depth_sliced_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv3d weight (out, in/groups, k, k, k) -> the 2-D weight (groups * k * out/groups, in/groups, k, k) that
    yields every kernel depth's partial output, output channels ordered (group, kernel depth, channel) so
    that groups stay contiguous."""
    out_channels, in_per_group, k = weight.shape[:3]
    per_group = out_channels // groups
    weight_2d = weight.reshape(groups, per_group, in_per_group, k, k, k).permute(0, 3, 1, 2, 4, 5)
    return weight_2d.reshape(groups * k * per_group, in_per_group, k, k)


def depth_sliced_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        groups: int) -> torch.Tensor:
    """Conv3d(x, weight, bias, stride 1, padding k//2, groups) for a cubic odd kernel; (B, C, D, H, W) in/out."""
    out_channels, k = weight.shape[0], weight.shape[2]
    pad = k // 2
    b, c, d, h, w = x.shape
    per_group = out_channels // groups
    weight_2d = depth_sliced_weight(weight, groups)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, pad, pad))  # zero depth slices keep every shifted view below in range
    slices = x.reshape(b, c, d + 2 * pad, h * w).transpose(1, 2).reshape(b * (d + 2 * pad), c, h, w)
    y = F.conv2d(slices, weight_2d, padding=pad, groups=groups)
    y = y.reshape(b, d + 2 * pad, groups, k, per_group, h * w)
    out = y[:, 0:d, :, 0]
    for i in range(1, k):  # output slice z takes kernel depth i from padded input slice z + i
        out = out + y[:, i:i + d, :, i]
    out = out.reshape(b, d, out_channels, h * w).transpose(1, 2).reshape(b, out_channels, d, h, w)
    return out if bias is None else out + bias.view(1, -1, 1, 1, 1)
