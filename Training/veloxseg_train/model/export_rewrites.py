"""Export-time rewrites: the same functions as the training modules, in forms ONNX Runtime runs faster.

ONNX Runtime's CPU Conv lowers a 3-D convolution to a generic N-d im2col, which is slow, while 2-D
convolutions whose channel counts are multiples of 8 run on its blocked ("NCHWc") kernels. So, at export:
- the 7x7x7 stride-4 stem becomes one strided 2-D convolution per kernel depth;
- the 3x3x3 head and the 3x3x3 JLC branches become one 2-D convolution per kernel depth over shifted
  views of the depth slices (groups of 4 channels are merged into groups of 8 with zero weights);
- the 5x5x5 JLC branches keep the model's depth slicing (one 2-D conv for all kernel depths, measured
  faster in ORT than one per kernel depth), with cheaper slicing of the shifted partial outputs;
- the transformer branch and its fusions run channels-last, one tensor per modality
  (export_transformer.py).
Results agree to float32 rounding (export verifies it); training keeps the plain modules.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .decoders import ShuffleHead
from .encoders import DownConv, DualStreamEncoder
from .export_shapes import static_sizes
from .export_transformer import ChannelsLastFusion, ChannelsLastTransformer
from .jlc import GroupConvBranch
from .sliced_conv import depth_sliced_weight

NCHWC_BLOCK = 8  # channel block of ONNX Runtime's AVX2 NCHWc kernels; groups narrower than this are merged


def to_depth_slices(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, D + 2 pad, C, H, W): zero-padded along depth, one 2-D image per slice."""
    c, d, h, w = static_sizes(x)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, pad, pad))
    return x.reshape(-1, c, d + 2 * pad, h * w).transpose(1, 2).reshape(-1, d + 2 * pad, c, h, w)


def from_depth_slices(y: torch.Tensor, batch, depth: int) -> torch.Tensor:
    """(B*D, C, H, W) -> (B, C, D, H, W); `batch` is the input's traced x.shape[0]."""
    c, h, w = static_sizes(y)
    return y.reshape(-1, depth, c, h * w).transpose(1, 2).reshape(batch, c, depth, h, w)


def per_depth_kernels(weight: torch.Tensor) -> torch.Tensor:
    """Conv3d weight (out, in, kd, kh, kw) -> (kd, out, in, kh, kw): one 2-D kernel per kernel depth."""
    return weight.detach().permute(2, 0, 1, 3, 4).contiguous()


