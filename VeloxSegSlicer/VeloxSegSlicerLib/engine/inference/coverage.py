"""How much of the PET the CT covers, and which lesions the CT's edge cuts.

The network needs both scans, so only the region the CT covers is analysed (the model grid is cut to the
CT/PET overlap, see preprocess). A PET reaching beyond the CT (a shorter CT range, a narrower CT field of
view that leaves the arms out) is therefore partly unread: lesions there are missing, and a lesion
crossing the CT's edge is cut there, its MTV and TLG too low. This module measures both so the result can
say so instead of being silently incomplete:

- the fraction of the PET's body (voxels above PET_BODY_SUV, the engine's body rule) lying wholly outside
  the CT: voxel centres more than half a PET voxel beyond the CT's extent (its voxels, continuous index
  -0.5 .. size - 0.5), so the rim of a PET voxel grid a little coarser than the CT's does not count;
- per lesion of the PET-grid label, whether it is cut: whether the PET continues beyond the CT's extent
  within one voxel of the coarser grid (PET or CT) around the lesion. A lesion the network stops at the
  CT's edge ends up to a CT voxel short of it, so a one-voxel reach is too little; a lesion at the edge of
  a PET the CT covers entirely (the IBSI CT on the PET grid) is not flagged, nothing being beyond.

Only the CT's geometry is used (no voxels), and a PET wholly inside the CT costs eight point transforms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from .preprocess import PET_BODY_SUV

# Below this fraction of the PET's body outside the CT (and with no lesion cut) nothing is said: a PET one
# slice longer than its CT is 0.3 % of a whole-body study and may well hide a lesion, so the limit is low.
WARN_FRACTION = 0.001
_EDGE_TOLERANCE = 1e-3  # voxel units: a PET voxel centre on the CT's very edge counts as covered
_SLAB = 8  # PET slices handled at once: bounds the temporary arrays on a whole-body PET


@dataclass(frozen=True)
class CtCoverage:
    outside_fraction: float  # of the PET's body voxels, those outside the CT (0 when the CT covers all)
    body_voxels: int  # PET voxels above PET_BODY_SUV (0 when the CT covers the whole PET: not counted)
    cut: frozenset = field(default_factory=frozenset)  # lesion ids whose surroundings reach beyond the CT


def _pet_to_ct_index(pet: sitk.Image, ct: sitk.Image):
    """(matrix, offset): CT continuous index (x, y, z) = matrix @ PET index (x, y, z) + offset."""
    pet_axes = np.reshape(pet.GetDirection(), (3, 3)) @ np.diag(pet.GetSpacing())
    ct_axes = np.reshape(ct.GetDirection(), (3, 3)) @ np.diag(ct.GetSpacing())
    to_ct = np.linalg.inv(ct_axes)
    return to_ct @ pet_axes, to_ct @ (np.asarray(pet.GetOrigin()) - np.asarray(ct.GetOrigin()))


class _CtExtent:
    """Which PET voxel centres lie inside the CT's extent, widened by `margin_mm` on every side."""

    def __init__(self, pet: sitk.Image, ct: sitk.Image, margin_mm: float = 0.0):
        self.matrix, self.offset = _pet_to_ct_index(pet, ct)
        widen = margin_mm / np.asarray(ct.GetSpacing(), dtype=float) + _EDGE_TOLERANCE  # in CT voxels
        self.low = -0.5 - widen
        self.high = np.asarray(ct.GetSize(), dtype=float) - 0.5 + widen
        corners = np.array([[x, y, z] for x in (0, pet.GetWidth() - 1) for y in (0, pet.GetHeight() - 1)
                            for z in (0, pet.GetDepth() - 1)], dtype=float)
        ct_index = corners @ self.matrix.T + self.offset
        # both extents are convex: all eight corners inside means every PET voxel centre is
        self.covers_all = bool(np.all((ct_index >= self.low) & (ct_index <= self.high)))

    def inside(self, region) -> np.ndarray:
        """Boolean (z, y, x) array over a PET region (three slices with start and stop)."""
        z, y, x = (np.arange(s.start, s.stop, dtype=float) for s in region)
        result = np.ones((z.size, y.size, x.size), dtype=bool)
        for axis in range(3):
            m = self.matrix[axis]
            ct_index = ((m[0] * x)[None, None, :] + (m[1] * y)[None, :, None]
                        + (m[2] * z + self.offset[axis])[:, None, None])
            result &= (ct_index >= self.low[axis]) & (ct_index <= self.high[axis])
        return result


