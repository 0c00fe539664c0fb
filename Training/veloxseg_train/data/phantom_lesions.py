"""Lesions of the synthetic phantom: where they go, how big and how hot they are, and the truth mask.

Sites: lung, liver, spleen, the lymph-node stations, bone marrow, soft tissue, and soft tissue next to hot
organs (kidneys, urine, heart, bowel, stomach: the lesions a model most easily merges with physiological
uptake). Diameters 3-30 mm; uptake from barely visible (1.4-1.8x the local background) to very hot (SUV 20);
shapes from ellipsoids to lobulated (up to two overlapping lobes), uptake smooth or heterogeneous; large
lesions are sometimes necrotic (a cold core inside the labelled outline). Lesions do not touch each other,
so each is one component.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

from .phantom_anatomy import Body, node_stations
from .phantom_canvas import (
    AIR,
    BONE,
    BOWEL,
    BRAIN,
    BRAIN_WM,
    FAT,
    GAS,
    KIDNEY,
    LESION,
    LIVER,
    LUNG,
    MARROW,
    METAL,
    MUSCLE,
    MYOCARDIUM,
    SPLEEN,
    STOMACH,
    TABLE,
    URINE,
    YELLOW_MARROW,
    Canvas,
)

SITE_WEIGHTS = {"lung": 0.18, "liver": 0.13, "spleen": 0.04, "node": 0.3, "bone": 0.13, "soft": 0.12,
                "near_hot": 0.1}
SITE_TISSUES = {"lung": (LUNG,), "liver": (LIVER,), "spleen": (SPLEEN,), "bone": (MARROW, YELLOW_MARROW),
                "soft": (MUSCLE, FAT), "near_hot": (MUSCLE, FAT)}
HOT_ORGANS = (KIDNEY, URINE, MYOCARDIUM, BOWEL, STOMACH)
NEAR_HOT_MM = 15.0  # "next to a hot organ": within this distance of one
MIN_DIAMETER = {"lung": 3.0, "liver": 5.0, "spleen": 5.0, "node": 6.0, "bone": 5.0, "soft": 8.0,
                "near_hot": 6.0}
MAX_DIAMETER = 30.0
BARELY_VISIBLE_FRACTION = 0.15
NODE_FORBIDDEN = (AIR, TABLE, LUNG, BONE, MARROW, GAS, BRAIN, BRAIN_WM, LESION, METAL)
MIN_GAP_MM = 6.0
SHELL_MM = (4.0, 10.0)  # background ring around a lesion, for its contrast


@dataclass
class Lesion:
    site: str  # lung | liver | node | bone | soft
    station: str  # node station, or the site again
    centre: Tuple[float, float, float]  # canvas mm (patient frame); physical LPS is added by the generator
    radii: Tuple[float, float, float]  # mm
    suv_max: float  # truth before blur
    background_suv: float
    kind: str  # "barely" (1.4-1.8x background) or "clear"
    necrotic: bool
    lobes: int = 1  # 1 = ellipsoid; 2-3 = lobulated
    heterogeneity: float = 0.0  # relative spread of the patchy uptake (0 = smooth)
    voxels: int = 0
    contrast: float = 0.0  # blurred lesion mean / blurred background ring median, noise-free
    visible: bool = False  # "clear" and contrast >= 1.5 after blur

    @property
    def diameter(self) -> float:
        return 2.0 * float(np.mean(self.radii))

    def as_dict(self) -> dict:
        out = asdict(self)
        out["diameter_mm"] = round(self.diameter, 2)
        return out


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


class _Candidates:
    """Voxel centres of a site's tissues, found once per case."""

    def __init__(self, cv: Canvas, body: Body):
        self.cv, self.body, self.cache = cv, body, {}

    def sample(self, site: str, rng: np.random.Generator) -> Optional[np.ndarray]:
        if site not in self.cache:
            mask = np.isin(self.cv.tissue, SITE_TISSUES[site])
            if site == "near_hot":
                step = min(float(a[1] - a[0]) for a in (self.cv.x, self.cv.y, self.cv.z))
                near = ndimage.binary_dilation(np.isin(self.cv.tissue, HOT_ORGANS),
                                               iterations=max(1, int(round(NEAR_HOT_MM / step))))
                mask &= near
            # Soft-tissue and bone lesions below the neck (no skull or scalp lesions).
            mask[self.cv.z > self.body.z(250)] = False
            self.cache[site] = np.flatnonzero(mask)
        flat = self.cache[site]
        if flat.size == 0:
            return None
        k, j, i = np.unravel_index(flat[rng.integers(flat.size)], self.cv.tissue.shape)
        return np.array([self.cv.x[i], self.cv.y[j], self.cv.z[k]], np.float32)


