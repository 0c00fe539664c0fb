"""From the blended logit map on the model grid to lesion label maps on the PET and CT grids.

- Lesions are the connected components of (lesion logit > background logit) on the model grid, i.e.
  probability > 0.5, with full (26-)connectivity: voxels touching by a corner belong to the same lesion,
  so partial-volume diagonal bridges do not split one lesion in two. Ids are ordered by size, largest first.
- Each lesion is carried to a target grid by linearly interpolating its logit map (restricted to the
  lesion and a one-voxel rim, so neighbours cannot leak in) and thresholding at 0. This gives smooth
  boundaries on a finer CT grid, and exactly the model-grid mask on a PET grid that coincides with it.
- The minimum lesion volume applies to the volume on the PET grid (the reported MTV), and the minimum
  SUVmax to the lesion's hottest PET voxel: what the lesion table would report. A lesion that covers no PET
  voxel centre is dropped, as it has no SUV statistics. A kept lesion too small to cover any CT
  voxel centre is marked on one CT voxel: the one holding its most confident model voxel among those that
  lie inside the CT field of view and whose CT voxel no other lesion holds. So every reported lesion is on
  the CT label, except one that lies wholly outside the CT field of view: the model grid reaches beyond
  the CT where the PET goes further (context for the network), and a lesion found there has PET
  statistics but no CT voxel. (In theory also one whose every in-view CT voxel a larger lesion holds, on
  a CT with voxels over twice the model spacing.) label_maps returns those ids with the reason.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from ..errors import Cancelled
from .preprocess import Grid
from .sliding_window import NOT_COVERED

MAX_LESIONS = 65535  # uint16 label maps

# why a reported lesion has no voxel on the CT label (see the module docstring)
OUTSIDE_CT = "outside the CT field of view"
CT_VOXELS_TAKEN = "its CT voxels belong to larger lesions"


def model_grid_components(logit_diff: np.ndarray, threads: int = 1):
    """-> (labels uint32 (z, y, x), count) of the lesion mask, ids sorted by decreasing size."""
    mask = sitk.GetImageFromArray((logit_diff > 0).astype(np.uint8))
    labeller = sitk.ConnectedComponentImageFilter()
    labeller.SetFullyConnected(True)
    relabeller = sitk.RelabelComponentImageFilter()
    relabeller.SetSortByObjectSize(True)
    if threads > 0:
        labeller.SetNumberOfThreads(threads)
        relabeller.SetNumberOfThreads(threads)
    labels = relabeller.Execute(labeller.Execute(mask))
    count = min(relabeller.GetNumberOfObjects(), MAX_LESIONS)
    return sitk.GetArrayFromImage(labels), count


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-voxel dilation with the full 3x3x3 neighbourhood, done as three separable passes."""
    out = mask
    for axis in range(3):
        grown = out.copy()
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        grown[tuple(head)] |= out[tuple(tail)]
        grown[tuple(tail)] |= out[tuple(head)]
        out = grown
    return out


def _bounding_boxes(labels: np.ndarray, count: int) -> dict:
    """{id: (lo_zyx, hi_zyx exclusive)} in one pass over the label map."""
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.ComputePerimeterOff()
    shape_stats.Execute(sitk.GetImageFromArray(labels))
    boxes = {}
    for label in range(1, count + 1):
        x, y, z, sx, sy, sz = shape_stats.GetBoundingBox(label)
        boxes[label] = ((z, y, x), (z + sz, y + sy, x + sx))
    return boxes


