"""Optional anatomy of the synthetic phantom, drawn per case: arms, breasts, thyroid, ureters, exercised
muscles, inflamed joints, injection site, urine contamination, metal implants, and the scan's field of view.

Each is a confounder a lesion model meets in real FDG PET/CT: hot structures that are not lesions, and
bodies that do not fill the same part of the field of view. `sample_variants` decides what a case has;
`draw_variants` paints it after the base anatomy (see `phantom_anatomy.draw_anatomy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .organs import ORGAN
from .phantom_anatomy import TORSO_A, TORSO_D, Body
from .phantom_canvas import (
    AIR,
    BONE,
    FAT,
    GLAND,
    METAL,
    MUSCLE,
    THYROID,
    URINE,
    YELLOW_MARROW,
    Canvas,
)

# Field of view: (name, odds, nominal depth range of the start, of the end; None = the case's scan_depth).
FIELDS_OF_VIEW = (
    ("vertex_to_thigh", 0.45, (-40.0, -10.0), None),
    ("skull_base_to_thigh", 0.25, (120.0, 170.0), None),
    ("thorax", 0.1, (200.0, 260.0), (560.0, 650.0)),
    ("abdomen_pelvis", 0.1, (450.0, 520.0), (880.0, 950.0)),
    ("vertex_to_knee", 0.1, (-40.0, -10.0), (1150.0, 1250.0)),
)


@dataclass
class Variants:
    """What one phantom has beyond the base anatomy."""

    fov: str = "vertex_to_thigh"
    depth_range: Tuple[float, float] = (-20.0, 1000.0)  # nominal d of the first and last slice
    arms: str = "up"  # up (out of the torso's field), down (beside the torso), or none
    breasts: bool = False
    lactating: bool = False
    thyroid_suv: float = 1.2
    ureters: bool = True
    exercised: List[str] = field(default_factory=list)  # muscle groups with raised uptake
    inflamed_joints: bool = False
    injection_site: bool = False
    contamination: bool = False
    metal: Optional[str] = None  # hip | dental | None
    metal_centres_mm: List[Tuple[float, float, float]] = field(default_factory=list)  # canvas frame, filled

    def as_dict(self) -> dict:
        return {"fov": self.fov, "arms": self.arms, "breasts": self.breasts, "lactating": self.lactating,
                "thyroid_suv": round(self.thyroid_suv, 2), "ureters": self.ureters, "exercised": self.exercised,
                "inflamed_joints": self.inflamed_joints, "injection_site": self.injection_site,
                "contamination": self.contamination, "metal": self.metal}


def sample_variants(rng: np.random.Generator, body: Body) -> Variants:
    u = rng.uniform
    odds = np.array([f[1] for f in FIELDS_OF_VIEW])
    name, _, start, end = FIELDS_OF_VIEW[int(rng.choice(len(FIELDS_OF_VIEW), p=odds / odds.sum()))]
    depth_range = (u(*start), body.scan_depth if end is None else u(*end))
    arms = str(rng.choice(["up", "down", "none"], p=[0.55, 0.4, 0.05]))
    breasts = bool(u() < 0.45)
    groups = ["psoas", "shoulders", "thighs", "neck", "paraspinal"]
    exercised = [g for g in groups if u() < 0.12]
    return Variants(
        fov=name, depth_range=depth_range, arms=arms, breasts=breasts, lactating=breasts and u() < 0.1,
        thyroid_suv=float(u(3.0, 10.0) if u() < 0.1 else u(0.8, 2.0)), ureters=bool(u() < 0.7),
        exercised=exercised, inflamed_joints=bool(u() < 0.2), injection_site=bool(u() < 0.3),
        contamination=bool(u() < 0.12), metal=(str(rng.choice(["hip", "dental"])) if u() < 0.1 else None))


def _torso_half_width(body: Body, d) -> np.ndarray:
    return np.interp(d, TORSO_D, TORSO_A) * body.lean + body.fat_at(d)


ARM_D = np.array([300.0, 450.0, 560.0, 700.0, 800.0], np.float32)  # shoulder to hand, arms down
ARM_R = np.array([45.0, 40.0, 34.0, 30.0, 26.0], np.float32)


def arm_radius(body: Body) -> np.ndarray:
    return ARM_R * body.lean + 0.4 * body.fat


def extra_half_width(body: Body, variants: Variants) -> float:
    """How far arms at the sides stick out beyond the torso (mm), for the canvas width."""
    if variants.arms != "down":
        return 0.0
    return float(2.0 * arm_radius(body).max() + 15.0)


def extra_front_depth(body: Body, variants: Variants) -> float:
    """How far breasts stick out in front of the chest (mm), for the canvas depth."""
    return 70.0 * body.lean + body.fat if variants.breasts else 0.0


def _limb(cv: Canvas, body: Body, d: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray,
          bone_r: float) -> None:
    """A limb along nominal depths d (fat, muscle, one bone with fatty marrow)."""
    z = body.z(d)
    order = np.argsort(z)
    z, cx, cy, r = z[order], cx[order], cy[order], r[order]
    fat = np.minimum(0.4 * body.fat, 0.5 * r)
    cv.paint(cv.tube(z, cx, cy, r, r), FAT, only=(AIR,))
    cv.paint(cv.tube(z, cx, cy, r - fat, r - fat), MUSCLE, only=(FAT,))
    cv.paint(cv.tube(z, cx, cy, np.full_like(r, bone_r), np.full_like(r, bone_r)), BONE, only=(MUSCLE,))
    inner = np.full_like(r, bone_r - 3.0)
    cv.paint(cv.tube(z, cx, cy, inner, inner), YELLOW_MARROW, only=(BONE,))


def _arms(cv: Canvas, body: Body, variants: Variants) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Paint the arms; returns each arm's (depths, x, y) centre line for the injection site."""
    lines = []
    if variants.arms == "none":
        return lines
    for side in (-1, 1):
        if variants.arms == "down":
            r = arm_radius(body)
            d = ARM_D
            cx = side * (_torso_half_width(body, d) + r + 8.0)
            cy = np.full_like(d, 10.0 * body.lean)
        else:  # raised above the head: from the shoulder up past the vertex
            d = np.array([300.0, 200.0, 80.0, -60.0, -200.0], np.float32)
            r = np.array([45.0, 38.0, 33.0, 30.0, 26.0], np.float32) * body.lean + 0.4 * body.fat
            cx = side * np.array([165.0, 150.0, 125.0, 115.0, 110.0], np.float32) * body.lean
            cy = np.array([5.0, 10.0, 20.0, 25.0, 25.0], np.float32) * body.lean
        _limb(cv, body, d, cx, cy, r, 11.0 * body.lean)
        lines.append((d, cx, cy))
    return lines


