"""Count NaN/Inf voxels straight from a NIfTI file's bytes.

ITK before version 6 (so SimpleITK 2.x) replaces every non-finite float voxel with 0 while reading NIfTI
(InsightSoftwareConsortium/ITK pull request 6683): a NaN in a PET would silently become a cold voxel.
Other formats (NRRD, MetaImage) keep NaN and are checked on the read array instead.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np

FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
CHUNK_VOXELS = 1 << 22


def _header(head: bytes):
    """(endianness, datatype, dims, vox_offset) of a NIfTI-1 or NIfTI-2 header, or None."""
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            return endian, datatype, dims, offset
        if size == 540 and len(head) >= 176:
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            return endian, datatype, dims, offset
    return None


def count_nonfinite(path: Path) -> Optional[int]:
    """Non-finite voxels of a float NIfTI file; None when the file is not NIfTI or not float."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        parsed = _header(stream.read(540))
        if parsed is None:
            return None
        endian, datatype, dims, offset = parsed
        if datatype not in FLOAT_TYPES or not 1 <= dims[0] <= 7:
            return None
        dtype = np.dtype(endian + FLOAT_TYPES[datatype])
        remaining = int(np.prod([max(1, d) for d in dims[1:1 + dims[0]]], dtype=np.int64))
        stream.seek(max(offset, 352))
        bad = 0
        while remaining > 0:
            chunk = stream.read(min(remaining, CHUNK_VOXELS) * dtype.itemsize)
            if not chunk:
                break
            values = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype)
            bad += int(np.count_nonzero(~np.isfinite(values)))
            remaining -= values.size
    return bad
