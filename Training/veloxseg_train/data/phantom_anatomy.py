"""Whole-body anatomy of the synthetic phantom: outline, skeleton, organs and their physiological FDG uptake.

Positions are written for a nominal adult as (x, y, d): x to the patient's left, y posterior, d = depth
below the vertex, all in mm. `Body` scales them by the case's height and build and turns d into the
canvas z (superior). Uptake values (SUVbw) and CT numbers (HU) are drawn per case around typical
clinical values, so every organ is a confounder of varying strength.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple, Union

import numpy as np

from .organs import ORGAN
from .phantom_canvas import (
    AIR,
    BLOOD,
    BONE,
    BOWEL,
    BRAIN,
    BRAIN_WM,
    BROWN_FAT,
    DISC,
    FAT,
    FLUID,
    GAS,
    KIDNEY,
    LIVER,
    LUNG,
    LYMPHOID,
    MARROW,
    MUSCLE,
    MYOCARDIUM,
    SALIVARY,
    SPLEEN,
    STOMACH,
    TABLE,
    URINE,
    YELLOW_MARROW,
    Canvas,
)

# Lean torso cross-section along the body: depth d, half-width, half-depth, centre y (nominal mm).
TORSO_D = (195, 240, 262, 290, 330, 450, 540, 650, 780, 880, 925)
TORSO_A = (44, 52, 105, 160, 158, 150, 140, 135, 150, 155, 135)
TORSO_B = (46, 52, 70, 92, 100, 100, 95, 95, 95, 90, 78)
TORSO_CY = (10, 12, 10, 5, 0, 0, 0, -5, 0, 5, 5)


Interval = Tuple[float, float]
Spec = Union[Interval, Sequence[Interval]]  # one interval, or several (drawn with equal odds)
ORGANS = ("liver", "spleen", "kidney", "heart", "stomach", "bladder", "brain")


def draw(rng: np.random.Generator, spec: Spec) -> float:
    """Uniform draw from an interval, or from one of several intervals picked at random."""
    if isinstance(spec[0], (int, float)):
        lo, hi = spec
    else:
        lo, hi = spec[int(rng.integers(len(spec)))]
    return float(rng.uniform(lo, hi))


@dataclass(frozen=True)
class AnatomyRanges:
    """Ranges of the body build, organ sizes, positions and uptakes a phantom family draws from.

    The training family (the defaults) is broad; `held_out()` draws from the tails outside it, so a model
    validated on it meets bodies and organs it never saw.
    """

    height: Spec = (0.86, 1.1)
    lean: Spec = (0.84, 1.14)
    fat_mm: Spec = (3.0, 55.0)
    belly: Spec = (1.0, 2.6)
    organ_scale: Spec = (0.8, 1.22)  # per organ, per axis
    organ_shift_mm: float = 15.0  # per organ, per axis, uniform in +-
    uptake_scale: Spec = (0.75, 1.35)  # per organ uptake factor on the typical SUV

    @classmethod
    def held_out(cls) -> AnatomyRanges:
        return cls(height=((0.78, 0.86), (1.1, 1.16)), lean=((0.76, 0.84), (1.14, 1.24)),
                   fat_mm=((0.0, 3.0), (55.0, 80.0)), belly=(2.6, 3.2),
                   organ_scale=((0.68, 0.8), (1.22, 1.4)), organ_shift_mm=25.0,
                   uptake_scale=((0.6, 0.75), (1.35, 1.7)))


@dataclass
class Body:
    """The case's build: height scale, lean (organ) scale and subcutaneous fat thickness (mm)."""

    height: float
    lean: float
    fat: float
    belly: float  # extra abdominal fat factor
    scan_depth: float  # nominal d where the scan ends (mid-thigh to knee)
    organ_scale: Dict[str, np.ndarray] = field(default_factory=dict)  # organ -> (sx, sy, sz)
    organ_shift: Dict[str, np.ndarray] = field(default_factory=dict)  # organ -> mm (x, y, z)
    uptake: Dict[str, float] = field(default_factory=dict)  # organ -> uptake factor

    def organ(self, name: str, x: float, y: float, d: float, rx: float, ry: float, rz: float):
        """(centre, radii) of an organ ellipsoid, with the case's own size and position for that organ."""
        scale = self.organ_scale.get(name, np.ones(3))
        shift = self.organ_shift.get(name, np.zeros(3))
        centre = np.add(self.at(x, y, d), shift)
        return centre, np.asarray(self.size(rx, ry, rz)) * scale

    def z(self, d):
        return -np.asarray(d, np.float32) * self.height

    def at(self, x, y, d):
        return (x * self.lean, y * self.lean, float(self.z(d)))

    def size(self, rx, ry, rz):
        return (rx * self.lean, ry * self.lean, rz * self.height)

    def fat_at(self, d):
        """Subcutaneous fat thickness along the body: thin at the neck, thickest over the abdomen."""
        d = np.asarray(d, np.float32)
        profile = np.interp(d, (195, 262, 540, 650, 800, 1200), (0.3, 0.8, 1.0, self.belly, 1.0, 0.9))
        return self.fat * profile

    def half_extent(self) -> tuple:
        """Largest |x| and the y range (min, max) of the body surface, mm."""
        a = np.array(TORSO_A) * self.lean + self.fat_at(TORSO_D)
        b = np.array(TORSO_B) * self.lean + self.fat_at(TORSO_D)
        cy = np.array(TORSO_CY) * self.lean
        return float(a.max()), float((cy - b).min()), float((cy + b).max())