def _breasts(cv: Canvas, body: Body, variants: Variants, rng: np.random.Generator) -> None:
    size = rng.uniform(0.6, 1.5)
    gland_suv = rng.uniform(2.0, 6.0) if variants.lactating else rng.uniform(0.4, 1.1)
    front = -(100.0 * body.lean + body.fat_at(400.0))
    for side in (-1, 1):
        centre = body.at(side * 72, 0, 400)
        centre = (centre[0], float(front) + 5.0, centre[2])
        radii = np.array([55.0, 30.0 + 0.5 * body.fat, 50.0]) * size
        cv.paint(cv.ellipsoid(centre, radii), FAT, only=(AIR, FAT))
        cv.paint(cv.ellipsoid((centre[0], centre[1] - 0.2 * radii[1], centre[2]), radii * 0.6), GLAND,
                 suv=float(gland_suv * rng.uniform(0.8, 1.2)), hu=float(rng.uniform(10, 45)), only=(FAT,))


def _thyroid(cv: Canvas, body: Body, variants: Variants, rng: np.random.Generator) -> None:
    for side in (-1, 1):
        cv.paint(cv.ellipsoid(body.at(side * 17, -30, 240), np.asarray(body.size(8, 9, 20)) * rng.uniform(0.7, 1.4)),
                 THYROID, suv=variants.thyroid_suv * rng.uniform(0.85, 1.15), hu=float(rng.uniform(60, 110)),
                 only=(MUSCLE, FAT))


