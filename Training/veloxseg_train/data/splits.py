"""Train / val / test assignment: held-out cases from every source, deterministic by seed.

Cases are grouped by (source, lesion-free or not) so each source holds out both kinds; each group is
shuffled with its own seed and cut: round(test_fraction * n) test, round(val_fraction * n) val, the rest
train (at least one train case per group).
"""

from __future__ import annotations

import zlib
from typing import Dict, Iterable, List, Tuple

import numpy as np


def assign_splits(cases: Iterable[Tuple[str, str, bool]], val_fraction: float, test_fraction: float,
                  seed: int) -> Dict[str, str]:
    """(name, source, lesion_free) triples -> {name: "train" | "val" | "test"}."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be >= 0 and sum to less than 1")
    groups: Dict[Tuple[str, bool], List[str]] = {}
    for name, source, lesion_free in cases:
        groups.setdefault((source, bool(lesion_free)), []).append(name)
    splits: Dict[str, str] = {}
    for (source, lesion_free), names in sorted(groups.items()):
        names = sorted(names)
        group_seed = zlib.crc32(f"{source}:{lesion_free}".encode())
        order = np.random.default_rng([int(seed), group_seed]).permutation(len(names))
        n = len(names)
        n_test = int(round(test_fraction * n))
        n_val = int(round(val_fraction * n))
        while n_test + n_val > n - 1 and n_test + n_val > 0:  # keep one for training
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        for rank, index in enumerate(order):
            splits[names[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return splits
