"""Model-grid preparation: body crop, resampling of CT and PET in physical space, normalisation.

The model grid has the manifest spacing and the identity direction (axes along LPS x, y, z), whatever the
orientation of the inputs: the network always sees patients the same way up. It covers only the body
(the crop is chosen before resampling, so no work is spent on air), intersected with the region both
scans cover, and is at least one patch wide on every axis (extra context is taken from the images;
outside them CT is air and PET is zero, i.e. constant padding). The body box is measured in physical
space, so a study stored on oblique grids gets the same model grid as the same study stored axis-aligned
(the network's output depends on the field of view it sees). Its origin sits on the PET voxel lattice
when the PET is axis-aligned, so a PET already at the model spacing is not interpolated at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from ..errors import InputError
from ..inputs.checks import check_overlap

CT_AIR_HU = -1000.0  # CT value outside the CT field of view
PET_OUTSIDE = 0.0  # PET value outside the PET field of view
CT_BODY_HU = -500.0  # above this a CT voxel is tissue, not air (lungs are ~-800 but enclosed by tissue)
PET_BODY_SUV = 0.1  # every tissue has an SUV above this; air after attenuation correction is ~0
BODY_MARGIN_MM = 10.0
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid; origin/spacing/size in ITK (x, y, z) order, LPS millimetres."""

    origin: tuple
    spacing: tuple
    size: tuple

    @property
    def shape_zyx(self) -> tuple:
        return tuple(reversed(self.size))


@dataclass(frozen=True)
class ModelGridImages:
    ct: sitk.Image  # float32 HU on the model grid
    pet: sitk.Image  # float32 SUV on the model grid
    grid: Grid


def normalize(array: np.ndarray, params: dict) -> np.ndarray:
    """(clip(x, clip_low, clip_high) - mean) / std as a new float32 array.

    The one implementation shared by training and inference; constants come from the manifest.
    """
    return normalize_in_place(np.array(array, dtype=np.float32, copy=True), params)


def normalize_in_place(array: np.ndarray, params: dict) -> np.ndarray:
    """normalize() writing into a float32 array the caller owns (saves a volume-sized copy)."""
    np.clip(array, params["clip_low"], params["clip_high"], out=array)
    array -= np.float32(params["mean"])
    array /= np.float32(max(float(params["std"]), 1e-8))
    return array


def _index_box_to_physical(image: sitk.Image, lo, hi) -> tuple:
    """Axis-aligned physical bounds of the voxel centres of an index box (x, y, z order, inclusive)."""
    corners = [
        image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
        for x in (lo[0], hi[0])
        for y in (lo[1], hi[1])
        for z in (lo[2], hi[2])
    ]
    points = np.array(corners)
    return points.min(axis=0), points.max(axis=0)


def field_of_view(image: sitk.Image) -> tuple:
    return _index_box_to_physical(image, (0, 0, 0), [s - 1 for s in image.GetSize()])


def body_index_box(image: sitk.Image, threshold: float, slab: int = 16):
    """Index bounds (x, y, z, inclusive) of voxels above threshold, or None. Works slab by slab so no
    whole-volume boolean mask is built."""
    array = sitk.GetArrayViewFromImage(image)
    any_z = np.zeros(array.shape[0], dtype=bool)
    any_y = np.zeros(array.shape[1], dtype=bool)
    any_x = np.zeros(array.shape[2], dtype=bool)
    for start in range(0, array.shape[0], slab):
        above = array[start : start + slab] > threshold
        any_z[start : start + slab] = above.any(axis=(1, 2))
        any_y |= above.any(axis=(0, 2))
        any_x |= above.any(axis=(0, 1))
    if not any_z.any():
        return None
    bounds = [np.flatnonzero(a) for a in (any_x, any_y, any_z)]
    return [int(b[0]) for b in bounds], [int(b[-1]) for b in bounds]


def is_axis_aligned(image: sitk.Image) -> bool:
    """True when every image axis runs along a physical axis (identity, flips, axis permutations)."""
    direction = np.abs(np.reshape(image.GetDirection(), (3, 3)))
    return bool(np.all(np.isclose(direction, 0.0, atol=1e-6) | np.isclose(direction, 1.0, atol=1e-6)))


