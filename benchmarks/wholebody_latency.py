"""Whole-body latency and memory of the engine vs a plain sliding window with the eager PyTorch model.

Builds a synthetic AutoPET-size study (PET 400x400x326 at 2.036x2.036x3 mm, CT 512x512x326 at
0.977x0.977x3 mm: a body with head, neck and torso, lungs, a CT couch, brain/bladder/lesion hot spots, air
outside), then measures, each in a fresh subprocess so peak memory (VmHWM) is per measurement, with one
thread:
  (a) the engine end to end: segment_study on the images (and, separately, with reading the files, loading
      the model and writing the label, as `veloxseg segment` does), with the model of --model;
  (b) "plain": the CT resampled onto the PET grid, then a sliding window over the whole PET grid (no body
      crop, overlap 0.25, uniform blending of logits, as the reference), with the eager PyTorch model from
      veloxseg_train.model (skipped, saying so, when torch or the model is not importable).
Prints seconds, the ratio and peak RSS against the issue-4 targets: (a) <= 15 s, (b)/(a) >= 4x, <= 1.5 GB.

    python benchmarks/wholebody_latency.py [--model MANIFEST] [--skip-plain] [--plain-patches N]

--plain-patches N times only the first N windows of (b) and extrapolates (marked as such in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "VeloxSegSlicer"))
sys.path.insert(0, str(ROOT / "Training"))

PET_SIZE, PET_SPACING = (400, 400, 326), (2.036, 2.036, 3.0)
CT_SIZE, CT_SPACING = (512, 512, 326), (0.9765625, 0.9765625, 3.0)
TARGET_SECONDS, TARGET_RATIO, TARGET_GB = 15.0, 4.0, 1.5


def peak_rss_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0**2
    return float("nan")


# --- the synthetic study -------------------------------------------------------------------------------


def _grid_points(size, spacing, origin):
    import numpy as np

    return [origin[i] + np.arange(size[i]) * spacing[i] for i in range(3)]


def _body_slice(x, y, z_mm, length_mm):
    """Boolean (y, x) cross-section of the body at height z_mm (0 = feet end of the field of view)."""
    import numpy as np

    fraction = z_mm / length_mm
    if fraction > 0.88:  # head
        ax, ay, cy = 75.0, 90.0, 0.0
    elif fraction > 0.82:  # neck
        ax, ay, cy = 55.0, 55.0, 0.0
    else:  # torso and pelvis
        ax, ay, cy = 175.0, 115.0, 0.0
    xx, yy = np.meshgrid(x, y)
    return (xx / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0


HOT_SPOTS = [  # (x, y, z from the feet end) mm, radius mm, SUV
    ((0.0, -10.0, 900.0), 60.0, 8.0),  # brain
    ((0.0, 30.0, 120.0), 35.0, 25.0),  # bladder
    ((60.0, 0.0, 600.0), 12.0, 9.0),  # lesions
    ((-80.0, 20.0, 520.0), 8.0, 6.0),
    ((100.0, -40.0, 300.0), 15.0, 12.0),
    ((-30.0, 60.0, 420.0), 6.0, 5.0),
]


def kept_study(keep, prefix: str):
    """(folder, CT, PET SUV) of the synthetic study in `keep` (built there first if it holds none; a temporary
    folder when `keep` is None), read by the engine: the study the side-by-side cost benchmarks share."""
    import tempfile

    from VeloxSegSlicerLib.engine import read_image, read_pet_suv

    folder = Path(keep or tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ct.nii").is_file() and (folder / "pet.nii").is_file():
        ct_path, pet_path = folder / "ct.nii", folder / "pet.nii"
    else:
        ct_path, pet_path = build_study(folder)
    return folder, read_image(ct_path, "CT"), read_pet_suv(pet_path)


def build_study(folder: Path) -> tuple:
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    length = PET_SIZE[2] * PET_SPACING[2]
    centre = np.zeros(3)
    pet_origin = centre - (np.asarray(PET_SIZE) - 1) * np.asarray(PET_SPACING) / 2
    ct_origin = centre - (np.asarray(CT_SIZE) - 1) * np.asarray(CT_SPACING) / 2
    rng = np.random.default_rng(0)
    images = {}
    for name, size, spacing, origin in (
        ("pet", PET_SIZE, PET_SPACING, pet_origin),
        ("ct", CT_SIZE, CT_SPACING, ct_origin),
    ):
        x, y, z = _grid_points(size, spacing, origin)
        dtype = np.float32 if name == "pet" else np.int16
        volume = np.empty((size[2], size[1], size[0]), dtype=dtype)
        xx, yy = np.meshgrid(x, y)
        for k, z_mm in enumerate(z - z[0]):
            body = _body_slice(x, y, z_mm, length)
            lungs = (0.55 < z_mm / length < 0.78) & ((np.abs(xx) - 70) ** 2 / 55**2 + yy**2 / 80**2 <= 1)
            if name == "pet":
                plane = np.where(body, 1.0 + 0.15 * rng.standard_normal(body.shape, dtype=np.float32), 0.0)
                plane[body & lungs] = 0.4
                plane = np.maximum(plane, 0.0)
            else:
                plane = np.where(body, 40.0, -1000.0) + 15.0 * rng.standard_normal(body.shape, dtype=np.float32)
                plane[body & lungs] = -820.0
                plane[(yy > 130) & (yy < 150) & (np.abs(xx) < 225)] = 250.0  # the couch
            for (cx, cy, cz), radius, suv in HOT_SPOTS:
                distance_sq = (xx - cx) ** 2 + (yy - cy) ** 2 + (z_mm - cz) ** 2
                inside = distance_sq <= radius**2
                if name == "pet":
                    plane[inside] = suv
            volume[k] = plane
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing(spacing)
        image.SetOrigin(tuple(float(o) for o in origin))
        path = folder / f"{name}.nii"  # uncompressed: the I/O measured is the engine's, not gzip's
        sitk.WriteImage(image, str(path))
        images[name] = path
        del volume, image
    return images["ct"], images["pet"]


# --- workers (each in its own process) -----------------------------------------------------------------


def worker_engine(args) -> dict:
    import SimpleITK as sitk  # noqa: N813

    from VeloxSegSlicerLib.engine import load_model, read_image, read_pet_suv, segment_study

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    started = time.perf_counter()
    ct, pet = read_image(args.ct, "CT"), read_pet_suv(args.pet)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    model = load_model(args.model, threads=1)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    result = segment_study(ct, pet, model)
    segment_s = time.perf_counter() - started
    started = time.perf_counter()
    sitk.WriteImage(result.label_ct, str(Path(args.out) / "label_ct.nii.gz"), True)
    write_s = time.perf_counter() - started
    return {
        "segment_s": segment_s,
        "read_s": read_s,
        "load_model_s": load_s,
        "write_s": write_s,
        "stages_s": result.seconds,
        "patches": result.windows_run,
        "model_grid": list(result.model_grid.size),
        "lesions": result.totals.lesion_count,
        "peak_rss_gb": peak_rss_gb(),
    }


def _eager_model():
    import torch

    from veloxseg_train.model import VeloxSeg

    torch.manual_seed(0)
    return VeloxSeg().eval()


def worker_plain(args) -> dict:
    import numpy as np
    import SimpleITK as sitk  # noqa: N813
    import torch

    from VeloxSegSlicerLib.engine.inference.manifest import load_manifest
    from VeloxSegSlicerLib.engine.inference.preprocess import normalize
    from VeloxSegSlicerLib.engine.inference.sliding_window import plan_windows

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    manifest = load_manifest(args.model)
    network = _eager_model()
    started = time.perf_counter()
    ct, pet = sitk.ReadImage(str(args.ct)), sitk.ReadImage(str(args.pet), sitk.sitkFloat32)
    read_s = time.perf_counter() - started

    started = time.perf_counter()
    ct_on_pet = sitk.Resample(ct, pet, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    image = np.stack(
        [
            normalize(sitk.GetArrayViewFromImage(ct_on_pet), manifest.normalization["CT"]),
            normalize(sitk.GetArrayViewFromImage(pet), manifest.normalization["PET"]),
        ]
    )
    del ct_on_pet
    patch = manifest.patch_size_zyx
    windows = plan_windows(image.shape[1:], patch, 0.25)
    timed = windows if args.plain_patches <= 0 else windows[: args.plain_patches]
    logits = np.zeros((2, *image.shape[1:]), dtype=np.float32)  # MONAI keeps every class's logits
    count = np.zeros(image.shape[1:], dtype=np.float32)
    prepare_s = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        for z, y, x in timed:
            region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            batch = torch.from_numpy(np.ascontiguousarray(image[(slice(None), *region)])[None])
            out = network(batch)
            logits[(slice(None), *region)] += out[0].numpy()
            count[region] += 1.0
    window_s = time.perf_counter() - started
    extrapolated = len(timed) < len(windows)
    if extrapolated:
        window_s *= len(windows) / len(timed)
    started = time.perf_counter()
    label = np.argmax(logits / np.maximum(count, 1.0), axis=0).astype(np.uint8)
    argmax_s = time.perf_counter() - started
    return {
        "segment_s": prepare_s + window_s + argmax_s,
        "read_s": read_s,
        "window_s": window_s,
        "patches": len(windows),
        "timed_patches": len(timed),
        "extrapolated": extrapolated,
        "lesion_voxels": int(label.sum()),
        "peak_rss_gb": peak_rss_gb(),
    }


def run_worker(kind: str, ct: Path, pet: Path, model, out: Path, plain_patches: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--ct", str(ct), "--pet", str(pet), "--out", str(out)]
    command += ["--plain-patches", str(plain_patches)]
    if model:
        command += ["--model", str(model)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{kind} worker failed:\n{process.stderr[-3000:]}")


def plain_available() -> str:
    """'' if the eager baseline can run, else why not."""
    try:
        _eager_model()
    except Exception as exc:  # torch or the model package missing or broken
        return f"{type(exc).__name__}: {exc}"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model manifest (default: the bundled model)")
    parser.add_argument("--skip-plain", action="store_true", help="measure only the engine")
    parser.add_argument("--plain-patches", type=int, default=0, help="time only N plain windows, extrapolate")
    parser.add_argument("--keep", help="folder for the synthetic study (reused if it holds one)")
    parser.add_argument("--worker", choices=("engine", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--ct", help=argparse.SUPPRESS)
    parser.add_argument("--pet", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker_engine(args) if args.worker == "engine" else worker_plain(args)
        print("RESULT " + json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="veloxseg-bench-") as scratch:
        folder = Path(args.keep) if args.keep else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        ct, pet = folder / "ct.nii", folder / "pet.nii"
        if not (ct.is_file() and pet.is_file()):
            started = time.perf_counter()
            ct, pet = build_study(folder)
            print(f"built the synthetic study in {time.perf_counter() - started:.0f} s ({folder})")
        print(
            f"study: PET {'x'.join(map(str, PET_SIZE))} at {'x'.join(map(str, PET_SPACING))} mm, "
            f"CT {'x'.join(map(str, CT_SIZE))} at {CT_SPACING[0]:.3f}x{CT_SPACING[1]:.3f}x{CT_SPACING[2]} mm; "
            "1 thread everywhere"
        )
        engine = run_worker("engine", ct, pet, args.model, Path(scratch), args.plain_patches)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in engine["stages_s"].items())
        with_io = engine["segment_s"] + engine["read_s"] + engine["load_model_s"] + engine["write_s"]
        print(
            f"(a) engine: segment_study {engine['segment_s']:.1f} s ({stages}; {engine['patches']} patches on a "
            f"{'x'.join(map(str, engine['model_grid']))} model grid); with reading {engine['read_s']:.1f} s, "
            f"model load {engine['load_model_s']:.1f} s, writing {engine['write_s']:.1f} s: {with_io:.1f} s; "
            f"peak RSS {engine['peak_rss_gb']:.2f} GB"
        )
        checks = [
            ("end to end <= 15 s", engine["segment_s"] <= TARGET_SECONDS),
            ("peak RSS <= 1.5 GB", engine["peak_rss_gb"] <= TARGET_GB),
        ]
        why_not = "skipped by --skip-plain" if args.skip_plain else plain_available()
        if why_not:
            print(f"(b) plain eager baseline not run: {why_not}")
        else:
            plain = run_worker("plain", ct, pet, args.model, Path(scratch), args.plain_patches)
            note = (
                f" (extrapolated from {plain['timed_patches']} of {plain['patches']} windows)"
                if plain["extrapolated"]
                else ""
            )
            print(
                f"(b) plain eager sliding window over the PET grid: {plain['segment_s']:.1f} s, "
                f"{plain['patches']} patches{note}; peak RSS {plain['peak_rss_gb']:.2f} GB"
            )
            ratio = plain["segment_s"] / engine["segment_s"]
            print(f"ratio plain / engine: {ratio:.1f}x")
            checks.append(("plain / engine >= 4x", ratio >= TARGET_RATIO))
        for name, ok in checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
