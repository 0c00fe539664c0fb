"""Export-time rewrites: the same functions as the training modules, in forms ONNX Runtime runs faster.

ONNX Runtime's CPU Conv lowers a 3-D convolution to a generic N-d im2col, which is slow for the 7x7x7
stride-4 stem of the conv encoder; as one strided 2-D convolution per kernel depth it runs on ORT's
optimised 2-D path. (The JLC blocks already use depth-sliced convolutions in the model itself.) Results
agree to float32 rounding; training keeps the plain Conv3d stem, for which PyTorch has a fast kernel.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import DownConv
from .jlc import GroupConvBranch


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


class PlainConvBranch(nn.Module):
    """A JLC branch evaluated with its grouped Conv3d directly (no depth slicing)."""

    def __init__(self, branch: GroupConvBranch):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch.act(self.branch.norm(self.branch.conv(x)))


def with_plain_branches(model: nn.Module, max_kernel: int) -> nn.Module:
    """`model` (in place) with the JLC branches of kernel <= max_kernel as plain grouped Conv3d."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, GroupConvBranch) and child.conv.kernel_size[0] <= max_kernel]
    for parent, name, child in targets:  # replaced after the walk: the wrappers contain the branches
        setattr(parent, name, PlainConvBranch(child))
    return model


def rewrite_for_export(model: nn.Module, min_kernel: int = 5) -> nn.Module:
    """A copy of `model` for ONNX Runtime: strided convolutions with kernel >= min_kernel (the stem)
    depth-sliced, JLC branches with smaller kernels as plain grouped Conv3d (ORT needs no im2col for
    1x1x1 and runs 3x3x3 as fast either way, so slicing would only add transposes)."""
    model = with_plain_branches(copy.deepcopy(model), max_kernel=min_kernel - 1)
    for module in model.modules():
        if isinstance(module, DownConv) and module.conv.kernel_size[0] >= min_kernel:
            module.conv = StridedDepthSlicedConv3d(module.conv)
    return model
