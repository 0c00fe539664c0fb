"""Physical-space helpers of the data side: field-of-view boxes, the body mask, and keeping labels on the grid.

Resampling onto the model grid itself is the engine's (`model_grid`, `resample_to_grid` of
`VeloxSegSlicerLib.engine`), so that training sees exactly what inference will.
"""

from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

BODY_HU = -500.0  # above this is tissue; the lungs, below it, come back by filling holes per slice


def physical_box(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (lo, hi) of the image's voxel-corner extent, LPS mm."""
    size = image.GetSize()
    corners = [image.TransformContinuousIndexToPhysicalPoint([c - 0.5 for c in corner])
               for corner in itertools.product(*[(0, n) for n in size])]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def foreground_box(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray] | None:
    """Axis-aligned physical box of the voxel centres where `image` is non-zero, or None."""
    array = sitk.GetArrayViewFromImage(image)
    if not array.any():
        return None
    ranges = []
    for axis in (2, 1, 0):  # x, y, z
        hits = np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))
        ranges.append((int(hits[0]), int(hits[-1])))
    corners = [image.TransformIndexToPhysicalPoint(corner) for corner in itertools.product(*ranges)]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def grid_covering(grid, box: Tuple[np.ndarray, np.ndarray]):
    """The engine grid grown (on its own lattice) until it holds the physical box, e.g. all lesion voxels."""
    from VeloxSegSlicerLib.engine import Grid

    origin, spacing, size = (np.asarray(v, float) for v in (grid.origin, grid.spacing, grid.size))
    end = origin + (size - 1) * spacing
    before = np.ceil(np.maximum(origin - box[0], 0.0) / spacing - 1e-6)
    after = np.ceil(np.maximum(box[1] - end, 0.0) / spacing - 1e-6)
    if not (before.any() or after.any()):
        return grid
    return Grid(tuple(float(v) for v in origin - before * spacing), grid.spacing,
                tuple(int(v) for v in size + before + after))


def body_mask(ct_hu: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """The patient on a (z, y, x) CT array: tissue above -500 HU, holes filled per slice (the lungs).

    Components smaller than `min_fraction` of the largest (noise, stray voxels) are dropped; the rest
    stays, arms and the couch included.
    """
    tissue = ct_hu > BODY_HU
    labels, count = ndimage.label(tissue)
    if count == 0:
        return tissue
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    body = keep[labels]
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    return body
