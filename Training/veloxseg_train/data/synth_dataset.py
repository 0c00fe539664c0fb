"""Write a folder of synthetic phantoms (DIR/case_XXXX/{ct,pet,label,organs}.nii.gz) and its manifest.

Case i depends only on (seed, i): its own seed comes from `numpy.random.SeedSequence([seed, i])` and it
is lesion-free when it falls on the evenly spread lesion-free pattern, so adding cases, or changing the
number of workers, never changes existing ones. The manifest is written last: a folder without one is
incomplete and `prepare` refuses it.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .organs import ORGAN_NAMES
from .sources import SYNTHETIC_FORMAT, SYNTHETIC_MANIFEST
from .synthetic import PhantomConfig, generate_case


def case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def is_lesion_free(index: int, fraction: float) -> bool:
    """Exactly `fraction` of any run of cases, evenly spread (case 6, 13, 19, ... for 0.15)."""
    return int(np.floor((index + 1) * fraction)) > int(np.floor(index * fraction))


def case_name(index: int) -> str:
    return f"case_{index:04d}"


def write_case(out_dir: Path, index: int, seed: int, config: PhantomConfig) -> dict:
    """Generate and write case `index`; returns its manifest entry."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # parallelism comes from the worker processes
    name = case_name(index)
    child_seed = case_seed(seed, index)
    case = generate_case(child_seed, lesion_free=is_lesion_free(index, config.lesion_free_fraction),
                         config=config)
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    for image, file in ((case.ct, "ct.nii.gz"), (case.pet, "pet.nii.gz"), (case.label, "label.nii.gz"),
                        (case.organs, "organs.nii.gz")):
        sitk.WriteImage(image, str(folder / file), True)
    return {"name": name, "folder": name, "seed": child_seed, "lesion_free": case.info["lesion_free"],
            "lesion_count": case.info["lesion_count"], "lesion_voxels": case.info["lesion_voxels"],
            "info": case.info, "lesions": case.lesions}


def _write_case_star(args) -> dict:
    return write_case(*args)


def generate_dataset(out_dir: Path, count: int, seed: int, workers: int = 1,
                     config: Optional[PhantomConfig] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write `count` phantoms and the manifest; `progress(done, count)` after each case. Returns the manifest."""
    config = config or PhantomConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, i, seed, config) for i in range(count)]
    entries = []
    start = time.time()
    if workers > 1 and count > 1:
        with multiprocessing.Pool(min(workers, count)) as pool:
            for entry in pool.imap_unordered(_write_case_star, jobs):
                entries.append(entry)
                if progress:
                    progress(len(entries), count)
    else:
        for job in jobs:
            entries.append(_write_case_star(job))
            if progress:
                progress(len(entries), count)
    entries.sort(key=lambda e: e["name"])
    manifest = {
        "format": SYNTHETIC_FORMAT,
        "generator": "veloxseg-train synth",
        "seed": int(seed),
        "count": int(count),
        "lesion_free_cases": sum(e["lesion_free"] for e in entries),
        "seconds": round(time.time() - start, 1),
        "config": asdict(config),
        "files": {"ct": "ct.nii.gz (int16 HU, own grid)", "pet": "pet.nii.gz (float32 SUVbw)",
                  "label": "label.nii.gz (uint8 0/1 on the PET grid)",
                  "organs": "organs.nii.gz (uint8 organ codes on the PET grid, see organ_names)"},
        "organ_names": list(ORGAN_NAMES),
        "cases": entries,
    }
    (out_dir / SYNTHETIC_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
