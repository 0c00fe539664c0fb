"""A fingerprint of a prepared data set: SHA-256 of every case's arrays and of the data set's constants.

A training run resumed on another machine must see exactly the volumes it was trained on. The data are
regenerated there from seeds (phantoms, inserted lesions, splits), so the run keeps the fingerprint of its
data next to its state; `scripts/train_bundled.sh` compares the regenerated data with it before resuming,
and refuses to resume on different data (a changed generator, other IBSI files) instead of silently
training on something else.

    python -m veloxseg_train.data.fingerprint PREP --write FILE   # record
    python -m veloxseg_train.data.fingerprint PREP --check FILE   # exit 1 (listing differences) on mismatch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np

from .prepared import load_dataset


def dataset_fingerprint(root: Path) -> Dict[str, object]:
    """{"normalization": ..., "spacing_xyz_mm": ..., "cases": {name: [split, sha256]}} of a prepared data set."""
    root = Path(root)
    dataset = load_dataset(root)
    cases = {}
    for record in dataset["cases"]:
        digest = hashlib.sha256()
        with np.load(root / record["file"]) as arrays:
            for key in ("ct", "pet", "label", "spacing", "origin"):
                if key in arrays.files:
                    value = np.ascontiguousarray(arrays[key])
                    digest.update(key.encode() + str(value.dtype).encode() + str(value.shape).encode())
                    digest.update(value.tobytes())
        cases[record["name"]] = [record["split"], digest.hexdigest()]
    return {"normalization": dataset["normalization"], "spacing_xyz_mm": dataset["spacing_xyz_mm"], "cases": cases}


def differences(expected: Dict[str, object], actual: Dict[str, object], limit: int = 5) -> list:
    """Human-readable differences between two fingerprints (empty when they match)."""
    found = []
    for key in ("normalization", "spacing_xyz_mm"):
        if expected.get(key) != actual.get(key):
            found.append(f"{key} differs")
    want, have = expected.get("cases", {}), actual.get("cases", {})
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    changed = sorted(n for n in set(want) & set(have) if want[n] != have[n])
    for label, names in (("missing", missing), ("not in the run's data", extra), ("different", changed)):
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            found.append(f"{len(names)} case(s) {label}: {shown}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prep", type=Path, help="prepared data set folder (dataset.json)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="FILE")
    group.add_argument("--check", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    actual = dataset_fingerprint(args.prep)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(actual, indent=1, sort_keys=True))
        print(f"wrote the fingerprint of {len(actual['cases'])} cases to {args.write}")
        return 0
    found = differences(json.loads(args.check.read_text()), actual)
    if found:
        print(f"error: {args.prep} is not the data the run was trained on ({args.check}): " + "; ".join(found),
              file=sys.stderr)
        return 1
    print(f"{args.prep} matches {args.check} ({len(actual['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