def _dilate(mask: np.ndarray, reach) -> np.ndarray:
    """Box dilation by reach (z, y, x) voxels on each side, one separable pass per voxel of reach."""
    out = mask
    for axis, steps in enumerate(reach):
        head, tail = [slice(None)] * 3, [slice(None)] * 3
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        for _ in range(int(steps)):
            grown = out.copy()
            grown[tuple(head)] |= out[tuple(tail)]
            grown[tuple(tail)] |= out[tuple(head)]
            out = grown
    return out


def _body_outside(pet: sitk.Image, ct: sitk.Image):
    """(PET body voxels, those of them wholly outside the CT), slab by slab."""
    extent = _CtExtent(pet, ct, margin_mm=0.5 * max(pet.GetSpacing()))
    if extent.covers_all:
        return 0, 0
    suv = sitk.GetArrayViewFromImage(pet)
    depth, height, width = suv.shape
    body = outside = 0
    for start in range(0, depth, _SLAB):
        stop = min(start + _SLAB, depth)
        in_body = suv[start:stop] > PET_BODY_SUV
        count = int(np.count_nonzero(in_body))
        if count:
            body += count
            in_body &= ~extent.inside((slice(start, stop), slice(0, height), slice(0, width)))
            outside += int(np.count_nonzero(in_body))
    return body, outside


def _cut_lesions(pet: sitk.Image, ct: sitk.Image, label_pet: sitk.Image) -> set:
    extent = _CtExtent(pet, ct)
    if extent.covers_all:
        return set()
    spacing_zyx = np.asarray(pet.GetSpacing(), dtype=float)[::-1]
    coarse = max(max(pet.GetSpacing()), max(ct.GetSpacing()))
    reach = np.maximum(1, np.ceil(coarse / spacing_zyx - 1e-6)).astype(int)
    labels = sitk.GetArrayViewFromImage(label_pet)
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.ComputePerimeterOff()
    shape_stats.Execute(label_pet)
    cut = set()
    for label in shape_stats.GetLabels():
        x, y, z, sx, sy, sz = shape_stats.GetBoundingBox(label)
        lo = np.maximum(np.array([z, y, x]) - reach, 0)  # the box and the reach around it, within the PET
        hi = np.minimum(np.array([z + sz, y + sy, x + sx]) + reach, labels.shape)
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        near = _dilate(labels[region] == label, reach)
        if np.any(near & ~extent.inside(region)):
            cut.add(int(label))
    return cut


def ct_coverage(pet: sitk.Image, ct: sitk.Image, label_pet: sitk.Image = None) -> CtCoverage:
    """The PET body fraction outside the CT and the ids of label_pet's lesions the CT's edge cuts. `ct`
    needs only its geometry (an image without voxels will do)."""
    body, outside = _body_outside(pet, ct)
    cut = _cut_lesions(pet, ct, label_pet) if label_pet is not None else set()
    return CtCoverage(outside / body if body else 0.0, body, frozenset(cut))


def coverage_warning(coverage: CtCoverage) -> str:
    """The sentence that says what a partial CT means for the result, or '' when there is nothing to say."""
    cut = len(coverage.cut)
    if coverage.outside_fraction < WARN_FRACTION and not cut:
        return ""
    percent = 100.0 * coverage.outside_fraction
    shown = f"{percent:.1f} %" if percent >= 0.1 else "less than 0.1 %"  # never "0.0 %" when something is
    text = (f"The CT covers only part of the PET: {shown} of the PET's body "
            f"(voxels above SUV {PET_BODY_SUV:g}) lies outside the CT's field of view and was not analysed; "
            "lesions there are missing")
    if cut:
        text += (f", and {cut} lesion{'s' if cut != 1 else ''} touching the CT's edge "
                 f"{'are' if cut != 1 else 'is'} cut there (MTV and TLG too low; flagged as cut in the "
                 "lesion table)")
    else:
        text += " or cut at the CT's edge"
    return text + ". Give a CT that covers the whole PET to analyse all of it."
