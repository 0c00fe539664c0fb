"""The VeloxSeg network: dual-stream encoder, segmentation decoder, and (training only) SDKT teachers."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from .config import VeloxSegConfig
from .decoders import ReconstructionDecoder, SegmentationDecoder
from .encoders import DualStreamEncoder
from .pwa import RelativePositionBias


class TrainOutputs(NamedTuple):
    """Train-mode outputs; segmentation outputs are logits at the input size."""

    seg: torch.Tensor  # (B, classes, D, H, W)
    ds_up2: torch.Tensor  # deep supervision on decoder stage 2, upsampled
    ds_up3: torch.Tensor  # ... on decoder stage 3
    ds_enc4: torch.Tensor  # ... on the bottleneck encoder feature
    recon: torch.Tensor  # (B, M, D, H, W): [CT_rec, PET_rec], targets = the normalised input
    gram_seg: torch.Tensor  # (B, 16, 16) Gram of the seg decoder's last JLC block (the student)
    gram_ct: torch.Tensor  # ... of the CT teacher
    gram_pet: torch.Tensor  # ... of the PET teacher
    organs: Optional[torch.Tensor] = None  # (B, organs, D/4, H/4, W/4) organ logits, with an organ head


class VeloxSeg(nn.Module):
    """x (B, 2, D, H, W), channel 0 = CT, 1 = PET, normalised. eval(): logits; train(): TrainOutputs."""

    def __init__(self, cfg: Optional[VeloxSegConfig] = None):
        super().__init__()
        self.cfg = cfg or VeloxSegConfig.autopet()
        self.encoder = DualStreamEncoder(self.cfg)
        self.seg_decoder = SegmentationDecoder(self.cfg)
        self.recon_decoders = nn.ModuleList(ReconstructionDecoder(self.cfg) for _ in range(self.cfg.modalities))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (leaky-ReLU slope 0.01, fan-in) convs, zero biases, trunc-normal position tables."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RelativePositionBias):
                nn.init.trunc_normal_(module.table, std=0.02)

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.cfg.modalities, *self.cfg.input_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            multiple = self.cfg.required_multiple()
            raise ValueError(
                f"VeloxSeg takes input of shape (B, {expected[0]}, {expected[1]}, {expected[2]}, {expected[3]}) "
                f"(the patch size it was built for); got {tuple(x.shape)}. Cut larger volumes into "
                f"{expected[1:]} patches (sliding window) and pad smaller ones. A model built for another "
                f"size needs every axis to be a multiple of {multiple}.")

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, TrainOutputs]:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(x)
        encoded = self.encoder(x)
        seg = self.seg_decoder(encoded.fused)
        if not self.training:
            return seg.logits
        recons, grams = [], []
        for m, decoder in enumerate(self.recon_decoders):
            recon, gram = decoder([a[m] for a in encoded.transformer], encoded.fused)
            recons.append(recon)
            grams.append(gram)
        return TrainOutputs(seg.logits, *seg.deep_supervision, torch.cat(recons, dim=1), seg.gram, *grams,
                            seg.organs)

    def forward_with_organs(self, x: torch.Tensor):
        """Eval path with the anatomy head: (lesion logits (B, classes, D, H, W), organ logits (B, organs, S/4))."""
        if self.seg_decoder.organ_head is None:
            raise ValueError("this model has no organ head (n_organs = 0)")
        seg = self.seg_decoder(self.encoder(x).fused)
        return seg.logits, seg.organs

    def inference_parameters(self) -> int:
        """Parameters on the eval path: encoder + segmentation decoder without deep-supervision heads."""
        total = sum(p.numel() for p in self.encoder.parameters())
        total += sum(p.numel() for p in self.seg_decoder.parameters())
        return total - sum(p.numel() for p in self.seg_decoder.ds_heads.parameters())

    @staticmethod
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())