def _ureters(cv: Canvas, body: Body, rng: np.random.Generator) -> None:
    d = np.array([650.0, 700.0, 760.0, 810.0, 845.0], np.float32)
    urine = cv.defaults[URINE][0]
    for side in (-1, 1):
        cx = side * np.array([52.0, 48.0, 45.0, 40.0, 22.0], np.float32) * body.lean
        cy = np.array([38.0, 35.0, 25.0, 5.0, -25.0], np.float32) * body.lean
        for k in range(len(d) - 1):  # peristalsis: only some segments hold urine
            if rng.random() < 0.5:
                continue
            seg_d = np.linspace(d[k], d[k + 1], 4)
            z = body.z(seg_d)[::-1]
            r = np.full(4, rng.uniform(2.0, 4.0), np.float32)
            cv.paint(cv.tube(z, np.interp(seg_d, d, cx)[::-1], np.interp(seg_d, d, cy)[::-1], r, r), URINE,
                     suv=float(urine * rng.uniform(0.1, 0.8)), only=(FAT, MUSCLE), organ=ORGAN["ureter"])


def _exercised(cv: Canvas, body: Body, variants: Variants, rng: np.random.Generator) -> None:
    """Psoas muscles always exist; groups in `variants.exercised` take up FDG after exertion."""
    psoas_d = np.array([600.0, 700.0, 800.0, 850.0], np.float32)
    for side in (-1, 1):
        cx = side * np.array([35.0, 45.0, 55.0, 60.0], np.float32) * body.lean
        cy = np.array([45.0, 40.0, 30.0, 20.0], np.float32) * body.lean
        r = np.array([10.0, 16.0, 22.0, 20.0], np.float32) * body.lean
        z = body.z(psoas_d)[::-1]
        suv = float(rng.uniform(1.5, 4.5)) if "psoas" in variants.exercised else None
        cv.paint(cv.tube(z, cx[::-1], cy[::-1], r[::-1], r[::-1]), MUSCLE, suv=suv, only=(FAT, MUSCLE))
    hot = {g: float(rng.uniform(1.5, 4.5)) for g in variants.exercised}
    if "shoulders" in hot:
        for side in (-1, 1):
            cv.paint(cv.ellipsoid(body.at(side * 110, 20, 300), body.size(45, 60, 50)), MUSCLE, suv=hot["shoulders"],
                     only=(MUSCLE,))
    if "neck" in hot:
        for side in (-1, 1):
            cv.paint(cv.ellipsoid(body.at(side * 30, 15, 230), body.size(14, 18, 45)), MUSCLE, suv=hot["neck"],
                     only=(MUSCLE,))
    if "paraspinal" in hot:
        for side in (-1, 1):
            cv.paint(cv.ellipsoid(body.at(side * 35, 75, 600), body.size(18, 20, 180)), MUSCLE,
                     suv=hot["paraspinal"], only=(MUSCLE,))
    if "thighs" in hot:
        region = cv.box((-400, -400, float(body.z(1300))), (400, 400, float(body.z(880))))
        cv.paint(region, MUSCLE, suv=hot["thighs"], only=(MUSCLE,))


