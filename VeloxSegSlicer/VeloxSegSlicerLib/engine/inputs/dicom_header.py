"""Minimal DICOM header reader for the few nested tags GDCM/SimpleITK do not expose.

SimpleITK flattens only top-level attributes; the injected dose, half-life and injection time live inside
RadiopharmaceuticalInformationSequence (0054,0016). This walks the element stream of one file up to the
pixel data, in the three uncompressed-header transfer syntaxes (implicit/explicit VR little endian, and
deflate is refused), and returns the raw values. It is not a general DICOM parser.
"""

from __future__ import annotations

import struct

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

PIXEL_DATA = (0x7FE0, 0x0010)
ITEM = (0xFFFE, 0xE000)
ITEM_END = (0xFFFE, 0xE00D)
SEQUENCE_END = (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF
# Explicit-VR elements with a 2-byte reserved field and a 4-byte length.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# Sequences we must descend into even when implicit VR hides the type and the length is defined.
KNOWN_SEQUENCES = {(0x0054, 0x0016)}


class DicomHeaderError(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes, explicit: bool):
        self.data = data
        self.explicit = explicit

    def _unpack(self, fmt: str, offset: int):
        try:
            return struct.unpack_from(fmt, self.data, offset)
        except struct.error as exc:
            raise DicomHeaderError("truncated DICOM header") from exc

    def element(self, offset: int, explicit: bool):
        """-> (tag, vr or None, length, value offset)."""
        group, elem = self._unpack("<HH", offset)
        tag = (group, elem)
        if group == 0xFFFE:  # item and delimiters never carry a VR
            (length,) = self._unpack("<I", offset + 4)
            return tag, None, length, offset + 8
        if explicit:
            vr = self.data[offset + 4 : offset + 6]
            if vr in LONG_VRS:
                (length,) = self._unpack("<I", offset + 8)
                return tag, vr, length, offset + 12
            (length,) = self._unpack("<H", offset + 6)
            return tag, vr, length, offset + 8
        (length,) = self._unpack("<I", offset + 4)
        return tag, None, length, offset + 8

    def dataset(self, offset: int, end: int, explicit: bool, stop_at_item_end: bool):
        """Parse elements from offset to end (or an item delimiter) -> (dict, next offset)."""
        result = {}
        while offset < end:
            tag, vr, length, value = self.element(offset, explicit)
            if tag == ITEM_END and stop_at_item_end:
                return result, value
            if tag == PIXEL_DATA:
                return result, end
            is_sequence = vr == b"SQ" or tag in KNOWN_SEQUENCES or (length == UNDEFINED and vr != b"OB")
            if is_sequence:
                # An undefined-length UN is an implicit-VR little-endian sequence (PS3.5 6.2.2).
                inner_explicit = explicit and vr != b"UN"
                items, offset = self.sequence(value, length, inner_explicit)
                result[tag] = items
                continue
            if length == UNDEFINED:
                raise DicomHeaderError(f"undefined length for non-sequence element {tag}")
            result[tag] = self.data[value : value + length]
            offset = value + length
        return result, offset

    def sequence(self, offset: int, length: int, explicit: bool):
        end = len(self.data) if length == UNDEFINED else offset + length
        items = []
        while offset < end:
            tag, _, item_length, value = self.element(offset, explicit)
            if tag == SEQUENCE_END:
                return items, value
            if tag != ITEM:
                raise DicomHeaderError(f"unexpected element {tag} inside a sequence")
            if item_length == UNDEFINED:
                item, offset = self.dataset(value, len(self.data), explicit, stop_at_item_end=True)
            else:
                item, _ = self.dataset(value, value + item_length, explicit, stop_at_item_end=False)
                offset = value + item_length
            items.append(item)
        return items, offset


def read_header(path) -> dict:
    """Elements of a DICOM file before its pixel data: {(group, element): bytes or [item dicts]}."""
    with open(path, "rb") as stream:
        data = stream.read()
    offset = 0
    syntax = IMPLICIT_LE  # files without the DICM preamble are raw implicit-VR datasets
    if data[128:132] == b"DICM":
        reader = _Reader(data, explicit=True)
        offset = 132
        meta = {}
        while offset < len(data):  # the file meta group (0002) is always explicit VR little endian
            (group,) = struct.unpack_from("<H", data, offset)
            if group != 0x0002:
                break
            tag, _, length, value = reader.element(offset, True)
            meta[tag] = data[value : value + length]
            offset = value + length
        syntax = meta.get((0x0002, 0x0010), IMPLICIT_LE.encode()).rstrip(b"\0 ").decode("ascii", "replace")
    if syntax == DEFLATED:
        raise DicomHeaderError("deflated transfer syntax is not supported")
    if syntax == EXPLICIT_BE:
        raise DicomHeaderError("explicit big-endian transfer syntax is not supported")
    reader = _Reader(data, explicit=syntax != IMPLICIT_LE)
    header, _ = reader.dataset(offset, len(data), reader.explicit, stop_at_item_end=False)
    return header


def text(value) -> str:
    """Decode a string-valued element (DS, TM, DA, DT, CS, LO...)."""
    if not isinstance(value, (bytes, bytearray)):
        return ""
    return bytes(value).rstrip(b"\0").decode("latin-1").strip()
