"""Shared fixtures for the training-side tests.

The parity tests compare the network with the authors' implementation. Its weights and input (15 MB) are
not in this repository: they are read from the spec's reference-parity folder in shared/, beside the
checkout (../shared/spec/reference-parity, as CI has it) or inside it (a copy), and checked by SHA-256.
Only the sampled expected outputs (0.9 MB) live here, in Testing/Data/reference-parity/. Without the
folder the tests that need it are skipped, naming the path looked for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PARITY = REPO / "Testing" / "Data" / "reference-parity"  # sampled_outputs.npz, README.md
# shared/ inside the checkout (a copy) or beside it (../shared); a skip names the latter
REFERENCE = next((p for p in (REPO / "shared" / "spec" / "reference-parity",
                              REPO.parent / "shared" / "spec" / "reference-parity") if p.is_dir()),
                 REPO.parent / "shared" / "spec" / "reference-parity")
# The authors' files, pinned by content: other weights or another input would make the tests meaningless.
REFERENCE_SHA256 = {
    "state_dict.npz": "d33b6f43009fa8fe693c255992eb07c8920061de993a34bf71ede1e2701999fc",
    "input.npy": "33dc6e1d5a7080530dfff0e3b5cec570194f90150e3a06b3f1430fde3247408d",
}


def reference_file(name: str) -> Path:
    """`name` in the reference-parity folder, checked against its SHA-256; skips when the folder is absent."""
    path = REFERENCE / name
    if not REFERENCE.is_dir():
        pytest.skip(f"reference parity vectors not found at {REFERENCE} (the spec's shared folder beside "
                    f"the checkout)")
    if not path.is_file():
        pytest.fail(f"{path} is missing from the reference parity folder {REFERENCE}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != REFERENCE_SHA256[name]:
        pytest.fail(f"{path} has SHA-256 {digest}, not the reference's {REFERENCE_SHA256[name]}")
    return path


@pytest.fixture(scope="session")
def reference_state_dict():
    return {k: torch.from_numpy(v) for k, v in np.load(reference_file("state_dict.npz")).items()}


@pytest.fixture(scope="session")
def parity_input():
    return torch.from_numpy(np.load(reference_file("input.npy")))


@pytest.fixture(scope="session")
def sampled_outputs():
    return dict(np.load(PARITY / "sampled_outputs.npz"))