def _tissue_at(cv: Canvas, centre: np.ndarray) -> int:
    idx = [int(np.clip(np.round((c - a[0]) / (a[1] - a[0])), 0, len(a) - 1))
           for c, a in zip(centre[::-1], (cv.z, cv.y, cv.x))]
    return int(cv.tissue[tuple(idx)])


def _lesion_ct(site: str, cv: Canvas, rng: np.random.Generator) -> float:
    if site == "liver":
        return cv.defaults[LIVER][1] - rng.uniform(10, 30)  # hypodense on non-contrast CT
    if site == "bone":
        return rng.uniform(500, 900) if rng.random() < 0.3 else rng.uniform(30, 150)  # sclerotic / lytic
    return rng.uniform(20, 55)


def _draw_one(cv: Canvas, label: np.ndarray, lesion: Lesion, rng: np.random.Generator) -> int:
    """Paint the lesion into uptake, HU and the label; returns its voxel count (at least 1)."""
    spacing = max(float(a[1] - a[0]) for a in (cv.x, cv.y, cv.z))
    lobed = lesion.lobes > 1
    grow = max(1.9 if lobed else 1.0, spacing / (2.0 * min(lesion.radii)) + 0.01)  # holds >= 1 voxel
    sl, q = cv.ellipsoid_q(lesion.centre, lesion.radii, grow=grow)
    if lobed:  # further lobes overlapping the first: q is the smallest normalised radius of any lobe
        x, y, z = cv.coords(sl)
        for _ in range(lesion.lobes - 1):
            direction = rng.standard_normal(3)
            offset = direction / np.linalg.norm(direction) * np.asarray(lesion.radii) * rng.uniform(0.5, 0.9)
            radii = np.asarray(lesion.radii) * rng.uniform(0.5, 0.8, 3)
            q = np.minimum(q, _q(x, y, z, np.add(lesion.centre, offset), radii))
    inside = q <= 1.0
    if not inside.any():
        # Smaller than a voxel: the voxel nearest its centre carries it, in the image and in the label.
        inside = q == q.min()
        q = np.zeros_like(q)
    uptake = lesion.suv_max * (1.0 - 0.25 * np.minimum(q, 1.0))  # peaked towards the centre
    if lesion.heterogeneity > 0 and inside.sum() >= 8:  # patchy uptake, never below the background
        patches = ndimage.gaussian_filter(rng.standard_normal(q.shape).astype(np.float32), 1.0)
        patches = np.clip(patches / max(float(patches.std()), 1e-3), -3.0, 3.0)
        uptake = np.maximum(uptake * (1.0 + lesion.heterogeneity * patches), lesion.background_suv)
    hu = _lesion_ct(lesion.site, cv, rng)
    hu_map = np.full_like(q, hu)
    if lesion.necrotic:
        core = q <= rng.uniform(0.4, 0.7) ** 2
        uptake = np.where(core, lesion.background_suv * rng.uniform(0.4, 1.0), uptake)
        hu_map = np.where(core, rng.uniform(5, 25), hu_map)
    cv.suv[sl][inside] = uptake[inside]
    cv.hu[sl][inside] = hu_map[inside]
    cv.tissue[sl][inside] = LESION
    label[sl][inside] = 1
    return int(inside.sum())