class LesionMapper:
    """Carries model-grid lesions onto other grids (see module docstring)."""

    RIM = 2  # model voxels kept around a lesion's box: the one-voxel rim plus interpolation support
    SLAB_VOXELS = 8_000_000  # target voxels resampled at once: bounds memory for body-sized outputs

    def __init__(self, logit_diff: np.ndarray, grid: Grid, threads: int = 1):
        self.logit_diff = logit_diff
        self.grid = grid
        self.threads = threads
        self.labels, self.count = model_grid_components(logit_diff, threads)
        self.boxes = _bounding_boxes(self.labels, self.count) if self.count else {}

    def ranked_points(self, label: int) -> np.ndarray:
        """(n, 3) physical points (x, y, z) of the lesion's model-grid voxels, most confident first."""
        lo, hi = self.boxes[label]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        inside = self.labels[region] == label
        order = np.argsort(-self.logit_diff[region][inside], kind="stable")
        index_zyx = np.argwhere(inside)[order] + np.asarray(lo)
        return np.asarray(self.grid.origin) + index_zyx[:, ::-1] * np.asarray(self.grid.spacing)

    def _lattice_offset(self, target: sitk.Image):
        """Integer (z, y, x) offset from target to model indices when every target voxel centre is a model
        voxel centre (same spacing, identity direction, origin on the model lattice), else None."""
        if not np.allclose(target.GetDirection(), np.eye(3).ravel(), atol=1e-6):
            return None
        spacing = np.asarray(self.grid.spacing)
        if not np.allclose(target.GetSpacing(), spacing, rtol=1e-5, atol=0):
            return None
        shift = (np.asarray(target.GetOrigin()) - np.asarray(self.grid.origin)) / spacing
        if not np.allclose(shift, np.round(shift), atol=1e-3):
            return None
        return np.round(shift).astype(int)[::-1]

    def _lesion_image(self, label: int):
        lo, hi = self.boxes[label]
        lo = [max(0, a - self.RIM) for a in lo]
        hi = [min(n, b + self.RIM) for n, b in zip(self.labels.shape, hi)]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        keep = _dilate(self.labels[region] == label)
        values = np.where(keep, self.logit_diff[region], np.float32(NOT_COVERED)).astype(np.float32)
        image = sitk.GetImageFromArray(values)
        origin = np.asarray(self.grid.origin) + np.asarray(lo[::-1]) * np.asarray(self.grid.spacing)
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetSpacing(self.grid.spacing)
        return image

    def pieces_on(self, label: int, target: sitk.Image):
        """Yield (mask (z, y, x) bool, region (z, y, x) slices) covering one lesion on the target grid."""
        offset = self._lattice_offset(target)
        if offset is not None:  # nodes coincide: interpolation would return the model values; copy them
            lo, hi = self.boxes[label]
            t_lo = np.maximum(np.asarray(lo) - offset, 0)
            t_hi = np.minimum(np.asarray(hi) - offset, np.asarray(target.GetSize())[::-1])
            if np.all(t_hi > t_lo):
                model = tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(t_lo, t_hi, offset))
                yield self.labels[model] == label, tuple(slice(int(a), int(b)) for a, b in zip(t_lo, t_hi))
            return

        image = self._lesion_image(label)
        size = image.GetSize()
        corners = np.array(
            [
                target.TransformPhysicalPointToContinuousIndex(
                    image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
                )
                for x in (-0.5, size[0] - 0.5)
                for y in (-0.5, size[1] - 0.5)
                for z in (-0.5, size[2] - 0.5)
            ]
        )
        lo = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, target.GetSize())
        if np.any(hi <= lo):
            return
        resampler = sitk.ResampleImageFilter()
        resampler.SetOutputSpacing(target.GetSpacing())
        resampler.SetOutputDirection(target.GetDirection())
        resampler.SetTransform(sitk.Transform())
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(NOT_COVERED)
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        if self.threads > 0:
            resampler.SetNumberOfThreads(self.threads)
        slab = max(1, self.SLAB_VOXELS // int((hi[0] - lo[0]) * (hi[1] - lo[1])))
        for k in range(int(lo[2]), int(hi[2]), slab):
            k_end = min(k + slab, int(hi[2]))
            resampler.SetOutputOrigin(target.TransformIndexToPhysicalPoint([int(lo[0]), int(lo[1]), k]))
            resampler.SetSize([int(hi[0] - lo[0]), int(hi[1] - lo[1]), k_end - k])
            mask = sitk.GetArrayFromImage(resampler.Execute(image)) > 0
            yield mask, (slice(k, k_end), slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))


