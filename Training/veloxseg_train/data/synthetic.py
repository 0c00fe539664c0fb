"""Synthetic whole-body FDG PET/CT phantoms, deterministic by seed.

`generate_case(seed)` paints the anatomy (base organs, then per-case variants: arms, breasts, thyroid,
ureters, exercised muscles, joints, injection site, contamination, metal, field of view) and lesions on the
PET grid (the truth), then images it: PET = truth x smooth organ texture, blurred to the scanner resolution
(Gaussian, FWHM drawn per case), plus count noise whose variance grows with the local uptake (per-case
level), correlated over a per-case length like reconstructed PET noise. CT = the HU map, sometimes slightly
misregistered, resampled onto its own finer grid with its own field of view (always axis-aligned, while
some PETs are slightly tilted), then a smooth or sharp reconstruction kernel, metal streaks where there is
metal, and quantum noise, stored as int16 HU. The label is the lesion truth on the PET grid, before blur;
the organ map (organs.ORGAN_NAMES codes, lesions keeping their host organ's code) lies on the same grid.

A `PhantomConfig` is a family of phantoms: `PhantomConfig()` is the training family,
`PhantomConfig.held_out()` draws bodies, organs and imaging from ranges the training family never uses,
as a stand-in for data from another source (validation only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import physical_box
from .phantom_anatomy import AnatomyRanges, Spec, draw, draw_anatomy, sample_body, sample_tissue_values
from .phantom_canvas import Canvas
from .phantom_lesions import measure_contrast, place_lesions
from .phantom_variants import draw_variants, extra_front_depth, extra_half_width, sample_variants

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MODEL_SPACING_XYZ = (2.036, 2.036, 3.0)  # AutoPET-II grid; half the phantoms are drawn on it


@dataclass(frozen=True)
class PhantomConfig:
    """What varies between phantoms, and how much (ranges are uniform draws per case)."""

    lesion_free_fraction: float = 0.15
    mean_extra_lesions: float = 3.0  # lesions per case = 1 + Poisson(this), capped at max_lesions
    max_lesions: int = 10
    model_grid_fraction: float = 0.4  # PET exactly on the model grid; the others on pet_in_plane x pet_slice
    pet_in_plane_mm: Spec = (2.0, 5.4)
    pet_slice_mm: Spec = (2.0, 5.0)
    tilt_fraction: float = 0.15  # PET with slightly rotated direction cosines (up to 4 degrees)
    brown_fat_fraction: float = 0.2
    fwhm_mm: Spec = (4.0, 8.0)
    noise_level: Spec = (0.01, 0.15)  # noise variance per SUV unit (count level)
    noise_grain: Spec = (0.5, 1.1)  # correlation length of the PET noise, voxels
    ct_noise_hu: Spec = (5.0, 40.0)
    ct_spacing_mm: Spec = (0.9, 1.6)  # in-plane; slices are 2, 3, 3.75 or 5 mm
    ct_kernel_odds: Tuple[float, float, float] = (0.4, 0.35, 0.25)  # as reconstructed, smooth, sharp
    misregistration_mm: float = 4.0  # CT shifted by up to this per axis (half the cases)
    anatomy: AnatomyRanges = AnatomyRanges()
    variants: bool = True  # arms, breasts, exercised muscles, ... (False: the base anatomy only)
    pet_spacing_mm: Optional[Tuple[float, float, float]] = None  # fixed PET grid (e.g. coarse, for tests)

    @classmethod
    def held_out(cls, **changes) -> PhantomConfig:
        """The validation family: body, organs and imaging from ranges outside the training family's."""
        values = dict(anatomy=AnatomyRanges.held_out(), fwhm_mm=((3.2, 4.0), (8.0, 9.5)),
                      noise_level=((0.005, 0.01), (0.15, 0.25)), noise_grain=(1.1, 1.5),
                      ct_noise_hu=((2.0, 5.0), (40.0, 60.0)), pet_in_plane_mm=((1.6, 2.0), (5.4, 6.0)),
                      model_grid_fraction=0.0, misregistration_mm=6.0)
        values.update(changes)
        return cls(**values)

    @classmethod
    def family(cls, name: str, **changes) -> PhantomConfig:
        if name == "train":
            return cls(**changes)
        if name == "held_out":
            return cls.held_out(**changes)
        raise ValueError(f"unknown phantom family {name!r} (train or held_out)")