def _joints(cv: Canvas, body: Body, rng: np.random.Generator) -> None:
    for side in (-1, 1):
        for centre, r in ((body.at(side * 120, 5, 292), 22.0), (body.at(side * 88, 0, 872), 24.0)):
            if rng.random() < 0.6:
                cv.paint(cv.ellipsoid(centre, [r * body.lean + rng.uniform(5, 10)] * 3), MUSCLE,
                         suv=float(rng.uniform(2.0, 5.0)), only=(MUSCLE, FAT))


def _injection_site(cv: Canvas, body: Body, arm_lines, rng: np.random.Generator) -> None:
    if arm_lines:
        d, cx, cy = arm_lines[int(rng.integers(len(arm_lines)))]
        t = rng.uniform(0.3, 0.9)
        depth = float(np.interp(t, np.linspace(0, 1, len(d)), d))
        x = float(np.interp(t, np.linspace(0, 1, len(d)), cx))
        y = float(np.interp(t, np.linspace(0, 1, len(d)), cy)) - 15.0 * body.lean
    else:  # a hand or the groin: on the skin of the thigh
        depth, x, y = rng.uniform(850, 920), rng.choice((-1, 1)) * 70.0 * body.lean, -60.0 * body.lean
    centre = (x, y, float(body.z(depth)))
    cv.add_uptake(cv.ellipsoid(centre, [rng.uniform(2.0, 8.0)] * 3), float(np.exp(rng.uniform(np.log(5), np.log(80)))))
    if rng.random() < 0.5:  # tracer lingering in the vein up the arm
        length = rng.uniform(30, 100)
        z = np.array([centre[2] - length / 2, centre[2] + length / 2], np.float32)
        r = np.full(2, rng.uniform(1.5, 3.0), np.float32)
        cv.add_uptake(cv.tube(z, [x, x], [y, y], r, r), float(rng.uniform(2.0, 10.0)))


def _contamination(cv: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Urine on the skin or clothes: hot on PET, nothing on CT."""
    depth = rng.uniform(820, 950)
    side = rng.choice((-1, 1))
    front = -(60.0 * body.lean + body.fat_at(depth))
    centre = (side * rng.uniform(10, 80) * body.lean, float(front), float(body.z(depth)))
    radii = [rng.uniform(5, 15), rng.uniform(2, 4), rng.uniform(5, 15)]
    cv.add_uptake(cv.ellipsoid(centre, radii), float(np.exp(rng.uniform(np.log(5), np.log(50)))))


def _metal(cv: Canvas, body: Body, variants: Variants, rng: np.random.Generator) -> None:
    if variants.metal == "hip":
        side = rng.choice((-1, 1))
        centre = body.at(side * 88, 0, 872)
        cv.paint(cv.ellipsoid(centre, [20.0 * body.lean] * 3), METAL, suv=None, hu=3071.0)
        stem_z = body.z([1000, 880])
        cv.paint(cv.tube(stem_z, [side * 80 * body.lean] * 2, [0, 0], [7, 7], [7, 7]), METAL, hu=3071.0)
    else:
        centre = body.at(rng.uniform(-20, 20), -60, rng.uniform(145, 165))
        cv.paint(cv.ellipsoid(centre, [rng.uniform(3, 7)] * 3), METAL, hu=3071.0)
    variants.metal_centres_mm.append(tuple(float(c) for c in centre))


def draw_variants(cv: Canvas, body: Body, variants: Variants, rng: np.random.Generator) -> None:
    """Paint the case's variants over the base anatomy."""
    arm_lines = _arms(cv, body, variants)
    if variants.breasts:
        _breasts(cv, body, variants, rng)
    _thyroid(cv, body, variants, rng)
    if variants.ureters:
        _ureters(cv, body, rng)
    _exercised(cv, body, variants, rng)
    if variants.inflamed_joints:
        _joints(cv, body, rng)
    if variants.injection_site:
        _injection_site(cv, body, arm_lines, rng)
    if variants.contamination:
        _contamination(cv, body, rng)
    if variants.metal:
        _metal(cv, body, variants, rng)