class LabelCanvas:
    """A uint16 label image on a reference grid, painted in place: no second whole-volume copy."""

    def __init__(self, reference: sitk.Image):
        self.image = sitk.Image(reference.GetSize(), sitk.sitkUInt16)
        self.image.CopyInformation(reference)

    def free(self, mask: np.ndarray, region: tuple) -> np.ndarray:
        """The voxels of mask not yet claimed by another lesion."""
        return mask & (sitk.GetArrayViewFromImage(self.image)[region] == 0)

    def paint(self, free: np.ndarray, region: tuple, value: int) -> None:
        current = sitk.GetArrayViewFromImage(self.image)[region]
        piece = sitk.GetImageFromArray(np.where(free, np.uint16(value), current).astype(np.uint16))
        z, y, x = region
        self.image[x.start : x.stop, y.start : y.stop, z.start : z.stop] = piece

    def mark_first_free(self, points: np.ndarray, value: int):
        """Mark the voxel holding the first of the (n, 3) physical points (x, y, z) that lies inside the
        image on a voxel no lesion holds yet. -> None when marked, else why not (OUTSIDE_CT or
        CT_VOXELS_TAKEN)."""
        to_index = np.reshape(self.image.GetDirection(), (3, 3)) @ np.diag(self.image.GetSpacing())
        continuous = np.linalg.solve(to_index, (np.asarray(points) - self.image.GetOrigin()).T).T
        index = np.floor(continuous + 0.5).astype(np.int64)  # rounds as TransformPhysicalPointToIndex
        index = index[np.all((index >= 0) & (index < np.asarray(self.image.GetSize())), axis=1)]
        if len(index) == 0:
            return OUTSIDE_CT
        held = sitk.GetArrayViewFromImage(self.image)[index[:, 2], index[:, 1], index[:, 0]]
        free = np.flatnonzero(held == 0)
        if free.size == 0:
            return CT_VOXELS_TAKEN
        self.image[tuple(int(i) for i in index[free[0]])] = value
        return None


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def label_maps(
    logit_diff: np.ndarray,
    grid: Grid,
    ct: sitk.Image,
    pet: sitk.Image,
    min_lesion_ml: float = 0.0,
    threads: int = 1,
    progress=None,
    cancelled=None,
    min_suv_max: float = 0.0,
):
    """-> (label_ct, label_pet, not_on_ct): uint16 images with consecutive lesion ids shared by both grids,
    and {id: reason} for the lesions of label_pet that have no voxel on label_ct (see the module docstring)."""
    mapper = LesionMapper(logit_diff, grid, threads)
    label_pet, label_ct = LabelCanvas(pet), LabelCanvas(ct)
    not_on_ct = {}
    pet_voxel_ml = _voxel_ml(pet)
    suv = sitk.GetArrayViewFromImage(pet) if min_suv_max > 0 else None
    next_id = 1
    for label in range(1, mapper.count + 1):
        if cancelled is not None and cancelled():
            raise Cancelled("Segmentation cancelled.")
        # PET first: whether the lesion is kept depends on its PET volume
        pieces = [(label_pet.free(mask, region), region) for mask, region in mapper.pieces_on(label, pet)]
        count = sum(int(np.count_nonzero(free)) for free, _ in pieces)
        hot_enough = suv is None or count == 0 or max(
            float(suv[region][free].max()) for free, region in pieces if free.any()) >= min_suv_max
        if count > 0 and count * pet_voxel_ml >= min_lesion_ml and hot_enough:
            for free, region in pieces:
                label_pet.paint(free, region, next_id)
            painted = 0
            for mask, region in mapper.pieces_on(label, ct):
                free = label_ct.free(mask, region)
                if free.any():
                    label_ct.paint(free, region, next_id)
                    painted += 1
            if painted == 0:
                reason = label_ct.mark_first_free(mapper.ranked_points(label), next_id)
                if reason is not None:
                    not_on_ct[next_id] = reason
            next_id += 1
        if progress is not None:
            progress(label / mapper.count)
    return label_ct.image, label_pet.image, not_on_ct