@dataclass
class SyntheticCase:
    ct: sitk.Image  # int16 HU, own grid
    pet: sitk.Image  # float32 SUVbw
    label: sitk.Image  # uint8 0/1 on the PET grid
    organs: Optional[sitk.Image] = None  # uint8 organ codes (organs.ORGAN_NAMES) on the PET grid
    lesions: List[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _axis(extent_lo: float, extent_hi: float, spacing: float) -> np.ndarray:
    """Voxel centres covering [lo, hi], centred on the interval."""
    n = max(1, int(np.ceil((extent_hi - extent_lo) / spacing)))
    start = 0.5 * (extent_lo + extent_hi) - 0.5 * (n - 1) * spacing
    return start + spacing * np.arange(n)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 2))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def _upsample_linear(coarse: np.ndarray, shape) -> np.ndarray:
    """Linear interpolation of a coarse array onto `shape`, one axis at a time (cheap for big outputs)."""
    out = coarse
    for axis, n in enumerate(shape):
        pos = np.linspace(0.0, out.shape[axis] - 1.0, n, dtype=np.float32)
        lo = np.minimum(pos.astype(int), out.shape[axis] - 2)
        w = (pos - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1.0 - w) + np.take(out, lo + 1, axis=axis) * w
    return out.astype(np.float32, copy=False)


