"""Unit checks of the blocks: configuration rules, window helpers, export rewrites, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from veloxseg_train.model import VeloxSeg, VeloxSegConfig, export_transformer, gram_matrix
from veloxseg_train.model.config import WindowPair
from veloxseg_train.model.decoders import ShuffleHead, pixel_shuffle_3d
from veloxseg_train.model.export_rewrites import (
    DepthSlicedBranch,
    SlicedShuffleHead,
    StridedDepthSlicedConv3d,
    TapSlicedBranch,
    merged_group_weight,
    rewrite_for_export,
)
from veloxseg_train.model.export_transformer import (
    ChannelsLastFusion,
    ChannelsLastPWABlock,
    ChannelsLastTransformer,
    JointPatchEmbed,
)
from veloxseg_train.model.jlc import GroupConvBranch
from veloxseg_train.model.layers import ChannelLayerNorm
from veloxseg_train.model.patch_embed import PatchEmbed
from veloxseg_train.model.pwa import PWABlock
from veloxseg_train.model.sliced_conv import depth_sliced_conv3d
from veloxseg_train.model.windows import relative_position_index, upsample_matrix, window_partition, window_reverse


def test_autopet_windows_and_widths_follow_the_spec():
    cfg = VeloxSegConfig.autopet()
    pairs = [[(p.big[0], p.small[0]) for p in cfg.window_pairs(k)] for k in range(4)]
    assert pairs == [[(3, 1), (6, 2), (12, 4), (24, 8)], [(6, 1), (12, 2)], [(3, 1), (6, 2)], [(3, 1)]]
    assert [cfg.qk_channels(k) for k in range(4)] == [16, 32, 32, 64]
    assert [cfg.v_channels(k) for k in range(4)] == [16, 32, 64, 128]
    assert cfg.required_multiple() == (96, 96, 96)


def test_hecktor_windows_are_anisotropic():
    cfg = VeloxSegConfig.hecktor()
    assert cfg.grid(0) == (32, 32, 16)
    assert [len(cfg.window_pairs(k)) for k in range(4)] == [4, 2, 2, 1]
    assert all(p.tokens == (4, 4, 2) for k in (0, 2, 3) for p in cfg.window_pairs(k))
    assert cfg.window_pairs(1)[0].tokens == (8, 8, 4)


def test_config_round_trip_rejects_unknown_keys():
    cfg = VeloxSegConfig.hecktor()
    assert VeloxSegConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        VeloxSegConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_window_partition_matches_a_plain_permute_and_reverses():
    x = torch.randn(3, 12, 6, 24)
    windows = window_partition(x, (3, 2, 4))
    expected = x.reshape(3, 4, 3, 3, 2, 6, 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(3, 72, 24)
    assert torch.equal(windows, expected)
    assert torch.equal(window_reverse(windows, (3, 2, 4), (12, 6, 24)), x)


@pytest.mark.parametrize("tokens,size", [((3, 3, 3), (6, 6, 6)), ((3, 3, 3), (24, 24, 24)), ((4, 4, 2), (8, 8, 4))])
def test_upsample_matrix_equals_trilinear_align_corners(tokens, size):
    x = torch.randn(5, 1, *tokens)
    expected = F.interpolate(x, size=size, mode="trilinear", align_corners=True).reshape(5, -1)
    assert torch.allclose(x.reshape(5, -1) @ upsample_matrix(tokens, size).T, expected, atol=1e-5)


def test_relative_position_index_is_swin_style():
    index = relative_position_index((3, 3, 3))
    assert index.shape == (27, 27) and index.min() == 0 and index.max() == 124
    assert index[0, 0] == index[13, 13] == 62  # zero offset sits in the middle of the 5^3 table
    assert index[26, 0] == 124 and index[0, 26] == 0


def test_pixel_shuffle_channel_order():
    x = torch.randn(2, 2 * 64, 3, 4, 5)
    expected = x.reshape(2, 2, 4, 4, 4, 3, 4, 5).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(2, 2, 12, 16, 20)
    assert torch.equal(pixel_shuffle_3d(x, 4), expected)


def test_gram_matrix_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1, 1)
    # X X^T = [[5, 11], [11, 25]], divided by C * N = 2 * 2
    assert torch.allclose(gram_matrix(x), torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))


@pytest.mark.parametrize("channels,kernel,groups", [(16, 5, 4), (8, 3, 1), (12, 5, 3), (16, 1, 4)])
def test_depth_sliced_conv_equals_conv3d(channels, kernel, groups):
    conv = torch.nn.Conv3d(channels, channels, kernel, padding=kernel // 2, groups=groups)
    x = torch.randn(2, channels, 7, 6, 5)
    with torch.no_grad():
        assert torch.allclose(depth_sliced_conv3d(x, conv.weight, conv.bias, groups), conv(x), atol=1e-5)


@pytest.mark.parametrize("depth", [24, 21, 6])  # divisible by the stride or not; shorter than the kernel
def test_strided_depth_sliced_conv_equals_conv3d(depth):
    conv = torch.nn.Conv3d(2, 16, 7, stride=4, padding=3)
    x = torch.randn(2, 2, depth, 20, 16)
    with torch.no_grad():
        assert torch.allclose(StridedDepthSlicedConv3d(conv)(x), conv(x), atol=1e-5)


def test_joint_patch_embedding_equals_the_per_modality_embeddings():
    model = VeloxSeg().eval()
    x = torch.randn(2, 2, 96, 96, 96)
    joint = JointPatchEmbed(model.encoder.transformer.patch_embeds)
    with torch.no_grad():
        expected = model.encoder.transformer.embed(x)
        got = joint(x)
    assert len(got) == 2  # channels-last per modality
    assert all(torch.allclose(g, e.permute(0, 2, 3, 4, 1), atol=1e-5) for g, e in zip(got, expected))


def test_merged_groups_keep_the_grouped_convolution():
    conv = torch.nn.Conv3d(16, 16, 3, padding=1, groups=4)  # 4 channels per group -> merged to 8
    weight, groups = merged_group_weight(conv, min_channels=8)
    assert groups == 2 and weight.shape == (16, 8, 3, 3, 3)
    x = torch.randn(1, 16, 5, 6, 7)
    with torch.no_grad():
        assert torch.allclose(F.conv3d(x, weight, conv.bias, padding=1, groups=groups), conv(x), atol=1e-5)
    assert merged_group_weight(torch.nn.Conv3d(16, 16, 3, groups=2), min_channels=8)[1] == 2  # already wide


@pytest.mark.parametrize("channels,groups", [(16, 4), (32, 4), (8, 8)])
def test_tap_sliced_branch_equals_the_branch(channels, groups):
    branch = GroupConvBranch(channels, 3, groups).eval()
    x = torch.randn(2, channels, 6, 5, 7)
    with torch.no_grad():
        assert torch.allclose(TapSlicedBranch(branch)(x), branch(x), atol=1e-5)


@pytest.mark.parametrize("channels,groups", [(16, 4), (32, 4), (12, 3)])
def test_depth_sliced_branch_equals_the_branch(channels, groups):
    torch.manual_seed(0)
    branch = GroupConvBranch(channels, 5, groups).eval()
    torch.nn.init.normal_(branch.conv.bias)  # the rewrite moves the bias into kernel depth 0's partial
    x = torch.randn(2, channels, 7, 6, 5)
    with torch.no_grad():
        assert torch.allclose(DepthSlicedBranch(branch)(x), branch(x), atol=1e-5)


def test_sliced_shuffle_head_equals_the_head():
    head = ShuffleHead(16, 2, 4).eval()
    x = torch.randn(2, 16, 5, 6, 4)
    with torch.no_grad():
        assert torch.allclose(SlicedShuffleHead(head)(x), head(x), atol=1e-5)


def randomise_channel_norms(module: torch.nn.Module) -> None:
    """Non-trivial affines in every channel LayerNorm, so that folding them into the next linear map is tested."""
    for norm in module.modules():
        if isinstance(norm, ChannelLayerNorm):
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.normal_(0.0, 0.3)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("chunk_scores", [1, 3 * 2 * 54 * 54, 2**18])  # one window, 3 windows, all at once
def test_channels_last_pwa_block_equals_the_block(monkeypatch, chunk_scores, heads):
    monkeypatch.setattr(export_transformer, "ATTENTION_CHUNK_SCORES", chunk_scores)
    torch.manual_seed(0)
    pairs = [WindowPair(big=(3, 3, 3), small=(1, 1, 1)), WindowPair(big=(6, 6, 6), small=(2, 2, 2))]
    block = PWABlock(16, 16, 32, heads, pairs, 2, 2, 0.0, 0.0, True).eval()
    randomise_channel_norms(block)
    features = [torch.randn(2, 16, 6, 6, 6) for _ in range(2)]
    with torch.no_grad():
        expected = block(features)
        got = ChannelsLastPWABlock(block)([f.permute(0, 2, 3, 4, 1) for f in features])
    assert all(torch.allclose(g, e.permute(0, 2, 3, 4, 1), atol=1e-5) for g, e in zip(got, expected))


@pytest.mark.parametrize("preset", ["autopet", "hecktor"])  # cubic and anisotropic windows
def test_channels_last_transformer_and_fusions_equal_the_branch(preset):
    torch.manual_seed(0)
    cfg = getattr(VeloxSegConfig, preset)()
    encoder = VeloxSeg(cfg).eval().encoder
    randomise_channel_norms(encoder)
    x = torch.randn(2, 2, *cfg.input_size)
    with torch.no_grad():
        expected = encoder.transformer(x)
        got = ChannelsLastTransformer(encoder.transformer)(x)
        for fusion, stage_expected, stage_got in zip(encoder.fusions, expected, got):
            assert all(torch.allclose(g, e.permute(0, 2, 3, 4, 1), atol=1e-4)
                       for g, e in zip(stage_got, stage_expected))
            assert torch.allclose(ChannelsLastFusion(fusion)(stage_got), fusion(stage_expected), atol=1e-4)


def test_export_rewrite_replaces_the_slow_forms_and_keeps_the_function():
    model = VeloxSeg().eval()
    rewritten = rewrite_for_export(model)
    kinds = {type(m).__name__ for m in rewritten.modules()}
    assert {"TapSlicedBranch", "DepthSlicedBranch", "SlicedShuffleHead", "StridedDepthSlicedConv3d", "JointPatchEmbed",
            "ChannelsLastTransformer", "ChannelsLastFusion"} <= kinds
    assert not {"ShuffleHead", "TransformerEncoder", "Fusion"} & kinds
    assert all(type(m).__name__ != "ChannelsLastTransformer" for m in model.modules())
    x = torch.randn(1, 2, 96, 96, 96)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-4)


def test_wrong_input_size_names_the_sizes_it_takes():
    model = VeloxSeg().eval()
    with pytest.raises(ValueError, match=r"\(B, 2, 96, 96, 96\).*multiple of \(96, 96, 96\)"):
        model(torch.zeros(1, 2, 64, 96, 96))
    with pytest.raises(ValueError, match="got \\(1, 1, 96, 96, 96\\)"):
        model(torch.zeros(1, 1, 96, 96, 96))


def test_patch_embedding_gradients_match_the_plain_conv():
    torch.manual_seed(0)
    embed = PatchEmbed(1, 8, 4, dropout=0.0)
    x = torch.randn(2, 1, 8, 12, 16, requires_grad=True)
    grad_out = torch.randn(2, 8, 2, 3, 4)
    embed(x).backward(grad_out)  # the CPU training path (custom backward)
    custom = (x.grad.clone(), embed.proj.weight.grad.clone(), embed.proj.bias.grad.clone())
    x.grad = None
    embed.zero_grad()
    embed.proj(x).backward(grad_out)  # PyTorch's own Conv3d backward
    for got, expected in zip(custom, (x.grad, embed.proj.weight.grad, embed.proj.bias.grad)):
        assert torch.allclose(got, expected, atol=1e-4)
