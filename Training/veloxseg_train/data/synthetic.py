"""Synthetic whole-body FDG PET/CT phantoms, deterministic by seed.

`generate_case(seed)` paints the anatomy and lesions on the PET grid (the truth), then images it:
PET = truth x smooth organ texture, blurred to the scanner resolution (Gaussian, FWHM 5.5-7.5 mm), plus
count noise whose variance grows with the local uptake (per-case level), correlated over about a voxel
like reconstructed PET noise. CT = the HU map resampled onto its own finer grid with its own field of
view (always axis-aligned, while some PETs are slightly tilted) plus quantum noise, stored as int16 HU.
The label is the lesion truth on the PET grid, before blur.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import physical_box
from .phantom_anatomy import draw_anatomy, sample_body, sample_tissue_values
from .phantom_canvas import Canvas
from .phantom_lesions import measure_contrast, place_lesions

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MODEL_SPACING_XYZ = (2.036, 2.036, 3.0)  # AutoPET-II grid; half the phantoms are drawn on it


@dataclass(frozen=True)
class PhantomConfig:
    """What varies between phantoms, and how much (ranges are uniform draws per case)."""

    lesion_free_fraction: float = 0.15
    mean_extra_lesions: float = 3.0  # lesions per case = 1 + Poisson(this), capped at max_lesions
    max_lesions: int = 10
    model_grid_fraction: float = 0.5  # PET exactly on the model grid; the others on 2.0-4.0 x 2.5-3.3 mm
    tilt_fraction: float = 0.15  # PET with slightly rotated direction cosines (up to 4 degrees)
    brown_fat_fraction: float = 0.2
    fwhm_mm: Tuple[float, float] = (5.5, 7.5)
    noise_level: Tuple[float, float] = (0.02, 0.08)  # noise variance per SUV unit
    ct_noise_hu: Tuple[float, float] = (8.0, 25.0)
    ct_spacing_mm: Tuple[float, float] = (1.2, 1.6)  # in-plane; slices are 3, 3.75 or 5 mm
    pet_spacing_mm: Optional[Tuple[float, float, float]] = None  # fixed PET grid (e.g. coarse, for tests)


@dataclass
class SyntheticCase:
    ct: sitk.Image  # int16 HU, own grid
    pet: sitk.Image  # float32 SUVbw
    label: sitk.Image  # uint8 0/1 on the PET grid
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
    body = sample_body(rng)
    values = sample_tissue_values(rng)

    # PET grid = phantom grid, body-fitted field of view.
    on_model_grid = rng.random() < config.model_grid_fraction
    in_plane, slice_mm = rng.uniform(2.0, 4.0), rng.uniform(2.5, 3.3)
    if config.pet_spacing_mm is not None:
        spacing = np.array(config.pet_spacing_mm, float)
    elif on_model_grid:
        spacing = np.array(MODEL_SPACING_XYZ)
    else:
        spacing = np.array([in_plane, in_plane, slice_mm])
    half_width, y_min, y_max = body.half_extent()
    margin = rng.uniform(10, 40)
    table_y = y_max + rng.uniform(3, 15)
    x = _axis(-half_width - margin, half_width + margin, spacing[0])
    y = _axis(y_min - rng.uniform(10, 30), table_y + 25, spacing[1])
    z = _axis(float(body.z(body.scan_depth)), rng.uniform(10, 40), spacing[2])
    canvas = Canvas(x, y, z, values)
    draw_anatomy(canvas, body, table_y, rng, brown_fat=rng.random() < config.brown_fat_fraction)

    label = np.zeros(canvas.tissue.shape, np.uint8)
    count = 0 if lesion_free else min(config.max_lesions, 1 + int(rng.poisson(config.mean_extra_lesions)))
    lesions = place_lesions(canvas, body, label, count, rng)

    # PET imaging.
    texture = _smooth_field(canvas.suv.shape, rng)
    truth = canvas.suv * (1.0 + 0.08 * np.clip(texture, -3, 3))
    fwhm = rng.uniform(*config.fwhm_mm)
    blurred = ndimage.gaussian_filter(truth, fwhm * FWHM_TO_SIGMA / spacing[::-1], mode="nearest")
    measure_contrast(canvas, blurred, label, lesions)
    noise_level = rng.uniform(*config.noise_level)
    pet = blurred + np.sqrt(np.maximum(blurred, 0.0) * noise_level) * _correlated_noise(blurred.shape, rng)
    np.maximum(pet, 0.0, out=pet)

    # Geometry: the canvas frame placed in LPS space, sometimes slightly tilted.
    tilted = rng.random() < config.tilt_fraction
    direction = _rotation(rng, 4.0) if tilted else np.eye(3)
    vertex = np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-150, 250)])
    origin = vertex + direction @ np.array([x[0], y[0], z[0]])
    pet_image = _image(pet.astype(np.float32), spacing, origin, direction)
    label_image = _image(label, spacing, origin, direction)

    # CT: own axis-aligned grid, finer in-plane, wider in-plane and a little shorter than the PET.
    ct_spacing = np.array([0.0, 0.0, rng.choice([3.0, 3.75, 5.0])])
    ct_spacing[:2] = rng.uniform(*config.ct_spacing_mm)
    lo, hi = physical_box(pet_image)
    grow = np.array([rng.uniform(0, 40), rng.uniform(0, 40), -rng.uniform(0, 20)])
    lo, hi = lo - grow, hi + grow
    ct_size = [int(n) for n in np.maximum(1, np.floor((hi - lo) / ct_spacing))]
    ct_origin = [float(v) for v in lo + ct_spacing / 2]
    hu = _image(canvas.hu + 10.0 * texture, spacing, origin, direction)
    ct = sitk.GetArrayFromImage(sitk.Resample(hu, ct_size, sitk.Transform(), sitk.sitkLinear, ct_origin,
                                              [float(s) for s in ct_spacing], np.eye(3).ravel().tolist(),
                                              -1000.0, sitk.sitkFloat32))
    ct_noise = rng.uniform(*config.ct_noise_hu)
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
        "height_scale": round(body.height, 3), "fat_mm": round(body.fat, 1),
    }
    return SyntheticCase(ct_image, pet_image, label_image, lesion_dicts, info)