def tap_sum_conv(slices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """A stride-1 'same' Conv3d from depth slices: sum over kernel depth i of a 2-D conv of the slices
    shifted by i. slices (B, D + 2 pad, C, H, W), weight (k, out, in/groups, k, k) -> (B*D, out, H, W)."""
    padded, c, h, w = static_sizes(slices)
    k = int(weight.shape[0])
    d = padded - 2 * (k // 2)
    out = None
    for i in range(k):
        taps = slices[:, i:i + d].reshape(-1, c, h, w)
        y = F.conv2d(taps, weight[i], bias if i == 0 else None, padding=k // 2, groups=groups)
        out = y if out is None else out + y
    return out


def merged_group_weight(conv: nn.Conv3d, min_channels: int) -> tuple:
    """The grouped conv's weight with neighbouring groups merged until each has >= min_channels inputs,
    the new off-diagonal blocks zero: (weight (out, in/new_groups, k, k, k), new_groups)."""
    weight = conv.weight.detach()
    per_group = conv.in_channels // conv.groups
    merge = 1
    while per_group * merge < min_channels and conv.groups % (merge * 2) == 0:
        merge *= 2
    if merge == 1:
        return weight, conv.groups
    out_per_group = conv.out_channels // conv.groups
    merged = weight.new_zeros(conv.out_channels, per_group * merge, *weight.shape[2:])
    for group in range(conv.groups):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        offset = (group % merge) * per_group
        merged[rows, offset:offset + per_group] = weight[rows]
    return merged, conv.groups // merge


class DepthSlicedBranch(nn.Module):
    """A JLC branch with its grouped conv as one 2-D convolution over the depth slices that yields every
    kernel depth's partial output at once (as the model's `depth_sliced_conv3d`); output slice z sums the
    partial of kernel depth i from padded slice z + i. Here each shifted partial is cut out by slicing
    the kernel depth first (the model's `y[:, i:i + d, :, i]` exports as a Slice copying every kernel
    depth's partial, then a Gather), and the conv adds the bias to kernel depth 0's partial."""

    def __init__(self, branch: GroupConvBranch):
        super().__init__()
        conv = branch.conv
        k, self.groups = conv.kernel_size[0], conv.groups
        per_group = conv.out_channels // self.groups
        self.register_buffer("weight", depth_sliced_weight(conv.weight.detach(), self.groups).clone())
        bias = torch.zeros(self.groups, k, per_group)  # in the weight's output order (group, kernel depth, channel)
        bias[:, 0] = conv.bias.detach().reshape(self.groups, per_group)
        self.register_buffer("bias", bias.reshape(-1))
        self.norm, self.act = branch.norm, branch.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, d, h, w = static_sizes(x)
        k = int(self.weight.shape[-1])
        pad, per_group = k // 2, c // self.groups
        slices = to_depth_slices(x, pad).reshape(-1, c, h, w)  # (B*(D+2p), C, H, W)
        y = F.conv2d(slices, self.weight, self.bias, padding=pad, groups=self.groups)  # (B*(D+2p), G*k*c/G, H, W)
        y = y.reshape(-1, d + 2 * pad, self.groups, k, per_group * h * w)
        out = None
        for i in range(k):
            # kernel depth first: each Slice node copies only what it keeps (the exporter emits one per axis)
            part = y[:, :, :, i:i + 1][:, i:i + d]  # (B, D, G, 1, c/G * H*W)
            out = part if out is None else out + part
        out = from_depth_slices(out.reshape(-1, c, h, w), x.shape[0], d)
        return self.act(self.norm(out))


class TapSlicedBranch(nn.Module):
    """A JLC branch (grouped 'same' Conv3d + IN + GELU) with the conv as per-depth 2-D convolutions."""

    def __init__(self, branch: GroupConvBranch, min_group_channels: int = NCHWC_BLOCK):
        super().__init__()
        weight, self.groups = merged_group_weight(branch.conv, min_group_channels)
        self.register_buffer("weight", per_depth_kernels(weight))
        self.register_buffer("bias", branch.conv.bias.detach().clone())
        self.norm, self.act = branch.norm, branch.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = to_depth_slices(x, self.weight.shape[0] // 2)
        y = tap_sum_conv(slices, self.weight, self.bias, self.groups)
        y = from_depth_slices(y, x.shape[0], static_sizes(x)[1])
        return self.act(self.norm(y))


class SlicedShuffleHead(nn.Module):
    """ShuffleHead with its 3x3x3 conv as per-depth 2-D convolutions; the 4x pixel shuffle starts from
    the slice layout, (B*D, classes*f^3, H, W), channels ordered (class, s1, s2, s3). It first interleaves
    s3 with W (the costly element-wise step, done on the smallest unit), then moves whole rows of W*f."""

    def __init__(self, head: ShuffleHead):
        super().__init__()
        self.factor = head.factor
        self.classes = head.conv.out_channels // head.factor**3
        self.register_buffer("weight", per_depth_kernels(head.conv.weight))
        self.register_buffer("bias", head.conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = static_sizes(x)[1:]
        f, classes = self.factor, self.classes
        y = tap_sum_conv(to_depth_slices(x, self.weight.shape[0] // 2), self.weight, self.bias, groups=1)
        y = y.reshape(-1, f, h * w).transpose(1, 2)  # [B D classes s1 s2] [H W] [s3]
        y = y.reshape(-1, d, classes, f, f, h, w * f).permute(0, 2, 1, 3, 5, 4, 6)  # [B classes D s1 H s2 (W s3)]
        return y.reshape(x.shape[0], classes, d * f, h * f, w * f)


class StridedDepthSlicedConv3d(nn.Module):
    """A strided Conv3d (e.g. the 7x7x7 stride-4 stem) as one strided 2-D convolution per kernel depth.

    Kernel depth i meets input slice s*o + i - pad for output slice o, so nothing is computed twice. The
    input is not padded along depth (that would copy the whole patch): a kernel depth whose first or last
    output slices would read padding runs on its valid range only, and the small output is padded instead.
    """

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if conv.groups != 1 or len(set(conv.stride)) != 1:
            raise ValueError("only ungrouped convolutions with one stride on all axes can be rewritten")
        self.stride = conv.stride[0]
        self.depth_padding = conv.padding[0]
        self.padding = conv.padding[1:]
        self.register_buffer("weight", per_depth_kernels(conv.weight))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.reshape(1, -1, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, (c, d, h, w) = x.shape[0], static_sizes(x)
        k, s, pad = int(self.weight.shape[0]), self.stride, self.depth_padding
        out_depth = (d + 2 * pad - k) // s + 1
        slices = x.reshape(-1, c, d, h * w).transpose(1, 2)  # (B, D, C, H*W)
        sums = {}  # (first, last) valid output slice -> sum of the 2-D convolutions of the taps with that range
        for i in range(k):
            first = max(0, -((i - pad) // s))  # ceil((pad - i) / s)
            last = min(out_depth - 1, (d - 1 + pad - i) // s)
            if first > last:
                continue
            start = s * first + i - pad
            taps = slices[:, start:start + s * (last - first) + 1:s].reshape(-1, c, h, w)
            y = F.conv2d(taps, self.weight[i], stride=s, padding=self.padding)
            sums[first, last] = y + sums[first, last] if (first, last) in sums else y
        out = None
        for (first, last), y in sums.items():
            channels, out_h, out_w = static_sizes(y)
            y = y.reshape(-1, last - first + 1, channels * out_h * out_w)
            if first > 0 or last < out_depth - 1:
                y = F.pad(y, (0, 0, first, out_depth - 1 - last))
            out = y if out is None else out + y
        return from_depth_slices(out.reshape(-1, channels, out_h, out_w), batch, out_depth) + self.bias


class PlainConvBranch(nn.Module):
    """A JLC branch evaluated with its grouped Conv3d directly (no depth slicing)."""

    def __init__(self, branch: GroupConvBranch):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch.act(self.branch.norm(self.branch.conv(x)))


def replace_children(model: nn.Module, replacement) -> nn.Module:
    """`model` (in place) with every submodule for which replacement(child) returns a module swapped for it."""
    targets = [(parent, name, new) for parent in model.modules() for name, child in parent.named_children()
               if (new := replacement(child)) is not None]
    for parent, name, new in targets:  # replaced after the walk: the wrappers contain the originals
        setattr(parent, name, new)
    return model


def with_plain_branches(model: nn.Module, max_kernel: int) -> nn.Module:
    """`model` (in place) with the JLC branches of kernel <= max_kernel as plain grouped Conv3d."""
    return replace_children(model, lambda child: PlainConvBranch(child) if isinstance(child, GroupConvBranch)
                            and child.conv.kernel_size[0] <= max_kernel else None)


def _export_form(child: nn.Module):
    """The export replacement of a submodule, or None to keep it."""
    if isinstance(child, GroupConvBranch) and child.conv.kernel_size[0] == 1:
        return PlainConvBranch(child)
    if isinstance(child, GroupConvBranch) and child.conv.kernel_size[0] == 3:
        return TapSlicedBranch(child)
    if isinstance(child, GroupConvBranch) and child.conv.kernel_size[0] > 3:
        return DepthSlicedBranch(child)
    if isinstance(child, ShuffleHead):
        return SlicedShuffleHead(child)
    return None


def rewrite_for_export(model: nn.Module, min_kernel: int = 5) -> nn.Module:
    """A copy of `model` for ONNX Runtime (module docstring): the stem (strided, kernel >= min_kernel)
    depth-sliced; 1x1x1 JLC branches as plain grouped Conv3d (no im2col needed); 3x3x3 JLC branches and
    the head as per-depth 2-D convolutions; 5x5x5 JLC branches as one depth-sliced 2-D convolution; the
    transformer branch and the fusions channels-last."""
    model = replace_children(copy.deepcopy(model), _export_form)
    for module in model.modules():
        if isinstance(module, DownConv) and module.conv.kernel_size[0] >= min_kernel:
            module.conv = StridedDepthSlicedConv3d(module.conv)
        if isinstance(module, DualStreamEncoder):
            module.transformer = ChannelsLastTransformer(module.transformer)
            module.fusions = nn.ModuleList(ChannelsLastFusion(fusion) for fusion in module.fusions)
    return model