def body_physical_box(image: sitk.Image, threshold: float, slab: int = 16):
    """Physical (x, y, z) bounds of the voxel centres above threshold, or None.

    On an axis-aligned grid that is the box of the index bounds. On an oblique grid the box of the index
    bounds is larger than the body (its corners lie in the air around it, up to ~40 % wider at 45 degrees),
    and a model grid cut to it would show the network a different field of view than the same study stored
    axis-aligned. So there the exact box is taken: along each image row the physical extremes of the
    voxels above threshold are the first and the last of them (any linear coordinate is monotone along a
    line), so the box of those end points, row by row, is exact at the cost of two argmax passes.
    """
    if is_axis_aligned(image):
        index_box = body_index_box(image, threshold, slab)
        return None if index_box is None else _index_box_to_physical(image, *index_box)
    array = sitk.GetArrayViewFromImage(image)
    width = array.shape[2]
    to_physical = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    low = np.full(3, np.inf)
    high = np.full(3, -np.inf)
    for start in range(0, array.shape[0], slab):
        above = array[start : start + slab] > threshold
        rows = above.any(axis=2)
        if not rows.any():
            continue
        z, y = np.nonzero(rows)
        first = np.argmax(above, axis=2)[z, y]
        last = width - 1 - np.argmax(above[:, :, ::-1], axis=2)[z, y]
        for x in (first, last):
            index = np.stack([x, y, z + start], axis=1).astype(np.float64)
            points = origin + index @ to_physical.T
            low = np.minimum(low, points.min(axis=0))
            high = np.maximum(high, points.max(axis=0))
    if not np.all(np.isfinite(low)):
        return None
    return low, high


def _intersect(a, b):
    return np.maximum(a[0], b[0]), np.minimum(a[1], b[1])


def _is_empty(box) -> bool:
    return bool(np.any(box[0] > box[1]))


def model_grid(ct: sitk.Image, pet: sitk.Image, spacing_xyz, patch_size_zyx, crop_to_body: bool = True) -> Grid:
    """The model grid for a study: body bounding box within the CT/PET overlap, plus a margin."""
    ct_fov, pet_fov = field_of_view(ct), field_of_view(pet)
    check_overlap(ct_fov, pet_fov)  # the one overlap rule, as the Slicer module and training apply it
    region = _intersect(ct_fov, pet_fov)
    if crop_to_body:
        boxes = []
        for image, threshold in ((ct, CT_BODY_HU), (pet, PET_BODY_SUV)):
            box = body_physical_box(image, threshold)
            if box is not None:
                boxes.append(box)
        if boxes:
            body = boxes[0] if len(boxes) == 1 else _intersect(boxes[0], boxes[1])
            if not _is_empty(body):
                body = (body[0] - BODY_MARGIN_MM, body[1] + BODY_MARGIN_MM)
                cropped = _intersect(region, body)
                if not _is_empty(cropped):
                    region = cropped

    spacing = np.asarray(spacing_xyz, dtype=float)
    lo, hi = region
    origin = lo.copy()
    if is_axis_aligned(pet):  # a PET voxel centre (its origin) is then on the model lattice too
        anchor = np.asarray(pet.GetOrigin())
        origin = anchor + np.floor((lo - anchor) / spacing + 1e-6) * spacing
    size = np.ceil((hi - origin) / spacing - 1e-6).astype(int) + 1
    patch_xyz = np.asarray(list(reversed(patch_size_zyx)))
    short = np.maximum(patch_xyz - size, 0)
    origin = origin - (short // 2) * spacing  # centre the crop in a patch-sized grid
    size = np.maximum(size, patch_xyz)
    return Grid(tuple(float(o) for o in origin), tuple(float(s) for s in spacing), tuple(int(s) for s in size))


def resample_to_grid(
    image: sitk.Image,
    grid: Grid,
    default_value: float,
    threads: int = 1,
    interpolator=sitk.sitkLinear,
    pixel_type=sitk.sitkFloat32,
) -> sitk.Image:
    """Resample in physical space onto a grid (identity transform, honours the input's direction).

    The output type is set on the filter so an int16 CT is interpolated straight into float32 without a
    float copy of the input.
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputSpacing(grid.spacing)
    resampler.SetOutputDirection(IDENTITY)
    resampler.SetSize([int(s) for s in grid.size])
    resampler.SetTransform(sitk.Transform())
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(pixel_type)
    if threads > 0:
        resampler.SetNumberOfThreads(threads)
    return resampler.Execute(image)


def resample_to_model_grid(
    ct: sitk.Image,
    pet: sitk.Image,
    spacing_xyz,
    patch_size_zyx=(96, 96, 96),
    threads: int = 1,
    crop_to_body: bool = True,
) -> ModelGridImages:
    """CT (HU) and PET (SUV) resampled (linear) onto the model grid of model_grid(), as float32."""
    grid = model_grid(ct, pet, spacing_xyz, patch_size_zyx, crop_to_body)
    voxels = math.prod(grid.size)
    if voxels > 400_000_000:
        raise InputError(
            f"The model grid would have {voxels} voxels ({list(grid.size)}); the CT/PET geometry looks wrong "
            "(check spacing and origin)."
        )
    return ModelGridImages(
        ct=resample_to_grid(ct, grid, CT_AIR_HU, threads),
        pet=resample_to_grid(pet, grid, PET_OUTSIDE, threads),
        grid=grid,
    )