def sample_tissue_values(rng: np.random.Generator, uptake_scale: Spec = (1.0, 1.0)) -> dict:
    """Per-case (SUV, HU) of each tissue, around typical FDG PET/CT values (organ SUVs x a per-organ factor)."""
    u = rng.uniform

    def loguniform(lo, hi):
        return float(np.exp(u(np.log(lo), np.log(hi))))

    brain = u(7.0, 10.0)
    values = {
        AIR: (0.0, -1000.0), FAT: (u(0.25, 0.45), u(-110, -85)), MUSCLE: (u(0.6, 0.95), u(40, 55)),
        BONE: (u(0.4, 0.7), u(600, 900)), MARROW: (u(1.2, 1.9), u(180, 300)),
        YELLOW_MARROW: (u(0.4, 0.7), u(-60, 0)), DISC: (u(0.6, 0.9), u(70, 100)),
        BRAIN: (brain, u(30, 40)), BRAIN_WM: (brain * u(0.45, 0.6), u(24, 30)),
        LUNG: (u(0.35, 0.6), u(-870, -800)), BLOOD: (u(1.5, 2.2), u(35, 50)),
        MYOCARDIUM: (loguniform(1.0, 8.0) * (1.5 if u() < 0.1 else 1.0), u(40, 55)),
        LIVER: (u(2.0, 2.6), u(50, 65)), SPLEEN: (u(1.6, 2.0), u(40, 52)), KIDNEY: (u(2.2, 3.8), u(30, 40)),
        URINE: (loguniform(5.0, 40.0), u(0, 15)), STOMACH: (u(1.5, 3.0), u(35, 45)),
        FLUID: (u(0.3, 0.6), u(5, 20)), GAS: (0.05, u(-950, -800)), BOWEL: (u(1.0, 2.5), u(10, 40)),
        SALIVARY: (u(1.8, 3.5), u(-20, 30)), LYMPHOID: (u(2.0, 5.0), u(35, 45)),
        BROWN_FAT: (u(3.0, 10.0), u(-90, -60)), TABLE: (0.0, u(-300, 100)),
    }
    for tissue in (BRAIN, BRAIN_WM, MYOCARDIUM, LIVER, SPLEEN, KIDNEY, STOMACH, BOWEL, SALIVARY, LYMPHOID, MARROW,
                   BLOOD):
        suv, hu = values[tissue]
        values[tissue] = (suv * draw(rng, uptake_scale), hu)
    return values


def sample_body(rng: np.random.Generator, ranges: AnatomyRanges = AnatomyRanges()) -> Body:
    body = Body(height=draw(rng, ranges.height), lean=draw(rng, ranges.lean), fat=draw(rng, ranges.fat_mm),
                belly=draw(rng, ranges.belly), scan_depth=rng.uniform(930, 1060))
    for organ in ORGANS:
        body.organ_scale[organ] = np.array([draw(rng, ranges.organ_scale) for _ in range(3)], np.float32)
        body.organ_shift[organ] = rng.uniform(-1, 1, 3).astype(np.float32) * ranges.organ_shift_mm
    return body


