"""Test helpers: the engine tests' tiny threshold ONNX model (the shared one of Testing/helpers/onnx_models.py
with the engine tests' settings), and phantoms.

The model computes, voxel by voxel, lesion logit = PET_normalised - THRESHOLD (+ an optional ramp along z
that makes its output depend on the position inside the patch) and background logit = 0, so a voxel is
"lesion" exactly where the normalised PET exceeds THRESHOLD and the blended logit difference is exactly
PET - THRESHOLD (+ ramp). That makes geometry tests exact and fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "VeloxSegSlicer"))
sys.path.insert(0, str(ROOT / "Testing" / "helpers"))  # never Testing/ itself (see onnx_models)

import onnx_models  # noqa: E402

THRESHOLD = 4.0  # SUV; the test manifest normalises PET as clip(0, 30), mean 0, std 1
PATCH = 96
SPACING_XYZ_MM = (2.036, 2.036, 3.0)  # the bundled model's grid
MODEL_NAME = "VeloxSeg-test-threshold"

# build_threshold_onnx(path, ramp=False) -> path; write_manifest(onnx_path) -> <onnx_path stem>.json
build_threshold_onnx = functools.partial(
    onnx_models.build_threshold_onnx, suv_threshold=THRESHOLD, patch=PATCH, zero_background=True
)
write_manifest = functools.partial(
    onnx_models.write_manifest, spacing_xyz_mm=SPACING_XYZ_MM, patch=PATCH, model_name=MODEL_NAME
)


def make_image(array_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij"), axis=-1)[..., ::-1]
    direction = np.reshape(image.GetDirection(), (3, 3))
    return np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ direction.T


def phantom(
    spheres,
    size,
    spacing,
    origin,
    direction=None,
    kind="PET",
    body_radius_mm=90.0,
    body_centre=(0.0, 0.0),
    seed=0,
) -> sitk.Image:
    """A body cylinder along z with spheres ((centre LPS), radius mm, value) on a given grid.

    PET: air 0, body ~1.2 SUV with a little noise, spheres at their SUV. CT: air -1000, body 40 HU, a bone
    rod ("spine", 700 HU) along z behind the body centre, spheres at 60 HU (int16): a CT must hold air and
    bone to pass the engine's CT check.
    """
    blank = make_image(np.zeros(tuple(reversed(size)), dtype=np.float32), spacing, origin, direction)
    points = physical_points(blank)
    body = np.hypot(points[..., 0] - body_centre[0], points[..., 1] - body_centre[1]) <= body_radius_mm
    rng = np.random.default_rng(seed)
    if kind == "PET":
        values = np.where(body, 1.2 + 0.05 * rng.standard_normal(body.shape), 0.0).astype(np.float32)
    else:
        values = np.where(body, 40.0, -1000.0).astype(np.float32)
        spine_radius = min(8.0, 0.25 * body_radius_mm)
        spine = np.hypot(points[..., 0] - body_centre[0],
                         points[..., 1] - body_centre[1] - 0.6 * body_radius_mm) <= spine_radius
        values[spine] = 700.0
    for centre, radius, value in spheres:
        inside = np.linalg.norm(points - np.asarray(centre), axis=-1) <= radius
        values[inside] = value
    if kind == "CT":
        values = values.astype(np.int16)
    return make_image(values, spacing, origin, direction)


def rotation(axis, degrees) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def hot_voxel_pet(voxels, size, spacing, origin, seed=0) -> sitk.Image:
    """A PET phantom (body, no spheres) with single hot voxels {(x, y, z) index: SUV}."""
    array = sitk.GetArrayFromImage(phantom([], size, spacing, origin, kind="PET", seed=seed))
    for (x, y, z), suv in voxels.items():
        array[z, y, x] = suv
    return make_image(array, spacing, origin)


def poll_like_a_batch_worker(events, cancel) -> None:
    """A stand-in `veloxseg batch --workers` process (spawn target): set up as a worker, then poll the
    cancel flag and report stages as fast as it can until cancelled."""
    from VeloxSegSlicerLib.engine.cohort import batch_local

    batch_local.init_worker(events, cancel)
    while not batch_local.cancel_requested():
        events.put(("worker", "study", 0.5, "inference"))