def _smooth_field(shape, rng: np.random.Generator, cell: int = 8) -> np.ndarray:
    """Zero-mean, unit-scale random field varying over about `cell` voxels (organ heterogeneity)."""
    coarse = rng.standard_normal([max(2, -(-n // cell) + 1) for n in shape]).astype(np.float32)
    return _upsample_linear(coarse, shape)


def _correlated_noise(shape, rng: np.random.Generator, sigma: float = 0.7) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over ~1 voxel, like reconstructed PET noise."""
    white = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(white, sigma, mode="nearest")
    impulse = np.zeros((9, 9, 9), np.float32)
    impulse[4, 4, 4] = 1.0
    gain = np.sqrt(np.sum(ndimage.gaussian_filter(impulse, sigma, mode="constant") ** 2))
    return smooth / gain


def _ct_kernel(ct: np.ndarray, kernel: str, rng: np.random.Generator) -> np.ndarray:
    """The CT's reconstruction kernel: as resampled, smoothed (soft-tissue kernel) or sharpened (bone)."""
    if kernel == "smooth":
        return ndimage.gaussian_filter(ct, (0.0, *[rng.uniform(0.5, 1.2)] * 2))
    if kernel == "sharp":
        blurred = ndimage.gaussian_filter(ct, (0.0, 1.0, 1.0))
        return ct + rng.uniform(0.5, 1.5) * (ct - blurred)
    return ct


def _metal_streaks(ct: np.ndarray, centres, ct_origin, ct_spacing, rng: np.random.Generator) -> None:
    """Bright and dark streaks radiating from metal in the axial slices it crosses (beam hardening)."""
    spacing = np.asarray(ct_spacing, float)
    yy, xx = np.mgrid[0:ct.shape[1], 0:ct.shape[2]].astype(np.float32)
    x_mm, y_mm = xx * spacing[0] + ct_origin[0], yy * spacing[1] + ct_origin[1]
    for centre in centres:
        k0 = int(round((centre[2] - ct_origin[2]) / spacing[2]))
        reach = max(1, int(round(20.0 / spacing[2])))
        angles = rng.uniform(0, np.pi, int(rng.integers(6, 16)))
        amplitudes = rng.choice((-1, 1), len(angles)) * rng.uniform(150, 900, len(angles))
        dx, dy = x_mm - centre[0], y_mm - centre[1]
        radius = np.sqrt(dx * dx + dy * dy) + 1.0
        pattern = np.zeros_like(x_mm)
        for angle, amplitude in zip(angles, amplitudes):
            perpendicular = np.abs(-np.sin(angle) * dx + np.cos(angle) * dy)
            pattern += amplitude * np.exp(-0.5 * (perpendicular / 2.0) ** 2)
        pattern *= np.exp(-radius / 150.0)
        for k in range(max(0, k0 - reach), min(ct.shape[0], k0 + reach + 1)):
            ct[k] += pattern * (1.0 - abs(k - k0) / (reach + 1))


def _image(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def generate_case(seed: int, lesion_free: Optional[bool] = None,
                  config: Optional[PhantomConfig] = None) -> SyntheticCase:
    """One phantom. The same seed (and config, and `lesion_free`) gives identical images."""
    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    drawn_free = rng.random() < config.lesion_free_fraction
    lesion_free = drawn_free if lesion_free is None else bool(lesion_free)
    body = sample_body(rng, config.anatomy)
    values = sample_tissue_values(rng, config.anatomy.uptake_scale)
    variants = sample_variants(rng, body) if config.variants else None

    # PET grid = phantom grid, body-fitted field of view.
    on_model_grid = rng.random() < config.model_grid_fraction
    in_plane, slice_mm = draw(rng, config.pet_in_plane_mm), draw(rng, config.pet_slice_mm)
    if config.pet_spacing_mm is not None:
        spacing = np.array(config.pet_spacing_mm, float)
    elif on_model_grid:
        spacing = np.array(MODEL_SPACING_XYZ)
    else:
        spacing = np.array([in_plane, in_plane, slice_mm])
    half_width, y_min, y_max = body.half_extent()
    if variants is not None:
        half_width += extra_half_width(body, variants)
        y_min -= extra_front_depth(body, variants)
    margin = rng.uniform(10, 40)
    table_y = y_max + rng.uniform(3, 15)
    x = _axis(-half_width - margin, half_width + margin, spacing[0])
    y = _axis(y_min - rng.uniform(10, 30), table_y + 25, spacing[1])
    if variants is not None:
        z = _axis(float(body.z(variants.depth_range[1])), float(body.z(variants.depth_range[0])), spacing[2])
    else:
        z = _axis(float(body.z(body.scan_depth)), rng.uniform(10, 40), spacing[2])
    canvas = Canvas(x, y, z, values)
    draw_anatomy(canvas, body, table_y, rng, brown_fat=rng.random() < config.brown_fat_fraction)
    if variants is not None:
        draw_variants(canvas, body, variants, rng)

    label = np.zeros(canvas.tissue.shape, np.uint8)
    count = 0 if lesion_free else min(config.max_lesions, 1 + int(rng.poisson(config.mean_extra_lesions)))
    lesions = place_lesions(canvas, body, label, count, rng)

    # PET imaging.
    texture = _smooth_field(canvas.suv.shape, rng)
    truth = canvas.suv * (1.0 + 0.08 * np.clip(texture, -3, 3))
    fwhm = draw(rng, config.fwhm_mm)
    blurred = ndimage.gaussian_filter(truth, fwhm * FWHM_TO_SIGMA / spacing[::-1], mode="nearest")
    measure_contrast(canvas, blurred, label, lesions)
    noise_level = draw(rng, config.noise_level)
    grain = draw(rng, config.noise_grain)
    pet = blurred + np.sqrt(np.maximum(blurred, 0.0) * noise_level) * _correlated_noise(blurred.shape, rng, grain)
    np.maximum(pet, 0.0, out=pet)

    # Geometry: the canvas frame placed in LPS space, sometimes slightly tilted.
    tilted = rng.random() < config.tilt_fraction
    direction = _rotation(rng, 4.0) if tilted else np.eye(3)
    vertex = np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-150, 250)])
    origin = vertex + direction @ np.array([x[0], y[0], z[0]])
    pet_image = _image(pet.astype(np.float32), spacing, origin, direction)
    label_image = _image(label, spacing, origin, direction)
    organ_image = _image(canvas.organ, spacing, origin, direction)

    # CT: own axis-aligned grid, finer in-plane, wider in-plane and a little shorter than the PET.
    ct_spacing = np.array([0.0, 0.0, rng.choice([2.0, 3.0, 3.75, 5.0])])
    ct_spacing[:2] = draw(rng, config.ct_spacing_mm)
    lo, hi = physical_box(pet_image)
    grow = np.array([rng.uniform(0, 40), rng.uniform(0, 40), -rng.uniform(0, 20)])
    lo, hi = lo - grow, hi + grow
    ct_size = [int(n) for n in np.maximum(1, np.floor((hi - lo) / ct_spacing))]
    ct_origin = [float(v) for v in lo + ct_spacing / 2]
    shift = rng.uniform(-1, 1, 3) * config.misregistration_mm if rng.random() < 0.5 else np.zeros(3)
    hu = _image(canvas.hu + 10.0 * texture, spacing, origin + shift, direction)
    ct = sitk.GetArrayFromImage(sitk.Resample(hu, ct_size, sitk.Transform(), sitk.sitkLinear, ct_origin,
                                              [float(s) for s in ct_spacing], np.eye(3).ravel().tolist(),
                                              -1000.0, sitk.sitkFloat32))
    kernel = ("as_is", "smooth", "sharp")[int(rng.choice(3, p=np.asarray(config.ct_kernel_odds) /
                                                          np.sum(config.ct_kernel_odds)))]
    ct = _ct_kernel(ct, kernel, rng)
    if variants is not None and variants.metal_centres_mm:
        centres = [vertex + direction @ np.asarray(c) + shift for c in variants.metal_centres_mm]
        _metal_streaks(ct, centres, ct_origin, ct_spacing, rng)
    ct_noise = draw(rng, config.ct_noise_hu)
    ct += ct_noise * rng.standard_normal(ct.shape, dtype=np.float32)
    ct_image = _image(np.clip(np.round(ct), -1024, 3071).astype(np.int16), ct_spacing, ct_origin, np.eye(3))

    lesion_dicts = []
    for lesion in lesions:
        entry = lesion.as_dict()
        entry["centre_lps_mm"] = [round(float(v), 2) for v in vertex + direction @ np.array(entry.pop("centre"))]
        entry["radii_mm"] = [round(float(v), 2) for v in entry.pop("radii")]
        for key in ("suv_max", "background_suv", "contrast"):
            entry[key] = round(float(entry[key]), 3)
        lesion_dicts.append(entry)
    info = {
        "seed": int(seed), "lesion_free": not lesions, "lesion_count": len(lesions),
        "lesion_voxels": int(label.sum()), "pet_spacing_mm": [round(float(s), 4) for s in spacing],
        "pet_size": list(pet_image.GetSize()), "ct_spacing_mm": [round(float(s), 4) for s in ct_spacing],
        "ct_size": list(ct_image.GetSize()), "tilted": bool(tilted), "fwhm_mm": round(float(fwhm), 3),
        "noise_level": round(float(noise_level), 4), "ct_noise_hu": round(float(ct_noise), 2),
        "height_scale": round(body.height, 3), "fat_mm": round(body.fat, 1), "ct_kernel": kernel,
        "misregistration_mm": [round(float(v), 2) for v in shift],
        "variants": variants.as_dict() if variants is not None else None,
    }
    return SyntheticCase(ct_image, pet_image, label_image, organ_image, lesion_dicts, info)