def _outline(cv: Canvas, body: Body, table_y: float, rng: np.random.Generator) -> None:
    d = np.array(TORSO_D, np.float32)
    a, b, cy = (np.array(v, np.float32) * body.lean for v in (TORSO_A, TORSO_B, TORSO_CY))
    fat = body.fat_at(d)
    zc = body.z(d)[::-1]  # tube control points must increase in z
    cv.paint(cv.box((-400, table_y, -5000), (400, table_y + rng.uniform(8, 15), 100)), TABLE)  # CT couch
    # Legs from the groin down, fat then muscle.
    leg_d = np.array([870, 950, 1100, 1250], np.float32)
    leg_r = np.array([62, 60, 52, 45], np.float32) * body.lean
    leg_fat = body.fat_at(leg_d)
    for side in (-1, 1):
        cx = side * np.array([78, 82, 84, 84], np.float32) * body.lean
        for r_extra, tissue in ((leg_fat, FAT), (0.0, MUSCLE)):
            cv.paint(cv.tube(body.z(leg_d)[::-1], cx[::-1], np.full(4, 5.0)[::-1],
                             (leg_r + r_extra)[::-1], (leg_r * 1.08 + r_extra)[::-1]), tissue)
    cv.paint(cv.tube(zc, np.zeros_like(d), cy[::-1], (a + fat)[::-1], (b + fat)[::-1]), FAT)
    cv.paint(cv.tube(zc, np.zeros_like(d), cy[::-1], a[::-1], b[::-1]), MUSCLE)
    # Head (soft tissue over the skull), then skull and brain.
    cv.paint(cv.ellipsoid(body.at(0, 5, 110), body.size(76, 93, 112)), MUSCLE)
    cv.paint(cv.ellipsoid(body.at(0, 8, 88), body.size(70, 88, 72)), BONE)
    brain_scale = np.minimum(body.organ_scale.get("brain", np.ones(3)), 1.0)  # the skull bounds the brain
    cv.paint(cv.ellipsoid(body.at(0, 8, 88), np.asarray(body.size(63, 81, 65)) * brain_scale), BRAIN)
    cv.paint(cv.ellipsoid(body.at(0, 10, 85), np.asarray(body.size(40, 55, 38)) * brain_scale), BRAIN_WM)


def _chest(cv: Canvas, body: Body, rng: np.random.Generator) -> None:
    for side in (-1, 1):
        cv.paint(cv.ellipsoid(body.at(side * 72, 0, 392), body.size(60, 80, 118)), LUNG, only=(MUSCLE,))
        cv.paint(cv.ellipsoid(body.at(side * 125, 5, 315), body.size(28, 32, 28)), FAT, only=(MUSCLE,))
    cv.paint(cv.tube(body.z([330, 200]), [0, 0], [-12 * body.lean] * 2, [8, 8], [8, 8]), AIR)  # trachea
    cv.paint(cv.ellipsoid(body.at(0, -10, 370), body.size(28, 38, 52)), FAT)  # mediastinal fat
    # Vessels in the lungs: CT look-alikes of small nodules, mildly warm in PET.
    for _ in range(60):
        centre = body.at(rng.choice((-1, 1)) * rng.uniform(30, 110), rng.uniform(-60, 60), rng.uniform(300, 480))
        cv.paint(cv.ellipsoid(centre, [rng.uniform(1.5, 3.5)] * 3), BLOOD, only=(LUNG,))
    heart_c, heart_r = body.organ("heart", 25, -25, 455, 56, 50, 56)
    cv.paint(cv.ellipsoid(heart_c, heart_r), MYOCARDIUM)
    cv.paint(cv.ellipsoid(heart_c, heart_r - rng.uniform(8, 14)), BLOOD)
    # Descending aorta, iliac arteries and the inferior vena cava.
    cv.paint(cv.tube(body.z([760, 340]), [18 * body.lean] * 2, [35 * body.lean] * 2, [12, 12], [12, 12]),
             BLOOD)
    for side in (-1, 1):
        cv.paint(cv.tube(body.z([850, 760]), [side * 60 * body.lean, side * 10], [10 * body.lean] * 2, [8, 8],
                         [8, 8]), BLOOD)
    cv.paint(cv.tube(body.z([760, 520]), [-20 * body.lean] * 2, [30 * body.lean] * 2, [11, 11], [11, 11]),
             BLOOD)


