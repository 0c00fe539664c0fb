"""Crop augmentation: rotation about the z axis and flip along z, each selectable.

Arrays are (z, y, x), so a rotation "about z" turns the axial y-x plane around the crop centre (the
reference's RandRotated about its third, through-plane axis). Images are resampled trilinearly with border
padding, the label with nearest neighbour, through one shared sampling grid so they stay aligned. The z-flip
(the paper's augmentation) reverses the slice order of image and label together.

Parameters are drawn from the caller's numpy Generator (restorable on resume); the resampling itself runs
in torch on whatever device the crop is on, so on a GPU it costs next to nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    rotate: bool = True
    rotate_range_deg: float = 15.0
    rotate_p: float = 0.5
    flip_z: bool = False
    flip_z_p: float = 0.5

    @classmethod
    def from_config(cls, config) -> AugmentSettings:
        return cls(config.rotate, config.rotate_range_deg, config.rotate_p, config.flip_z, config.flip_z_p)


@dataclass(frozen=True)
class AugmentParams:
    angle_rad: float = 0.0  # rotation in the y-x plane; 0 = none
    flip_z: bool = False


def draw_params(settings: AugmentSettings, rng: np.random.Generator) -> AugmentParams:
    """Random parameters for one crop. Always consumes the same number of draws, whatever is enabled."""
    u_rotate, u_angle, u_flip = rng.random(3)
    angle = 0.0
    if settings.rotate and u_rotate < settings.rotate_p:
        angle = math.radians(settings.rotate_range_deg) * (2.0 * u_angle - 1.0)
    flip = bool(settings.flip_z and u_flip < settings.flip_z_p)
    return AugmentParams(angle, flip)


def rotate_z(image: torch.Tensor, label: torch.Tensor, angle_rad: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate (C, Z, Y, X) image and (Z, Y, X) label by `angle_rad` in the y-x plane about the centre.

    Assumes square y-x voxels (true on the model grid), so the normalised-coordinate rotation is a
    physical one when Y == X.
    """
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    # affine_grid works on (x, y, z) normalised coordinates; z is left untouched.
    theta = torch.tensor([[cos, -sin, 0.0, 0.0], [sin, cos, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
                         dtype=torch.float32, device=image.device)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape[1:]], align_corners=False)
    image_out = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)[0].to(image.dtype)
    label_out = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="border",
                              align_corners=False)[0, 0].to(label.dtype)
    return image_out, label_out


def apply(image: torch.Tensor, label: torch.Tensor, params: AugmentParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply `params` to one crop: image (C, Z, Y, X), label (Z, Y, X)."""
    if params.angle_rad != 0.0:
        image, label = rotate_z(image, label, params.angle_rad)
    if params.flip_z:
        image, label = image.flip(1), label.flip(0)
    return image, label
