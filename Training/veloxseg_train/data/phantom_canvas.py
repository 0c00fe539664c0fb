"""The voxel canvas the synthetic phantom is painted on: tissue codes, organ codes, FDG uptake (SUV) and CT
value (HU).

Coordinates are millimetres in the patient frame of the phantom grid: x towards the patient's left,
y posterior, z superior (LPS axes), the body axis at x = y = 0 and the vertex at z = 0. Shapes are
evaluated only inside their bounding block, which keeps a whole-body phantom fast to draw.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

# Tissue codes of the phantom (uint8).
AIR, FAT, MUSCLE, BONE, MARROW, YELLOW_MARROW, DISC, BRAIN, BRAIN_WM, LUNG, BLOOD, MYOCARDIUM, LIVER, \
    SPLEEN, KIDNEY, URINE, STOMACH, FLUID, GAS, BOWEL, SALIVARY, LYMPHOID, BROWN_FAT, TABLE, LESION, GLAND, \
    THYROID, METAL, HOT_SPOT = range(29)

Region = Tuple[Tuple[slice, slice, slice], np.ndarray]  # (block slices z, y, x; boolean mask of the block)


class Canvas:
    """Tissue, uptake and HU arrays (z, y, x) over a regular grid with the given voxel-centre coordinates."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, defaults: dict):
        self.x, self.y, self.z = (np.asarray(a, dtype=np.float32) for a in (x, y, z))
        shape = (len(self.z), len(self.y), len(self.x))
        self.tissue = np.zeros(shape, np.uint8)
        self.suv = np.zeros(shape, np.float32)
        self.hu = np.full(shape, -1000.0, np.float32)
        self.organ = np.zeros(shape, np.uint8)  # organ codes (organs.ORGAN_NAMES), the organ-target map
        self.defaults = defaults  # tissue code -> (suv, hu) for this case
        from .organs import TISSUE_ORGAN  # here: organs.py imports this module's tissue codes

        self.tissue_organ = np.zeros(256, np.uint8)
        for tissue, organ in TISSUE_ORGAN.items():
            self.tissue_organ[tissue] = organ

    @staticmethod
    def _range(axis: np.ndarray, lo: float, hi: float) -> Optional[slice]:
        step = float(axis[1] - axis[0]) if len(axis) > 1 else 1.0
        start = max(0, int(np.ceil((lo - axis[0]) / step)))
        stop = min(len(axis), int(np.floor((hi - axis[0]) / step)) + 1)
        return slice(start, stop) if stop > start else None

    def block(self, lo_xyz: Sequence[float], hi_xyz: Sequence[float]):
        """(z, y, x) slices of the voxels whose centres lie in the box, or None when it misses the grid."""
        parts = [self._range(a, lo, hi) for a, lo, hi in zip((self.z, self.y, self.x),
                                                             lo_xyz[::-1], hi_xyz[::-1])]
        return None if any(p is None for p in parts) else tuple(parts)

    def box(self, lo_xyz: Sequence[float], hi_xyz: Sequence[float]) -> Optional[Region]:
        sl = self.block(lo_xyz, hi_xyz)
        return None if sl is None else (sl, np.ones([s.stop - s.start for s in sl], bool))

    def coords(self, sl) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x, y, z coordinates of a block."""
        return (self.x[sl[2]][None, None, :], self.y[sl[1]][None, :, None], self.z[sl[0]][:, None, None])

    def ellipsoid_q(self, centre: Sequence[float], radii: Sequence[float], grow: float = 1.0):
        """(slices, q) with q = squared normalised radius over the block of the ellipsoid grown by `grow`."""
        c, r = np.asarray(centre, np.float32), np.asarray(radii, np.float32)
        sl = self.block(c - r * grow, c + r * grow)
        if sl is None:
            return None, None
        x, y, z = self.coords(sl)
        q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        return sl, q

    def ellipsoid(self, centre: Sequence[float], radii: Sequence[float]) -> Optional[Region]:
        sl, q = self.ellipsoid_q(centre, radii)
        return None if sl is None else (sl, q <= 1.0)

    def tube(self, z_ctrl: Sequence[float], cx: Sequence[float], cy: Sequence[float],
             rx: Sequence[float], ry: Sequence[float]) -> Optional[Region]:
        """Elliptic cross-sections along z, centre and radii interpolated between control points.

        `z_ctrl` must increase; the tube exists between its first and last value.
        """
        z_ctrl = np.asarray(z_ctrl, np.float32)
        kz = self._range(self.z, float(z_ctrl[0]), float(z_ctrl[-1]))
        if kz is None:
            return None
        z = self.z[kz]
        ccx, ccy, rrx, rry = (np.interp(z, z_ctrl, np.asarray(v, np.float32)).astype(np.float32)
                              for v in (cx, cy, rx, ry))
        ky = self._range(self.y, float((ccy - rry).min()), float((ccy + rry).max()))
        kx = self._range(self.x, float((ccx - rrx).min()), float((ccx + rrx).max()))
        if ky is None or kx is None:
            return None
        sl = (kz, ky, kx)
        x, y, _ = self.coords(sl)
        q = ((x - ccx[:, None, None]) / rrx[:, None, None]) ** 2 + \
            ((y - ccy[:, None, None]) / rry[:, None, None]) ** 2
        return sl, q <= 1.0

    def add_uptake(self, region: Optional[Region], suv: float) -> None:
        """Raise FDG uptake inside `region` to at least `suv`, leaving tissue and CT as they are (contamination,
        tracer in a vein: seen on PET only)."""
        if region is None:
            return
        sl, mask = region
        np.maximum(self.suv[sl], np.where(mask, np.float32(suv), 0), out=self.suv[sl])

    def paint(self, region: Optional[Region], tissue: int, suv: Optional[float] = None,
              hu: Optional[float] = None, only: Optional[Iterable[int]] = None,
              organ: Optional[int] = None) -> None:
        """Set tissue, uptake, HU and organ inside `region` (only over the listed current tissues, if given).

        The organ is the tissue's own (organs.TISSUE_ORGAN) unless `organ` names it: urine in the renal
        pelvis belongs to the kidney, in a ureter to the ureter.
        """
        if region is None:
            return
        sl, mask = region
        if only is not None:
            mask = mask & np.isin(self.tissue[sl], list(only))
        default_suv, default_hu = self.defaults.get(tissue, (0.0, -1000.0))
        self.tissue[sl][mask] = tissue
        self.suv[sl][mask] = default_suv if suv is None else suv
        self.hu[sl][mask] = default_hu if hu is None else hu
        self.organ[sl][mask] = self.tissue_organ[tissue] if organ is None else organ