def _abdomen(cv: Canvas, body: Body, rng: np.random.Generator) -> None:
    u = rng.uniform
    abd_d = np.array([560, 650, 800, 830], np.float32)
    ra = np.array([110, 112, 120, 90], np.float32) * body.lean
    rb = np.array([70, 72, 68, 55], np.float32) * body.lean
    cv.paint(cv.tube(body.z(abd_d)[::-1], [0] * 4, [-10 * body.lean] * 4, ra[::-1], rb[::-1]), FAT,
             only=(MUSCLE,))  # visceral fat around the bowel and nodes
    cv.paint(cv.ellipsoid(*body.organ("liver", -65, 0, 545, 95, 88, 80)), LIVER)
    cv.paint(cv.ellipsoid(*body.organ("liver", 10, -40, 520, 55, 40, 40)), LIVER)
    cv.paint(cv.ellipsoid(*body.organ("liver", -60, -55, 590, 15, 15, 30)), FLUID)  # gallbladder
    cv.paint(cv.ellipsoid(*body.organ("spleen", 95, 45, 550, 32, 48, 55)), SPLEEN)
    stomach_c, stomach_r = body.organ("stomach", 55, -35, 545, 45, 38, 45)
    cv.paint(cv.ellipsoid(stomach_c, stomach_r), STOMACH)
    cv.paint(cv.ellipsoid(stomach_c, stomach_r - 7), FLUID, organ=ORGAN["bowel_stomach"])
    cv.paint(cv.ellipsoid(np.add(stomach_c, (0, -18, 10)), stomach_r * 0.5), GAS, only=(FLUID,),
             organ=ORGAN["bowel_stomach"])
    for side in (-1, 1):
        kidney_c, kidney_r = body.organ("kidney", side * 70, 50, 635 + u(-20, 20), 28, 28, 55)
        cv.paint(cv.ellipsoid(kidney_c, kidney_r), KIDNEY)
        pelvis_c = np.add(kidney_c, (-side * 15 * body.lean, -8, -5))
        cv.paint(cv.ellipsoid(pelvis_c, np.asarray(body.size(10, 10, 20)) * u(0.5, 1.4)), URINE,
                 suv=cv.defaults[URINE][0] * u(0.3, 1.5), organ=ORGAN["kidney"])  # the renal pelvis
    # Bowel: loops of patchy uptake, some with gas, in the visceral fat.
    for _ in range(int(rng.integers(25, 45))):
        centre = body.at(u(-105, 105), u(-75, 20), u(600, 800))
        radii = [u(10, 22), u(10, 22), u(10, 25)]
        gas = u() < 0.25
        cv.paint(cv.ellipsoid(centre, radii), BOWEL, suv=float(np.exp(u(np.log(1.0), np.log(4.0)))),
                 hu=u(10, 40), only=(FAT, MUSCLE))
        if gas:
            cv.paint(cv.ellipsoid(centre, np.array(radii) * 0.6), GAS, only=(BOWEL,), organ=ORGAN["bowel_stomach"])
    fill = u(0.4, 1.5)
    bladder_c, bladder_r = body.organ("bladder", 0, -35, 845, 40 * fill, 35 * fill, 32 * fill)
    cv.paint(cv.ellipsoid(bladder_c, bladder_r), URINE, suv=float(np.exp(u(np.log(4.0), np.log(80.0)))))


