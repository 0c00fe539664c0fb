"""Per-lesion and study statistics on the PET in SUV.

Definitions (all on the PET grid, from the voxels whose centre lies in the lesion):
- SUVmax, SUVmean: maximum and mean SUV of the lesion voxels.
- SUVpeak: mean SUV of all PET voxels (inside or outside the lesion) whose centre lies within a sphere of
  1 cm^3 (radius 6.2035 mm) centred on the centre of the lesion's hottest voxel (first in z, y, x order on
  ties); the sphere is clipped at the image border; no partial-volume weighting of border voxels.
- MTV: number of lesion voxels x voxel volume, in mL. TLG = SUVmean x MTV.
- Centroid: mean physical position of the lesion voxel centres, in RAS millimetres (LPS with x, y negated).
- on_ct: whether the lesion has a voxel on the CT-grid label; False for a lesion outside the CT field of
  view (set by segment_study; see postprocess).
- cut_by_ct_edge: whether the lesion touches the part of the PET the CT does not cover, where it was not
  analysed, so it may be larger than measured (set by segment_study; see coverage).
- site: the anatomical site under the lesion, from the model's organ output: the site of the organ code
  most frequent over the lesion's voxels (the lower code on a tie; see organs); "" when the model has no
  organ output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from .organs import UNKNOWN_SITE

PEAK_RADIUS_MM = (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0) * 10.0  # sphere of 1 cm^3: 6.2035 mm


@dataclass(frozen=True)
class LesionStats:
    id: int
    voxels: int
    suv_max: float
    suv_mean: float
    suv_peak: float
    mtv_ml: float
    tlg: float
    centroid_ras_mm: tuple
    on_ct: bool = True
    cut_by_ct_edge: bool = False
    site: str = ""


@dataclass(frozen=True)
class StudyTotals:
    lesion_count: int
    total_mtv_ml: float
    total_tlg: float


def sphere_offsets(spacing_xyz, radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """(n, 3) integer (z, y, x) offsets of the voxels whose centres are within radius of a voxel centre."""
    reach = [int(np.floor(radius_mm / s)) for s in reversed(spacing_xyz)]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    distance_sq = sum((offsets[:, i] * s) ** 2 for i, s in enumerate(reversed(spacing_xyz)))
    return offsets[distance_sq <= radius_mm**2 + 1e-9]


def suv_peak(pet: np.ndarray, centre_zyx, offsets: np.ndarray) -> float:
    points = offsets + np.asarray(centre_zyx)
    inside = np.all((points >= 0) & (points < np.asarray(pet.shape)), axis=1)
    points = points[inside]
    return float(pet[points[:, 0], points[:, 1], points[:, 2]].astype(np.float64).mean())


def lps_to_ras(point) -> tuple:
    return (-float(point[0]), -float(point[1]), float(point[2]))


def _mean_index_xyz(mask: np.ndarray, start_xyz) -> list:
    """Mean (x, y, z) index of a boolean (z, y, x) mask, from its projections (no coordinate arrays)."""
    total = float(np.count_nonzero(mask))
    mean = []
    for axis, start in zip((2, 1, 0), start_xyz):
        others = tuple(a for a in range(3) if a != axis)
        counts = mask.sum(axis=others, dtype=np.int64)
        mean.append(start + float(np.dot(counts, np.arange(counts.size))) / total)
    return mean


def lesion_statistics(label_pet: sitk.Image, pet_suv: sitk.Image, organs=None) -> list:
    """LesionStats for every id in a PET-grid label map (ids as found, ascending). organs: the model's
    organs.OrganMap, which names each lesion's site, or None (site "")."""
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.ComputePerimeterOff()
    shape_stats.Execute(label_pet)
    labels = sitk.GetArrayViewFromImage(label_pet)
    pet = sitk.GetArrayViewFromImage(pet_suv)
    voxel_ml = float(np.prod(pet_suv.GetSpacing())) / 1000.0
    offsets = sphere_offsets(pet_suv.GetSpacing())
    results = []
    for label in sorted(shape_stats.GetLabels()):
        x, y, z, sx, sy, sz = shape_stats.GetBoundingBox(label)
        region = (slice(z, z + sz), slice(y, y + sy), slice(x, x + sx))
        inside = labels[region] == label
        values = pet[region][inside]  # float32, only the lesion's voxels
        # first voxel (z, y, x order) holding the maximum, without a box-sized float temporary
        hottest = np.unravel_index(np.flatnonzero(inside)[int(np.argmax(values))], inside.shape)
        hottest = (hottest[0] + z, hottest[1] + y, hottest[2] + x)
        centroid = pet_suv.TransformContinuousIndexToPhysicalPoint(_mean_index_xyz(inside, (x, y, z)))
        mtv = values.size * voxel_ml
        mean = float(values.mean(dtype=np.float64))
        site = (organs.site_of_lesion(pet_suv, labels, int(label), (x, y, z), (sx, sy, sz))
                if organs is not None else UNKNOWN_SITE)
        results.append(
            LesionStats(
                id=int(label),
                voxels=int(values.size),
                suv_max=float(values.max()),
                suv_mean=mean,
                suv_peak=suv_peak(pet, hottest, offsets),
                mtv_ml=mtv,
                tlg=mean * mtv,
                centroid_ras_mm=lps_to_ras(centroid),
                site=site,
            )
        )
    return results


def study_totals(lesions: list) -> StudyTotals:
    return StudyTotals(
        lesion_count=len(lesions),
        total_mtv_ml=float(sum(lesion.mtv_ml for lesion in lesions)),
        total_tlg=float(sum(lesion.tlg for lesion in lesions)),
    )
