"""Shared fixtures for the training-side tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PARITY = Path(__file__).resolve().parents[1] / "Data" / "reference-parity"


@pytest.fixture(scope="session")
def reference_state_dict():
    return {k: torch.from_numpy(v) for k, v in np.load(PARITY / "state_dict.npz").items()}


@pytest.fixture(scope="session")
def parity_input():
    return torch.from_numpy(np.load(PARITY / "input.npz")["input"])


@pytest.fixture(scope="session")
def sampled_outputs():
    return dict(np.load(PARITY / "sampled_outputs.npz"))
