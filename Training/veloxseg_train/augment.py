"""Crop augmentation: geometry (rotation about z, flip along z, anisotropic scaling, elastic deformation)
and intensity (PET calibration scale, PET blur and count noise, CT contrast), each switched and sized in the
config's [augment] section.

Arrays are (z, y, x), so a rotation "about z" turns the axial y-x plane around the crop centre (the
reference's RandRotated about its third, through-plane axis). Rotation, scaling and the elastic field form
one sampling grid: images are resampled trilinearly with border padding, the label with nearest neighbour,
so they stay aligned. The z-flip (the paper's augmentation) reverses the slice order of image and label
together. Intensity changes work on the normalised channels through the data set's constants, so an SUV
scale of 1.2 is exactly "the scanner reads 20 % high".

Parameters are drawn from the caller's numpy Generator (restorable on resume); the number of draws per
crop depends only on the settings, not on the outcome. The resampling runs in torch on whatever device the
crop is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ELASTIC_GRID = 4  # control points per axis of the elastic displacement field


@dataclass(frozen=True)
class AugmentSettings:
    rotate: bool = True
    rotate_range_deg: float = 15.0
    rotate_p: float = 0.5
    flip_z: bool = False
    flip_z_p: float = 0.5
    scale_p: float = 0.0  # anisotropic scaling, each axis by its own factor
    scale_range: Tuple[float, float] = (0.85, 1.15)
    elastic_p: float = 0.0
    elastic_voxels: float = 3.0  # standard deviation of the control-point displacements
    pet_scale_p: float = 0.0  # SUV calibration: all PET values x one factor
    pet_scale_range: Tuple[float, float] = (0.8, 1.25)
    pet_blur_p: float = 0.0  # coarser PET resolution: Gaussian, sigma in voxels
    pet_blur_sigma: Tuple[float, float] = (0.3, 1.2)
    pet_noise_p: float = 0.0  # extra count noise, standard deviation sigma * sqrt(SUV)
    pet_noise_sigma: Tuple[float, float] = (0.05, 0.3)
    ct_contrast_p: float = 0.0  # CT deviations from the mean x one factor
    ct_contrast_range: Tuple[float, float] = (0.85, 1.15)
    pet_mean: float = 0.0  # normalisation constants of the PET channel (set by the trainer)
    pet_std: float = 1.0

    @classmethod
    def from_config(cls, config, normalization: Optional[dict] = None) -> AugmentSettings:
        pet = (normalization or {}).get("PET", {"mean": 0.0, "std": 1.0})
        return cls(config.rotate, config.rotate_range_deg, config.rotate_p, config.flip_z, config.flip_z_p,
                   config.scale_p, tuple(config.scale_range), config.elastic_p, config.elastic_voxels,
                   config.pet_scale_p, tuple(config.pet_scale_range), config.pet_blur_p,
                   tuple(config.pet_blur_sigma), config.pet_noise_p, tuple(config.pet_noise_sigma),
                   config.ct_contrast_p, tuple(config.ct_contrast_range), float(pet["mean"]), float(pet["std"]))

    @property
    def extended(self) -> bool:
        """Any augmentation beyond the reference's rotation and flip?"""
        return any(p > 0 for p in (self.scale_p, self.elastic_p, self.pet_scale_p, self.pet_blur_p,
                                   self.pet_noise_p, self.ct_contrast_p))


@dataclass(frozen=True)
class AugmentParams:
    angle_rad: float = 0.0  # rotation in the y-x plane; 0 = none
    flip_z: bool = False
    scale_zyx: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    elastic: Optional[np.ndarray] = None  # (3, G, G, G) control-point displacements in voxels (z, y, x)
    pet_scale: float = 1.0
    pet_blur_sigma: float = 0.0
    pet_noise_sigma: float = 0.0
    noise_seed: int = 0
    ct_contrast: float = 1.0
    pet_mean: float = 0.0
    pet_std: float = 1.0

    def __eq__(self, other) -> bool:  # the elastic array makes the dataclass default unusable
        if not isinstance(other, AugmentParams):
            return NotImplemented
        a, b = self.__dict__.copy(), other.__dict__.copy()
        ea, eb = a.pop("elastic"), b.pop("elastic")
        same_elastic = (ea is None and eb is None) or (ea is not None and eb is not None and np.array_equal(ea, eb))
        return a == b and same_elastic


def _pick(u_on: float, p: float, u_value: float, bounds: Tuple[float, float], default: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * u_value) if u_on < p else float(default)


