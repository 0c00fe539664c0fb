"""A minimal DICOM PET series writer for tests (explicit or implicit VR little endian).

SimpleITK cannot write the nested RadiopharmaceuticalInformationSequence, so the test files are encoded
here directly, element by element, with exactly the tags the SUV conversion reads.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
LONG_VRS = {"OB", "OW", "SQ", "UN", "UT"}
UID_ROOT = "1.2.826.0.1.3680043.9.7777"  # test-only UID root


def _pad(vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    return value


def _encode_value(vr: str, value) -> bytes:
    if isinstance(value, bytes):
        return value
    if vr == "US":
        return struct.pack("<H", value)
    if vr == "UL":
        return struct.pack("<I", value)
    return str(value).encode("latin-1")


def element(tag, vr: str, value, explicit: bool) -> bytes:
    group, elem = tag
    data = _pad(vr, _encode_value(vr, value))
    head = struct.pack("<HH", group, elem)
    if not explicit:
        return head + struct.pack("<I", len(data)) + data
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", len(data)) + data
    return head + vr.encode() + struct.pack("<H", len(data)) + data


def sequence(tag, items, explicit: bool) -> bytes:
    """Undefined-length sequence of undefined-length items (each item: list of (tag, vr, value))."""
    group, elem = tag
    out = struct.pack("<HH", group, elem)
    out += (b"SQ\0\0" if explicit else b"") + struct.pack("<I", 0xFFFFFFFF)
    for item in items:
        out += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        out += b"".join(element(t, vr, v, explicit) for t, vr, v in sorted(item))
        out += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return out + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def write_pet_series(
    folder: Path,
    stored_zyx: np.ndarray,
    slopes,
    spacing_xyz=(4.0, 4.0, 3.0),
    origin_xyz=(0.0, 0.0, 0.0),
    tags=None,
    radiopharmaceutical=None,
    explicit: bool = True,
) -> list:
    """Write one file per slice. stored_zyx: int16 stored values; slopes: per slice rescale slope.

    tags: extra top-level {(group, elem): (vr, value)}; None values drop a tag. radiopharmaceutical:
    {(group, elem): (vr, value)} for the single item of (0054,0016), or None to omit the sequence.
    """
    folder.mkdir(parents=True, exist_ok=True)
    syntax = EXPLICIT_LE if explicit else IMPLICIT_LE
    series_uid = f"{UID_ROOT}.1"
    rows, columns = stored_zyx.shape[1:]
    paths = []
    for index, plane in enumerate(stored_zyx):
        sop_uid = f"{UID_ROOT}.2.{index + 1}"
        z = origin_xyz[2] + index * spacing_xyz[2]
        base = {
            (0x0008, 0x0016): ("UI", PET_STORAGE),
            (0x0008, 0x0018): ("UI", sop_uid),
            (0x0008, 0x0060): ("CS", "PT"),
            (0x0010, 0x0010): ("PN", "TEST^PHANTOM"),
            (0x0020, 0x000D): ("UI", f"{UID_ROOT}.0"),
            (0x0020, 0x000E): ("UI", series_uid),
            (0x0020, 0x0013): ("IS", index + 1),
            (0x0020, 0x0032): ("DS", f"{origin_xyz[0]}\\{origin_xyz[1]}\\{z}"),
            (0x0020, 0x0037): ("DS", "1\\0\\0\\0\\1\\0"),
            (0x0020, 0x0052): ("UI", f"{UID_ROOT}.3"),
            (0x0028, 0x0002): ("US", 1),
            (0x0028, 0x0004): ("CS", "MONOCHROME2"),
            (0x0028, 0x0010): ("US", rows),
            (0x0028, 0x0011): ("US", columns),
            (0x0028, 0x0030): ("DS", f"{spacing_xyz[1]}\\{spacing_xyz[0]}"),
            (0x0018, 0x0050): ("DS", spacing_xyz[2]),
            (0x0028, 0x0100): ("US", 16),
            (0x0028, 0x0101): ("US", 16),
            (0x0028, 0x0102): ("US", 15),
            (0x0028, 0x0103): ("US", 1),
            (0x0028, 0x1052): ("DS", "0"),
            (0x0028, 0x1053): ("DS", repr(float(slopes[index]))),
        }
        for tag, spec in (tags or {}).items():
            if spec is None:
                base.pop(tag, None)
            else:
                base[tag] = spec
        body = b"".join(element(tag, vr, value, explicit) for tag, (vr, value) in sorted(base.items()))
        if radiopharmaceutical is not None:
            item = [(tag, vr, value) for tag, (vr, value) in radiopharmaceutical.items()]
            seq = sequence((0x0054, 0x0016), [item], explicit)
            # Elements must stay in ascending tag order: insert the sequence before the first tag > (0054,0016).
            parts = [element(t, vr, v, explicit) for t, (vr, v) in sorted(base.items()) if t < (0x0054, 0x0016)]
            rest = [element(t, vr, v, explicit) for t, (vr, v) in sorted(base.items()) if t > (0x0054, 0x0016)]
            body = b"".join(parts) + seq + b"".join(rest)
        pixels = np.ascontiguousarray(plane, dtype="<i2").tobytes()
        body += element((0x7FE0, 0x0010), "OW", pixels, explicit)

        meta_items = [
            element((0x0002, 0x0001), "OB", b"\0\1", True),
            element((0x0002, 0x0002), "UI", PET_STORAGE, True),
            element((0x0002, 0x0003), "UI", sop_uid, True),
            element((0x0002, 0x0010), "UI", syntax, True),
            element((0x0002, 0x0012), "UI", f"{UID_ROOT}.9", True),
        ]
        meta = b"".join(meta_items)
        meta = element((0x0002, 0x0000), "UL", len(meta), True) + meta
        path = folder / f"slice{index:03d}.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + meta + body)
        paths.append(path)
    return paths
