"""The SDKT training loss (spec §4): deep-supervised CE + Dice, reconstruction MSE, Gram-matrix transfer.

    total = seg_weight  * sum_o w_o * (ce_weight * CE(o, y) + dice_weight * Dice(o, y))
          + recon_weight * MSE(recon, input)
          + sdkt_weight  * mean_m MSE(G_seg, G_m)
          + organ_weight * CE(organ logits, organ codes)      (with an organ head and organ labels)

with w = ds_weights normalised to sum 1 (the reference: [1, 1, 1, 1] -> 1/4 each). The Dice term is the
soft Dice of the softmax, background excluded, smoothing on numerator and denominator, computed per sample
and class and then averaged. Neither Gram matrix is detached: the transfer pulls the student and both
teachers (and the shared encoder) towards each other, as in the reference. The organ CE compares the
organ head's 1/4-resolution logits with the organ code at the centre of each 4^3 block, skipping voxels
coded IGNORE (cases without organ labels). Everything is computed in float32 even under autocast.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LossParts(NamedTuple):
    """The total (what is back-propagated) and its weighted-before parts, for logging."""

    total: torch.Tensor
    seg: torch.Tensor  # the deep-supervised sum of (ce_weight * CE + dice_weight * Dice)
    ce: torch.Tensor  # deep-supervised CE alone
    dice: torch.Tensor  # deep-supervised Dice loss alone
    recon: torch.Tensor  # reconstruction MSE (unweighted)
    sdkt: torch.Tensor  # Gram MSE averaged over the teachers (unweighted)
    organ: torch.Tensor  # organ CE (unweighted; 0 without organ head or labels)


ORGAN_IGNORE = 255  # organ code of voxels without organ labels (data.organs.IGNORE)


def organ_loss(logits: torch.Tensor, organs: torch.Tensor) -> torch.Tensor:
    """Mean CE of organ logits (B, K, S/f) against codes (B, S) sampled at each f^3 block's centre.

    Voxels coded ORGAN_IGNORE do not count; a batch with none labelled gives 0 (still in the graph).
    """
    factor = organs.shape[-1] // logits.shape[-1]
    centre = slice(factor // 2, None, factor)
    target = organs[:, centre, centre, centre].long()
    labelled = target != ORGAN_IGNORE
    total = F.cross_entropy(logits.float(), target, ignore_index=ORGAN_IGNORE, reduction="sum")
    return total / labelled.sum().clamp(min=1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5,
                   include_background: bool = False) -> torch.Tensor:
    """1 - (2|P.Y| + s) / (|P| + |Y| + s) per sample and class, averaged; P = softmax(logits).

    logits (B, K, *spatial); target (B, *spatial) integer class indices.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


def gram_transfer_loss(gram_seg: torch.Tensor, gram_teachers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the teachers of MSE(G_seg, G_m); no stop-gradient on either side."""
    terms = [F.mse_loss(gram_seg.float(), g.float()) for g in gram_teachers]
    return torch.stack(terms).mean()


class SDKTLoss(nn.Module):
    """The full training loss. Call with the model's train-mode outputs, the network input and the label."""

    def __init__(self, ds_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), ce_weight: float = 1.0,
                 dice_weight: float = 1.0, dice_smooth: float = 1e-5, seg_weight: float = 1.0,
                 recon_weight: float = 0.5, sdkt_weight: float = 2.0, organ_weight: float = 0.0):
        super().__init__()
        total = float(sum(ds_weights))
        if len(ds_weights) != 4 or total <= 0:
            raise ValueError("ds_weights must be four numbers with a positive sum")
        self.ds_weights = [float(w) / total for w in ds_weights]
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.dice_smooth = dice_smooth
        self.seg_weight = seg_weight
        self.recon_weight = recon_weight
        self.sdkt_weight = sdkt_weight
        self.organ_weight = organ_weight

    @classmethod
    def from_config(cls, config) -> SDKTLoss:
        return cls(config.ds_weights, config.ce_weight, config.dice_weight, config.dice_smooth,
                   config.seg_weight, config.recon_weight, config.sdkt_weight, config.organ_weight)

    def forward(self, outputs, image: torch.Tensor, label: torch.Tensor) -> LossParts:
        """outputs: TrainOutputs(seg, ds_up2, ds_up3, ds_enc4, recon, gram_seg, gram_ct, gram_pet).

        image (B, 2, D, H, W) is the normalised network input (the reconstruction target); label
        (B, D, H, W) or (B, 1, D, H, W), any non-zero value is lesion, or (B, 2, D, H, W): lesion, organ code.
        """
        organs = None
        if label.ndim == image.ndim:
            organs = label[:, 1] if label.shape[1] > 1 else None
            label = label[:, 0]
        target = (label > 0).long()
        seg_outputs = (outputs.seg, outputs.ds_up2, outputs.ds_up3, outputs.ds_enc4)
        ce = image.new_zeros((), dtype=torch.float32)
        dice = image.new_zeros((), dtype=torch.float32)
        # Zero-weighted outputs stay in the graph (times 0) so DDP sees every parameter used.
        for weight, logits in zip(self.ds_weights, seg_outputs):
            ce = ce + weight * F.cross_entropy(logits.float(), target)
            dice = dice + weight * soft_dice_loss(logits, target, self.dice_smooth)
        seg = self.ce_weight * ce + self.dice_weight * dice
        recon = F.mse_loss(outputs.recon.float(), image.float())
        sdkt = gram_transfer_loss(outputs.gram_seg, (outputs.gram_ct, outputs.gram_pet))
        total = self.seg_weight * seg + self.recon_weight * recon + self.sdkt_weight * sdkt
        organ = image.new_zeros((), dtype=torch.float32)
        if outputs.organs is not None and organs is not None:
            organ = organ_loss(outputs.organs, organs)
            total = total + self.organ_weight * organ
        return LossParts(total, seg, ce, dice, recon, sdkt, organ)
