"""The organ map of a model with an organ output, and each lesion's anatomical site.

A model whose manifest has the organ entries (docs/architecture.md) returns, beside the lesion logits,
organ logits on the patch grid divided by ``organ_downsampling`` (f): one organ voxel covers an f x f x f
block of the patch. Per window the organ logits are turned into a code (their argmax) and a confidence
(its softmax probability) per organ voxel; every model-grid voxel of the block gets them, and keeps the
code of the most confident window covering it (confidences compared as float16; on equal confidence the
lower code). While the windows run one uint32 per model-grid voxel holds both, the float16 confidence's
bits above the code (so one np.maximum per window keeps the best; about 2 ms a 96^3 window); afterwards only
the uint8 code is kept. Voxels no window covered (skipped air) get code 0.

A lesion's site is the ``organ_sites`` entry of the code most frequent in the shell of SHELL_MM (8 mm)
around it on the PET grid, outside every lesion (the lesion's own voxels only when that shell is empty; each
PET voxel centre takes the code of the nearest model-grid voxel: the map nearest-neighbour resampled over
the lesion's grown box, as `veloxseg segment --organs` resamples it onto the CT grid); on a tie the lower
code wins. A model without an organ output names no site: "".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

UNKNOWN_SITE = ""  # the site of a lesion when the model has no organ output
# A lesion's site is read from the tissue around it: the organ head sees a hot lesion's own voxels as a hot
# organ (brain, thyroid), while the 8 mm around it show where it is. On the held-out phantoms (organ run,
# step 1,000) this named 22 of 28 true lesions' sites right against 15 of 28 from the lesion's own voxels.
SHELL_MM = 8.0


class OrganVotes:
    """Per voxel of a (z, y, x) volume: the organ code of the most confident window covering it."""

    def __init__(self, shape_zyx, patch_size, factor: int):
        self.shape = tuple(int(n) for n in shape_zyx)
        self.factor = int(factor)
        # windows of a volume smaller than a patch run over it padded to the patch
        padded = tuple(max(n, int(p)) for n, p in zip(self.shape, patch_size))
        # float16 bits of the confidence << 8 | (255 - code); 0: no window yet (a softmax maximum is > 0).
        # A positive float16 orders as its bits do, so the largest key is the most confident, then the lower code.
        self.keys = np.zeros(padded, dtype=np.uint32)

    def add(self, region: tuple, organ_logits: np.ndarray) -> None:
        """One window's organ logits (organs, d, h, w) on its region (z, y, x slices) of the volume."""
        logits = np.asarray(organ_logits, dtype=np.float32)
        codes = logits.argmax(axis=0)
        peak = logits.max(axis=0)
        # the softmax probability of the argmax: 1 / sum(exp(logit - max logit))
        confidence = (1.0 / np.exp(logits - peak).sum(axis=0)).astype(np.float16).view(np.uint16)
        keys = (confidence.astype(np.uint32) << 8) | (255 - codes).astype(np.uint32)
        f = self.factor
        keys = np.repeat(np.repeat(keys, f, axis=2), f, axis=1)  # blocks along y and x: (d, h*f, w*f)
        # along z by broadcasting; splitting an axis of a view is a view, so this writes into self.keys
        target = self.keys[region].reshape(keys.shape[0], f, *keys.shape[1:])
        np.maximum(target, keys[:, None], out=target)

    def result(self) -> np.ndarray:
        """The uint8 codes on the volume (padding removed; 0 where no window ran); the votes are dropped."""
        z, y, x = self.shape
        keys, self.keys = self.keys[:z, :y, :x], None
        codes = (255 - (keys & 0xFF)).astype(np.uint8)
        codes[keys == 0] = 0
        return codes


@dataclass
class OrganMap:
    """Organ codes (uint8) on the model grid, and what each code is called and stands for as a site."""

    image: sitk.Image
    names: tuple
    sites: tuple

    @classmethod
    def on_model_grid(cls, codes: np.ndarray, grid, names, sites) -> OrganMap:
        image = sitk.GetImageFromArray(np.ascontiguousarray(codes, dtype=np.uint8))
        image.SetOrigin(tuple(float(o) for o in grid.origin))
        image.SetSpacing(tuple(float(s) for s in grid.spacing))
        return cls(image, tuple(names), tuple(sites))

    def site_of_codes(self, codes: np.ndarray) -> str:
        """The site of the most frequent of these codes (the lower code on a tie); "" for none."""
        if codes.size == 0:
            return UNKNOWN_SITE
        code = int(np.argmax(np.bincount(codes.ravel(), minlength=len(self.sites))))  # first maximum: lower code
        return self.sites[code] if code < len(self.sites) else UNKNOWN_SITE

    def site_of_lesion(self, image: sitk.Image, labels: np.ndarray, label: int, start_xyz, size_xyz) -> str:
        """The site of lesion `label` of `labels` ((z, y, x) ids on `image`'s grid; its bounding box starts at
        index start_xyz, size size_xyz): the organ most frequent in the shell of SHELL_MM around it, outside
        every lesion; the lesion's own voxels only when that shell is empty."""
        grow = [max(1, int(np.ceil(SHELL_MM / s))) for s in image.GetSpacing()]  # x, y, z voxels
        lo = [max(0, int(st) - g) for st, g in zip(start_xyz, grow)]
        hi = [min(int(n), int(st) + int(sz) + g) for st, sz, g, n in zip(start_xyz, size_xyz, grow, image.GetSize())]
        around = labels[tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))]
        inside = around == label
        grown = sitk.BinaryDilate(sitk.GetImageFromArray(inside.astype(np.uint8)), grow, sitk.sitkBall)
        shell = (sitk.GetArrayViewFromImage(grown) > 0) & (around == 0)
        box = sitk.Image([int(n) for n in around.shape[::-1]], sitk.sitkUInt8)
        box.SetSpacing(image.GetSpacing())
        box.SetDirection(image.GetDirection())
        box.SetOrigin(image.TransformIndexToPhysicalPoint(lo))
        codes = self.on_grid(box)  # kept alive while its voxels are viewed
        return self.site_of_codes(sitk.GetArrayViewFromImage(codes)[shell if shell.any() else inside])

    def on_grid(self, reference: sitk.Image, threads: int = 1) -> sitk.Image:
        """The codes nearest-neighbour resampled onto the grid of `reference` (uint8; 0 beyond the model grid)."""
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(reference)
        resampler.SetTransform(sitk.Transform())
        resampler.SetInterpolator(sitk.sitkNearestNeighbor)
        resampler.SetDefaultPixelValue(0)
        resampler.SetOutputPixelType(sitk.sitkUInt8)
        if threads > 0:
            resampler.SetNumberOfThreads(threads)
        return resampler.Execute(self.image)


def site_counts(lesions) -> list:
    """[(site, lesions)] over the lesions with a known site, most frequent first (then by name)."""
    counts = {}
    for lesion in lesions:
        site = getattr(lesion, "site", UNKNOWN_SITE)
        if site:
            counts[site] = counts.get(site, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def sites_text(lesions) -> str:
    """The lesions per site as one field, e.g. "liver:2;lung:1" ("" when no site is known)."""
    return ";".join(f"{site}:{count}" for site, count in site_counts(lesions))
