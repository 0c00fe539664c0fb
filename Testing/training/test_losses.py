"""Each SDKT loss term on tiny tensors against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from veloxseg_train.losses import SDKTLoss, gram_transfer_loss, soft_dice_loss
from veloxseg_train.model import TrainOutputs, gram_matrix


def test_gram_matrix_by_hand():
    # Two channels over two voxels: X = [[1, 2], [3, 4]] -> X X^T = [[5, 11], [11, 25]], / (C * N) = / 4.
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1, 1)
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    assert torch.allclose(gram_matrix(x), expected)


def test_dice_excludes_background_and_is_per_sample():
    # Equal logits -> softmax 0.5 everywhere. Sample 0: target [1, 1, 0, 0]: intersection 1, |P| 2, |Y| 2.
    # Sample 1: empty target: intersection 0, |P| 2, |Y| 0. Mean of the two per-sample losses.
    s = 1e-5
    logits = torch.zeros(2, 2, 4)
    target = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    sample0 = 1 - (2 * 1 + s) / (4 + s)
    sample1 = 1 - s / (2 + s)
    assert soft_dice_loss(logits, target, s).item() == pytest.approx((sample0 + sample1) / 2, rel=1e-6)
    # With the background included, sample 1's background term (P 2, Y 4, intersection 2) joins in.
    with_bg = (sample0 + sample1 + (1 - (2 * 1 + s) / (4 + s)) + (1 - (2 * 2 + s) / (6 + s))) / 4
    assert soft_dice_loss(logits, target, s, include_background=True).item() == pytest.approx(with_bg, rel=1e-6)


def test_dice_of_a_perfect_prediction_is_zero():
    target = torch.tensor([[0, 1, 1, 0]])
    logits = torch.stack([(1 - target) * 20.0, target * 20.0], dim=1).float()
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_gram_transfer_is_mean_of_mses_and_reaches_both_sides():
    g_seg = torch.zeros(1, 2, 2, requires_grad=True)
    g_ct = torch.ones(1, 2, 2, requires_grad=True)
    g_pet = torch.full((1, 2, 2), 2.0, requires_grad=True)
    loss = gram_transfer_loss(g_seg, [g_ct, g_pet])
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    # No stop-gradient: student and both teachers get gradients.
    for g in (g_seg, g_ct, g_pet):
        assert g.grad is not None and g.grad.abs().sum() > 0


def _outputs(seg_values, recon_value=0.0, grams=(0.0, 1.0, 2.0), shape=(1, 2, 2, 2)):
    """TrainOutputs whose four seg outputs have constant lesion logits (background 0)."""
    def seg(v):
        logits = torch.zeros(1, 2, *shape[1:])
        logits[:, 1] = v
        return logits

    return TrainOutputs(*[seg(v) for v in seg_values], torch.full((1, 2, *shape[1:]), recon_value),
                        *[torch.full((1, 2, 2), g) for g in grams])


def _seg_term(v, target):
    """CE + Dice of a constant lesion logit v (background 0) against a binary target, by hand."""
    p = 1 / (1 + math.exp(-v))  # softmax of (0, v) for the lesion class
    n, t = target.numel(), int(target.sum())
    ce = -(t * math.log(p) + (n - t) * math.log(1 - p)) / n
    s = 1e-5
    dice = 1 - (2 * p * t + s) / (p * n + t + s)
    return ce + dice


def test_deep_supervision_weights_and_total():
    image = torch.ones(1, 2, 2, 2, 2)
    label = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    label[0, 0] = 2  # any non-zero value is lesion
    seg_values = (1.0, -1.0, 0.5, 2.0)
    target = (label > 0).float()
    terms = [_seg_term(v, target) for v in seg_values]

    parts = SDKTLoss()(_outputs(seg_values), image, label)
    assert parts.seg.item() == pytest.approx(sum(terms) / 4, rel=1e-5)  # 1/4 each
    assert parts.recon.item() == pytest.approx(1.0)  # recon 0 vs input 1
    assert parts.sdkt.item() == pytest.approx(2.5)  # (MSE(0,1) + MSE(0,2)) / 2
    assert parts.total.item() == pytest.approx(sum(terms) / 4 + 0.5 * 1.0 + 2.0 * 2.5, rel=1e-5)
    assert parts.seg.item() == pytest.approx(parts.ce.item() + parts.dice.item(), rel=1e-6)

    weighted = SDKTLoss(ds_weights=(2, 1, 1, 0), recon_weight=0.0, sdkt_weight=1.0, ce_weight=1.0,
                        dice_weight=1.0)(_outputs(seg_values), image, label[:, None])  # (B, 1, ...) label too
    expected = 0.5 * terms[0] + 0.25 * terms[1] + 0.25 * terms[2]
    assert weighted.seg.item() == pytest.approx(expected, rel=1e-5)
    assert weighted.total.item() == pytest.approx(expected + 2.5, rel=1e-5)


def test_loss_backpropagates_into_every_output():
    outputs = TrainOutputs(*[torch.randn(1, 2, 4, 4, 4, requires_grad=True) for _ in range(5)],
                           *[torch.rand(1, 3, 3, requires_grad=True) for _ in range(3)],
                           torch.randn(1, 3, 1, 1, 1, requires_grad=True))  # organ logits at 1/4 resolution
    label = torch.stack([torch.randint(0, 2, (1, 4, 4, 4)), torch.randint(0, 3, (1, 4, 4, 4))], dim=1)
    SDKTLoss(ds_weights=(1, 1, 1, 0), organ_weight=0.5).forward(outputs, torch.randn(1, 2, 4, 4, 4),
                                                                  label).total.backward()
    # A zero deep-supervision weight still leaves its output in the graph (DDP needs every parameter used).
    assert all(o.grad is not None for o in outputs)