def _skeleton(cv: Canvas, body: Body) -> None:
    d = np.array(TORSO_D[:-1], np.float32)
    cy = np.array(TORSO_CY[:-1], np.float32) * body.lean
    b = np.array(TORSO_B[:-1], np.float32) * body.lean
    spine_y = (cy + 0.52 * b)[::-1]
    radius = np.interp(d, (195, 290, 700, 880), (12, 15, 20, 22))[::-1] * body.lean
    zc = body.z(d)[::-1]
    cv.paint(cv.tube(zc, np.zeros_like(d), spine_y, radius, radius * 0.85), BONE)
    cv.paint(cv.tube(zc, np.zeros_like(d), spine_y, radius - 3.5, radius * 0.85 - 3.5), MARROW)
    # Intervertebral discs every ~30 mm.
    discs = (np.abs(cv.z[:, None, None] / body.height) % 30.0) < 6.0
    disc_region = cv.tube(zc, np.zeros_like(d), spine_y, radius - 3.5, radius * 0.85 - 3.5)
    if disc_region is not None:
        sl, mask = disc_region
        cv.paint((sl, mask & discs[sl[0]]), DISC)
    for side in (-1, 1):
        wing_c, wing_r = body.at(side * 85, 25, 770), np.array(body.size(40, 55, 50))
        cv.paint(cv.ellipsoid(wing_c, wing_r), BONE)
        cv.paint(cv.ellipsoid(wing_c, wing_r - 6), MARROW)
        for centre, r in ((body.at(side * 88, 0, 872), 24.0), (body.at(side * 120, 5, 292), 22.0)):
            cv.paint(cv.ellipsoid(centre, [r * body.lean] * 3), BONE)  # femoral and humeral heads
            cv.paint(cv.ellipsoid(centre, [r * body.lean - 5] * 3), MARROW)
        fx = side * np.array([80, 78, 76], np.float32) * body.lean
        fz = body.z([1300, 1100, 885])
        cv.paint(cv.tube(fz, fx, [0, 0, 0], [14, 14, 14], [14, 14, 14]), BONE)
        cv.paint(cv.tube(fz, fx, [0, 0, 0], [9, 9, 9], [9, 9, 9]), YELLOW_MARROW)


def _head_neck(cv: Canvas, body: Body, rng: np.random.Generator, brown_fat: bool) -> None:
    for side in (-1, 1):
        cv.paint(cv.ellipsoid(body.at(side * 55, 5, 170), body.size(14, 20, 22)), SALIVARY)
        cv.paint(cv.ellipsoid(body.at(side * 36, -30, 205), body.size(10, 10, 10)), SALIVARY,
                 suv=cv.defaults[SALIVARY][0] * rng.uniform(0.7, 1.0), hu=rng.uniform(35, 45))
    cv.paint(cv.ellipsoid(body.at(0, 0, 180), body.size(15, 8, 12)), LYMPHOID)  # tonsils
    if brown_fat:
        for _ in range(int(rng.integers(6, 16))):
            centre = body.at(rng.choice((-1, 1)) * rng.uniform(45, 100), rng.uniform(-10, 35),
                             rng.uniform(225, 285))
            cv.paint(cv.ellipsoid(centre, [rng.uniform(5, 10)] * 3), BROWN_FAT,
                     suv=cv.defaults[BROWN_FAT][0] * rng.uniform(0.6, 1.4), only=(FAT, MUSCLE))


def node_stations(body: Body) -> dict:
    """Lymph-node stations: name -> list of (centre xyz, jitter xyz) in canvas mm."""
    s = body.lean
    stations = {
        "cervical": [(body.at(side * 38, 0, 230), (8 * s, 10 * s, 15)) for side in (-1, 1)],
        "axillary": [(body.at(side * 125, 5, 315), (15 * s, 15 * s, 15)) for side in (-1, 1)],
        "mediastinal": [(body.at(0, -10, 375), (15 * s, 20 * s, 30))],
        "para-aortic": [(body.at(side * 35, 30, 690), (10 * s, 10 * s, 50)) for side in (-1, 1)],
        "iliac": [(body.at(side * 55, 10, 810), (10 * s, 12 * s, 25)) for side in (-1, 1)],
        "inguinal": [(body.at(side * 85, -50, 900), (12 * s, 12 * s, 15)) for side in (-1, 1)],
    }
    return stations


def draw_anatomy(cv: Canvas, body: Body, table_y: float, rng: np.random.Generator,
                 brown_fat: bool) -> None:
    """Paint the whole body onto the canvas (order matters: later structures override earlier ones)."""
    _outline(cv, body, table_y, rng)
    _chest(cv, body, rng)
    _abdomen(cv, body, rng)
    _skeleton(cv, body)
    _head_neck(cv, body, rng, brown_fat)
