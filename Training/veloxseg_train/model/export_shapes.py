"""Sizes as trace constants, for the export-time modules (`export_rewrites`, `export_transformer`)."""

from __future__ import annotations

import torch


def static_sizes(x: torch.Tensor) -> tuple:
    """x's sizes after the batch axis as Python ints, i.e. constants in the trace (the exported graph takes
    one fixed patch size). Only the batch axis may stay dynamic: it is -1 in intermediate reshapes and the
    traced x.shape[0] in the last one, the form from which the exporter still infers a static channel
    axis (ONNX export of InstanceNorm needs one; traced size arithmetic or a final -1 loses it)."""
    return tuple(int(size) for size in x.shape[1:])