def draw_params(settings: AugmentSettings, rng: np.random.Generator) -> AugmentParams:
    """Random parameters for one crop. The number of draws depends only on `settings` (3 for the
    reference's rotation and flip; a fixed larger number when any extended augmentation is on)."""
    u_rotate, u_angle, u_flip = rng.random(3)
    angle = 0.0
    if settings.rotate and u_rotate < settings.rotate_p:
        angle = math.radians(settings.rotate_range_deg) * (2.0 * u_angle - 1.0)
    flip = bool(settings.flip_z and u_flip < settings.flip_z_p)
    if not settings.extended:
        return AugmentParams(angle, flip)
    u = rng.random(14)
    field = rng.standard_normal((3, ELASTIC_GRID, ELASTIC_GRID, ELASTIC_GRID)).astype(np.float32)
    noise_seed = int(rng.integers(2**31 - 1))
    scale = tuple(float(_pick(u[0], settings.scale_p, v, settings.scale_range, 1.0)) for v in u[1:4])
    elastic = field * settings.elastic_voxels if u[4] < settings.elastic_p else None
    return AugmentParams(
        angle, flip, scale, elastic,
        pet_scale=_pick(u[5], settings.pet_scale_p, u[6], settings.pet_scale_range, 1.0),
        pet_blur_sigma=_pick(u[7], settings.pet_blur_p, u[8], settings.pet_blur_sigma, 0.0),
        pet_noise_sigma=_pick(u[9], settings.pet_noise_p, u[10], settings.pet_noise_sigma, 0.0),
        noise_seed=noise_seed,
        ct_contrast=_pick(u[11], settings.ct_contrast_p, u[12], settings.ct_contrast_range, 1.0),
        pet_mean=settings.pet_mean, pet_std=settings.pet_std)


def _sampling_grid(shape, angle_rad: float, scale_zyx, elastic: Optional[np.ndarray], device) -> torch.Tensor:
    """(1, Z, Y, X, 3) grid_sample grid of the rotation about z, the scaling and the elastic field."""
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    sz, sy, sx = scale_zyx
    # affine_grid works on (x, y, z) normalised coordinates; a factor > 1 samples a smaller region, so the
    # content grows by that factor.
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = rotation @ torch.diag(torch.tensor([1.0 / sx, 1.0 / sy, 1.0 / sz], dtype=torch.float32))
    grid = F.affine_grid(theta.to(device), [1, 1, *shape], align_corners=False)
    if elastic is not None:
        coarse = torch.from_numpy(np.ascontiguousarray(elastic)).to(device)[None]  # (1, 3, G, G, G), z y x
        dense = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]
        # voxels -> normalised units, and (z, y, x) components -> grid's (x, y, z) order
        norm = torch.tensor([2.0 / s for s in shape], device=device).view(3, 1, 1, 1)
        grid = grid + (dense * norm).flip(0).permute(1, 2, 3, 0)[None]
    return grid


def rotate_z(image: torch.Tensor, label: torch.Tensor, angle_rad: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate (C, Z, Y, X) image and (Z, Y, X) label by `angle_rad` in the y-x plane about the centre.

    Assumes square y-x voxels (true on the model grid), so the normalised-coordinate rotation is a
    physical one when Y == X.
    """
    return resample(image, label, _sampling_grid(image.shape[1:], angle_rad, (1.0, 1.0, 1.0), None, image.device))


def resample(image: torch.Tensor, label: torch.Tensor, grid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image trilinear, label nearest; label (Z, Y, X) or (K, Z, Y, X) (lesion and organ codes)."""
    image_out = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)[0].to(image.dtype)
    channels = label.reshape(-1, *label.shape[-3:])
    label_out = F.grid_sample(channels[None].float(), grid, mode="nearest", padding_mode="border",
                              align_corners=False)[0].reshape(label.shape).to(label.dtype)
    return image_out, label_out


def _gaussian_blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (Z, Y, X) tensor, sigma in voxels, edges replicated."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=volume.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = volume[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0]


def _intensity(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    if params.ct_contrast == 1.0 and params.pet_scale == 1.0 and params.pet_blur_sigma == 0.0 \
            and params.pet_noise_sigma == 0.0:
        return image
    image = image.clone()
    if params.ct_contrast != 1.0:
        image[0] = image[0] * params.ct_contrast  # channel 0 is zero-mean over the body: deviations scale
    suv = image[1] * params.pet_std + params.pet_mean
    if params.pet_blur_sigma > 0:
        suv = _gaussian_blur(suv, params.pet_blur_sigma)
    suv = suv * params.pet_scale
    if params.pet_noise_sigma > 0:
        generator = torch.Generator(device=image.device).manual_seed(params.noise_seed)
        noise = torch.randn(suv.shape, generator=generator, device=image.device)
        suv = suv + params.pet_noise_sigma * torch.sqrt(suv.clamp(min=0)) * noise
    image[1] = (suv.clamp(min=0) - params.pet_mean) / params.pet_std
    return image


def apply(image: torch.Tensor, label: torch.Tensor, params: AugmentParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply `params` to one crop: image (C, Z, Y, X), label (Z, Y, X) or (K, Z, Y, X)."""
    if params.angle_rad != 0.0 or params.scale_zyx != (1.0, 1.0, 1.0) or params.elastic is not None:
        grid = _sampling_grid(image.shape[1:], params.angle_rad, params.scale_zyx, params.elastic, image.device)
        image, label = resample(image, label, grid)
    if params.flip_z:
        image, label = image.flip(1), label.flip(-3)
    return _intensity(image, params), label
