"""Bring the authors' VeloxSeg weights into this project: parameter-name mapping and strict loading.

The authors' module tree differs from ours (e.g. `encoder.encoder_attn.layers.0.blocks.0.attn.qkv_proj.1.2`
is our `encoder.transformer.stages.0.attn.qkv.1.v`). The rules below rename every tensor; anything left
unmatched, missing or mis-shaped is reported, never silently dropped.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

import torch

_QKV = {"0": "q", "1": "k", "2": "v"}
_ATTN = r"encoder\.encoder_attn\.layers\.(\d+)\.blocks\.0\."

# (authors' pattern, our replacement); the first rule that matches a name wins
RULES: List[Tuple[str, object]] = [
    (r"encoder\.encoder_attn\.patch_embeds\.(\d+)\.proj\.", r"encoder.transformer.patch_embeds.\1.proj."),
    (_ATTN + r"attn\.position_embedding\.relative_position_bias_table$",
     r"encoder.transformer.stages.\1.attn.rel_pos.table"),
    (_ATTN + r"attn\.position_embedding\.relative_position_index$",
     r"encoder.transformer.stages.\1.attn.rel_pos.index"),
    (_ATTN + r"attn\.input_norms\.(\d+)\.", r"encoder.transformer.stages.\1.attn.norms.\2."),
    (_ATTN + r"attn\.qkv_proj\.(\d+)\.([012])\.",
     lambda m: f"encoder.transformer.stages.{m[1]}.attn.qkv.{m[2]}.{_QKV[m[3]]}."),
    (_ATTN + r"attn\.mix_channels\.(\d+)\.", r"encoder.transformer.stages.\1.attn.mixers.\2."),
    (_ATTN + r"ffns\.(\d+)\.linear([12])\.", r"encoder.transformer.stages.\1.ffns.\2.fc\3."),
    (_ATTN + r"norms\.(\d+)\.", r"encoder.transformer.stages.\1.ffn_norms.\2."),
    (r"encoder\.encoder_attn\.layers\.(\d+)\.downs\.(\d+)\.", r"encoder.transformer.merges.\1.\2."),
    (r"encoder\.encoder_conv\.down(\d)\.down\.", lambda m: f"encoder.conv.downs.{int(m[1]) - 1}.conv."),
    (r"encoder\.encoder_conv\.layer(\d)\.0\.", lambda m: f"encoder.conv.blocks.{int(m[1]) - 1}."),
    (r"encoder\.attn2conv_(\d)\.0\.", lambda m: f"encoder.fusions.{int(m[1]) - 1}.conv."),
    (r"decoder\.layer_up(\d)\.up\.", lambda m: f"seg_decoder.body.ups.{int(m[1]) - 1}.conv."),
    (r"decoder\.layer(\d)\.0\.", lambda m: f"seg_decoder.body.blocks.{int(m[1]) - 1}."),
    (r"decoder\.out_conv1\.0\.", "seg_decoder.head.conv."),
    (r"decoder\.out_conv(\d)\.", lambda m: f"seg_decoder.ds_heads.{int(m[1]) - 2}."),
    (r"rc_decoders\.(\d+)\.enc2rc_(\d)\.0\.", lambda m: f"recon_decoders.{m[1]}.adapters.{int(m[2]) - 1}.conv."),
    (r"rc_decoders\.(\d+)\.layer_up(\d)\.up\.", lambda m: f"recon_decoders.{m[1]}.body.ups.{int(m[2]) - 1}.conv."),
    (r"rc_decoders\.(\d+)\.layer(\d)\.0\.", lambda m: f"recon_decoders.{m[1]}.body.blocks.{int(m[2]) - 1}."),
    (r"rc_decoders\.(\d+)\.out_conv\.0\.", r"recon_decoders.\1.head.conv."),
]
# inside a JLC block: spatial_convs.i.0 -> branches.i.conv ; channel_conv.1/.3 -> mlp.fc1/.fc2
_JLC_RULES = [(r"spatial_convs\.(\d+)\.0\.", r"branches.\1.conv."), (r"channel_conv\.1\.", "mlp.fc1."),
              (r"channel_conv\.3\.", "mlp.fc2.")]

# the usual keys under which training scripts store the weights inside a checkpoint dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")


class CheckpointMismatchError(ValueError):
    """The weights do not fit the network; the message lists every offending key."""


def rename(name: str) -> str:
    """Our parameter name for one of the authors' names; raises KeyError when no rule applies."""
    for pattern, replacement in RULES:
        new, count = re.subn("^" + pattern, replacement, name)
        if count:
            for jlc_pattern, jlc_replacement in _JLC_RULES:
                new = re.sub(jlc_pattern, jlc_replacement, new)
            return new
    raise KeyError(name)


def unwrap_state_dict(obj: object) -> Mapping[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: the dict itself, or one held under a usual key."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state_dict(obj[key])
    raise CheckpointMismatchError(
        "No state_dict found: expected a mapping of parameter names to tensors, or a dict holding one under "
        f"one of the keys {', '.join(STATE_DICT_KEYS)}.")


def convert_reference_state_dict(reference: Mapping[str, torch.Tensor],
                                 model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Rename the authors' tensors to ours and check them against `model`; raises CheckpointMismatchError."""
    # strip wrappers such as DataParallel's "module." or Lightning's "model." prefixes
    names = list(reference)
    for prefix in ("module.", "model.", "net."):
        if names and all(n.startswith(prefix) for n in names):
            reference = {n[len(prefix):]: t for n, t in reference.items()}
            names = list(reference)

    buffers = dict(model.named_buffers())
    ours = model.state_dict()
    converted, unknown, problems = {}, [], []
    for name, tensor in reference.items():
        try:
            new = rename(name)
        except KeyError:
            unknown.append(name)
            continue
        if new in buffers and new not in ours:  # derived, non-persistent buffer: verify, don't load
            if not torch.equal(buffers[new].cpu(), tensor.cpu().to(buffers[new].dtype)):
                problems.append(f"{name}: differs from the index this network derives from its window sizes")
            continue
        if new not in ours:
            unknown.append(name)
        elif tuple(ours[new].shape) != tuple(tensor.shape):
            problems.append(f"{name} -> {new}: shape {tuple(tensor.shape)}, expected {tuple(ours[new].shape)}")
        else:
            converted[new] = tensor.detach().to(ours[new].dtype)
    missing = sorted(set(ours) - set(converted))
    if unknown or missing or problems:
        lines = []
        if unknown:
            lines.append(f"unexpected keys ({len(unknown)}): " + ", ".join(sorted(unknown)))
        if missing:
            lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        lines += problems
        details = "\n  ".join(lines)
        raise CheckpointMismatchError(f"The checkpoint does not fit this VeloxSeg configuration:\n  {details}")
    return converted