def place_lesions(cv: Canvas, body: Body, label: np.ndarray, count: int,
                  rng: np.random.Generator) -> List[Lesion]:
    """Draw `count` lesions (fewer only if no room is found after many tries) onto canvas and label."""
    sites = list(SITE_WEIGHTS)
    weights = np.array([SITE_WEIGHTS[s] for s in sites])
    candidates = _Candidates(cv, body)
    stations = node_stations(body)
    lesions: List[Lesion] = []
    for _ in range(count):
        for _attempt in range(30):
            site = sites[rng.choice(len(sites), p=weights / weights.sum())]
            station = site
            if site == "node":
                station = list(stations)[rng.integers(len(stations))]
                centre_mm, jitter = stations[station][rng.integers(len(stations[station]))]
                centre = np.asarray(centre_mm, np.float32) + rng.uniform(-1, 1, 3) * np.asarray(jitter)
                if _tissue_at(cv, centre) in NODE_FORBIDDEN:
                    continue
            else:
                centre = candidates.sample(site, rng)
                if centre is None:
                    continue
            radius = _log_uniform(rng, MIN_DIAMETER[site], MAX_DIAMETER) / 2.0
            radii = radius * rng.uniform(0.8, 1.2, 3)
            if any(np.linalg.norm(centre - np.array(o.centre)) < radii.max() + max(o.radii) + MIN_GAP_MM
                   for o in lesions):
                continue
            sl, q = cv.ellipsoid_q(centre, radii, grow=1.6)
            if sl is None:
                continue
            background = float(np.median(cv.suv[sl][q <= 1.6 ** 2]))
            if rng.random() < BARELY_VISIBLE_FRACTION:
                kind, suv_max = "barely", background * rng.uniform(1.4, 1.8)
            else:
                low = max(2.5, 2.5 * background)
                kind, suv_max = "clear", _log_uniform(rng, low, max(20.0, 1.2 * low))
            necrotic = 2 * radius >= 15.0 and rng.random() < 0.35
            lobes = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12])) if 2 * radius >= 8.0 else 1
            heterogeneity = float(rng.uniform(0.1, 0.35)) if rng.random() < 0.4 else 0.0
            lesion = Lesion(site, station, tuple(float(c) for c in centre), tuple(float(r) for r in radii),
                            float(suv_max), background, kind, bool(necrotic), lobes, heterogeneity)
            lesion.voxels = _draw_one(cv, label, lesion, rng)
            lesions.append(lesion)
            break
    return lesions


def _q(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + \
        ((z - centre[2]) / radii[2]) ** 2


def measure_contrast(cv: Canvas, blurred: np.ndarray, label: np.ndarray, lesions: List[Lesion]) -> None:
    """Set each lesion's noise-free contrast after blur, and whether it is clearly visible."""
    for lesion in lesions:
        c, r = lesion.centre, np.asarray(lesion.radii)
        sl = cv.block(np.subtract(c, r + SHELL_MM[1]), np.add(c, r + SHELL_MM[1]))
        x, y, z = cv.coords(sl)
        labelled = label[sl].astype(bool)
        q = _q(x, y, z, c, r)
        inside = labelled & (q <= 1.0)
        if not inside.any():  # sub-voxel lesion: its one voxel
            inside = labelled & (q == q[labelled].min())
        ring = ~labelled & (_q(x, y, z, c, r + SHELL_MM[1]) <= 1.0) & (_q(x, y, z, c, r + SHELL_MM[0]) > 1.0)
        values = blurred[sl]
        background = float(np.median(values[ring])) if ring.any() else 0.0
        lesion.contrast = float(values[inside].mean() / max(background, 1e-3))
        lesion.visible = lesion.kind == "clear" and lesion.contrast >= 1.5
