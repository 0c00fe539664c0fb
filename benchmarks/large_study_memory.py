"""Peak memory of `veloxseg segment` on a large whole-body study: CT 512x512x1500, PET 400x400x600.

Builds the study in a temporary folder (uncompressed NIfTI, so the I/O measured is the engine's own: CT
int16 at 0.977 x 0.977 x 1.0 mm, PET float32 SUV at 1.65 x 1.65 x 2.5 mm, a body with lungs, bone and hot
spots in air), runs `veloxseg segment` on it in a child process with one thread, and prints the child's peak
resident memory (getrusage of the children, i.e. VmHWM of the run) against the issue-13 limit of 2 GB,
plus the run's own output (lesions, timings).

    python benchmarks/large_study_memory.py [--keep DIR] [--model MANIFEST]

It takes a few minutes on a 2-core machine (building the study is about half of it) and ~1.6 GB of disk.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

ROOT = Path(__file__).resolve().parents[1]
CT_SIZE, CT_SPACING = (512, 512, 1500), (0.9765625, 0.9765625, 1.0)
PET_SIZE, PET_SPACING = (400, 400, 600), (1.65, 1.65, 2.5)
LIMIT_GB = 2.0
HOT_SPOTS = [  # (x, y, z) mm from the centre of the field of view, radius mm, SUV
    ((0.0, -10.0, 650.0), 60.0, 8.0),  # brain
    ((0.0, 30.0, -550.0), 35.0, 25.0),  # bladder
    ((60.0, 0.0, 100.0), 12.0, 9.0),  # lesions
    ((-80.0, 20.0, 0.0), 8.0, 6.0),
    ((100.0, -40.0, -300.0), 15.0, 12.0),
]


def build(name: str, size, spacing, folder: Path) -> Path:
    """One volume, slice by slice (the builder itself stays small): body ellipse, lungs, spine, hot spots."""
    origin = -(np.asarray(size) - 1) * np.asarray(spacing) / 2
    x = origin[0] + np.arange(size[0]) * spacing[0]
    y = origin[1] + np.arange(size[1]) * spacing[1]
    xx, yy = np.meshgrid(x, y)
    rng = np.random.default_rng(0)
    pet = name == "pet"
    volume = np.empty((size[2], size[1], size[0]), dtype=np.float32 if pet else np.int16)
    length = size[2] * spacing[2]
    for k in range(size[2]):
        z = origin[2] + k * spacing[2]
        head = z > 0.38 * length
        ax, ay = (75.0, 90.0) if head else (175.0, 115.0)
        body = (xx / ax) ** 2 + (yy / ay) ** 2 <= 1.0
        lungs = (0.05 * length < z < 0.3 * length) & ((np.abs(xx) - 70) ** 2 / 55**2 + yy**2 / 80**2 <= 1)
        spine = (xx**2 + (yy - 0.6 * ay) ** 2) <= 12.0**2
        if pet:
            plane = np.where(body, 1.0 + 0.15 * rng.standard_normal(body.shape, dtype=np.float32), 0.0)
            plane[body & lungs] = 0.4
            for (cx, cy, cz), radius, suv in HOT_SPOTS:
                plane[(xx - cx) ** 2 + (yy - cy) ** 2 + (z - cz) ** 2 <= radius**2] = suv
            volume[k] = np.maximum(plane, 0.0)
        else:
            plane = np.where(body, 40.0, -1000.0) + 15.0 * rng.standard_normal(body.shape, dtype=np.float32)
            plane[body & lungs] = -820.0
            plane[body & spine] = 700.0
            volume[k] = plane
    image = sitk.GetImageFromArray(volume)
    del volume
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(float(o) for o in origin))
    path = folder / f"{name}.nii"
    sitk.WriteImage(image, str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="folder for the study (reused when it holds one)")
    parser.add_argument("--model", help="model manifest (default: the bundled model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="veloxseg-memory-") as scratch:
        folder = Path(args.keep) if args.keep else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        ct, pet = folder / "ct.nii", folder / "pet.nii"
        if not (ct.is_file() and pet.is_file()):
            started = time.perf_counter()
            ct = build("ct", CT_SIZE, CT_SPACING, folder)
            pet = build("pet", PET_SIZE, PET_SPACING, folder)
            print(f"built the study in {time.perf_counter() - started:.0f} s ({folder})", flush=True)
        command = [sys.executable, "-m", "VeloxSegSlicerLib.engine", "segment", "--ct", str(ct), "--pet",
                   str(pet), "--out", str(Path(scratch) / "lesions.nii.gz"), "--threads", "1"]
        if args.model:
            command += ["--model", args.model]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "VeloxSegSlicer"), OMP_NUM_THREADS="1",
                   ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
        print(f"CT {'x'.join(map(str, CT_SIZE))} int16 ({np.prod(CT_SIZE) * 2 / 1e9:.2f} GB), PET "
              f"{'x'.join(map(str, PET_SIZE))} float32 ({np.prod(PET_SIZE) * 4 / 1e9:.2f} GB); running:", flush=True)
        print("  " + " ".join(command), flush=True)
        started = time.perf_counter()
        process = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB
        print(process.stdout.strip())
        errors = [line for line in process.stderr.splitlines() if "%" not in line]
        if errors:
            print("\n".join(errors))
        print(f"exit code {process.returncode}, {seconds:.0f} s, peak RSS {peak_gb:.2f} GB "
              f"({'within' if peak_gb <= LIMIT_GB else 'OVER'} the {LIMIT_GB:.0f} GB limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
