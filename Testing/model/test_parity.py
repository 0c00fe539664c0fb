"""The network reproduces the authors' implementation (spec reference-parity vectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veloxseg_train.model import VeloxSeg, VeloxSegConfig
from veloxseg_train.reference import convert_reference_state_dict

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference_model(reference_state_dict):
    model = VeloxSeg(VeloxSegConfig.autopet(attn_drop=0.0, proj_drop=0.0, conv_drop=0.0))
    model.load_state_dict(convert_reference_state_dict(reference_state_dict, model))
    return model


def _sampled(tensor: torch.Tensor, index: np.ndarray) -> np.ndarray:
    array = tensor.detach().numpy()
    return array.reshape(array.shape[0] * array.shape[1], -1)[:, index]


def test_parameter_counts():
    model = VeloxSeg()
    assert model.count(model) == 2_288_999
    assert model.inference_parameters() == 1_669_185


def test_eval_logits_match_reference(reference_model, parity_input, sampled_outputs):
    with torch.inference_mode():
        logits = reference_model.eval()(parity_input)
    assert logits.shape == (1, 2, 96, 96, 96)
    delta = np.abs(_sampled(logits, sampled_outputs["voxel_index"]) - sampled_outputs["eval_logits"]).max()
    assert delta <= TOLERANCE


def test_train_outputs_match_reference(reference_model, parity_input, sampled_outputs):
    with torch.no_grad():
        out = reference_model.train()(parity_input)
    index = sampled_outputs["voxel_index"]
    for name in ("seg", "ds_up2", "ds_up3", "ds_enc4", "recon"):
        delta = np.abs(_sampled(getattr(out, name), index) - sampled_outputs[name]).max()
        assert delta <= TOLERANCE, name
    for name in ("gram_seg", "gram_ct", "gram_pet"):
        assert getattr(out, name).shape == (1, 16, 16)
        assert np.abs(getattr(out, name).numpy() - sampled_outputs[name]).max() <= TOLERANCE, name


def test_eval_mode_runs_only_the_inference_path(reference_model, parity_input):
    called = []
    hooks = [m.register_forward_hook(lambda *_: called.append(1)) for m in reference_model.recon_decoders]
    hooks += [m.register_forward_hook(lambda *_: called.append(1)) for m in reference_model.seg_decoder.ds_heads]
    try:
        with torch.inference_mode():
            reference_model.eval()(parity_input)
    finally:
        for hook in hooks:
            hook.remove()
    assert called == []
