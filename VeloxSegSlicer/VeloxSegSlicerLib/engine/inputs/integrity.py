"""Is an image file complete? Checks of NIfTI, NRRD and MetaImage files against their own headers.

ITK fills what is missing with zeros in some cases (a NIfTI file, compressed or not, that ends early reads
as an image whose last slices are 0, i.e. water on a CT and no uptake on a PET) and reports others with
messages that do not say what is wrong. A wrong lesion volume is worse than an error, so before ITK reads
a file, these functions compare the amount of voxel data with what the header describes and, for
compressed data, decompress the whole stream, which verifies its checksum (gzip CRC-32, zlib Adler-32):
a truncated or damaged file is refused with a sentence saying so.

The same pass counts NaN/inf voxels of float NIfTI data: ITK before version 6 (SimpleITK 2.x) replaces
them with 0 while reading NIfTI (InsightSoftwareConsortium/ITK pull request 6683), so they can only be seen
in the file's own bytes. Other formats keep NaN and are checked on the read array instead.

Everything streams in chunks: memory stays small whatever the volume size.
"""

from __future__ import annotations

import bz2
import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError

CHUNK_BYTES = 1 << 24
HEADER_LIMIT = 1 << 20  # text headers (NRRD, MetaImage) longer than this are not headers

# NIfTI datatype codes of float32 and float64 (the types whose NaN/inf ITK hides)
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}

# the first four bytes of a NIfTI-1 or NIfTI-2 header, either byte order
NIFTI_SIZES = {struct.pack(e + "i", n) for e in "<>" for n in (348, 540)}

NRRD_TYPE_BYTES = {}
for _names, _bytes in (
    (("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
      "unsigned short int", "uint16", "uint16_t"), 2),
    (("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
      "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"), 8),
):
    for _name in _names:
        NRRD_TYPE_BYTES[_name] = _bytes

META_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


class DamagedFileError(Exception):
    """Why a file is not usable, as the end of a sentence that starts with the file ("is incomplete: ...");
    verify_image_file turns it into an InputError naming the file, training's validation into a DataError."""


def _incomplete(expected: int, found: int, compressed: bool) -> DamagedFileError:
    where = "its compressed data unpack to" if compressed else "the file holds"
    return DamagedFileError(
        f"is incomplete: its header describes {expected} bytes of voxel data but {where} only {found} "
        "(a truncated copy or an interrupted download?)"
    )


def _unpack(stream, expected: int, consume=None) -> int:
    """Read a decompressing stream to its end; -> bytes read. Raises DamagedFileError for a broken stream."""
    total = 0
    try:
        while True:
            chunk = stream.read(CHUNK_BYTES)
            if not chunk:
                return total
            if consume is not None and total < expected:
                consume(chunk[: expected - total])
            total += len(chunk)
    except EOFError as exc:
        raise DamagedFileError(
            "is incomplete: its compressed data end before the end-of-stream marker (a truncated copy or an "
            "interrupted download?)"
        ) from exc
    except (OSError, zlib.error, ValueError) as exc:  # gzip.BadGzipFile is an OSError (CRC, bad header)
        raise DamagedFileError(f"is corrupt: its compressed data cannot be unpacked ({exc})") from exc


class _NonFiniteCounter:
    """Counts NaN/inf values of one dtype in a byte stream delivered in arbitrary chunks."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.rest = b""
        self.count = 0

    def __call__(self, chunk: bytes) -> None:
        data = self.rest + chunk
        usable = len(data) - len(data) % self.dtype.itemsize
        values = np.frombuffer(data[:usable], self.dtype)
        self.count += int(np.count_nonzero(~np.isfinite(values)))
        self.rest = data[usable:]


# --- NIfTI -----------------------------------------------------------------------------------------------


def _nifti_header(head: bytes):
    """(endianness, datatype, bitpix, dims, vox_offset, minimum offset) of a NIfTI-1/2 header, or None."""
    if len(head) < 348:
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = struct.unpack(endian + "f", head[108:112])[0]
            return endian, datatype, bitpix, dims, offset, 352
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            return endian, datatype, bitpix, dims, offset, 544
    return None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _check_nifti(path: Path) -> Optional[int]:
    compressed = _is_gzip(path)  # ITK reads a plain file named .nii.gz too, so trust the bytes, not the name
    opener = gzip.open if compressed else open
    with opener(path, "rb") as stream:
        try:
            head = stream.read(540)
        except EOFError as exc:
            raise DamagedFileError("is incomplete: it ends inside its header") from exc
        except (OSError, zlib.error) as exc:
            raise DamagedFileError(f"is corrupt: its compressed data cannot be unpacked ({exc})") from exc
        parsed = _nifti_header(head)
        if parsed is None:
            if head[:4] in NIFTI_SIZES:
                raise DamagedFileError("is incomplete: it ends inside its header")
            return None  # not NIfTI after all: ITK says what it is not
        endian, datatype, bitpix, dims, offset, minimum = parsed
        if not 1 <= dims[0] <= 7 or any(d < 1 for d in dims[1 : 1 + dims[0]]) or bitpix <= 0 or bitpix % 8:
            raise DamagedFileError(f"has a damaged header (dimensions {list(dims)}, {bitpix} bits per value)")
        if not np.isfinite(offset) or offset < 0:
            raise DamagedFileError(f"has a damaged header (data offset {offset})")
        start = max(int(offset), minimum)
        voxels = int(np.prod([int(d) for d in dims[1 : 1 + dims[0]]], dtype=object))
        expected = voxels * (bitpix // 8)
        if not compressed:
            found = max(0, os.path.getsize(path) - start)
            if found < expected:
                raise _incomplete(expected, found, compressed=False)
        counter = None
        if datatype in NIFTI_FLOAT_TYPES:
            counter = _NonFiniteCounter(np.dtype(endian + NIFTI_FLOAT_TYPES[datatype]))
        elif not compressed:
            return None  # size checked above; nothing else to look at
        # skip the rest of the header and any extensions, then read (and, compressed, verify) the data
        skip = start - len(head)
        if skip < 0:
            data_head = head[start:]
        else:
            data_head = b""
            if _unpack_exact(stream, skip) < skip:
                raise _incomplete(expected, 0, compressed)
        if counter is not None:
            counter(data_head[:expected])
        found = len(data_head) + _unpack(stream, max(0, expected - len(data_head)), counter)
        if found < expected:
            raise _incomplete(expected, found, compressed)
        return counter.count if counter is not None else None


def _unpack_exact(stream, count: int) -> int:
    """Read and drop count bytes; -> how many there were."""
    total = 0
    try:
        while total < count:
            chunk = stream.read(min(CHUNK_BYTES, count - total))
            if not chunk:
                break
            total += len(chunk)
    except EOFError as exc:
        raise DamagedFileError("is incomplete: its compressed data end early") from exc
    except (OSError, zlib.error) as exc:
        raise DamagedFileError(f"is corrupt: its compressed data cannot be unpacked ({exc})") from exc
    return total


# --- NRRD and MetaImage (text header, then the data or the name of the data file) -------------------------


def _text_header(path: Path, first_line_prefix: bytes, end_of_header, may_end_at_eof: bool = False):
    """(lines, byte offset after the header) of a text header, or None when the file does not start so."""
    with open(path, "rb") as stream:
        head = stream.read(HEADER_LIMIT)
    if not head.startswith(first_line_prefix):
        return None
    lines, position = [], 0
    while position < len(head):
        end = head.find(b"\n", position)
        if end < 0:
            end = len(head)
        line = head[position:end].rstrip(b"\r").decode("latin-1")
        position = end + 1
        lines.append(line)
        if end_of_header(line):
            return lines, position
    if may_end_at_eof and len(head) < HEADER_LIMIT:
        return lines, len(head)
    raise DamagedFileError("is incomplete: it ends inside its header")


def _data_length(path: Path, data_path: Path, start: int, encoding: str, expected: int, skip: int = 0):
    """Check that data_path, from byte start, holds expected bytes (after `skip`) in the given encoding."""
    if not data_path.is_file():
        raise DamagedFileError(f"names a data file '{data_path}' that does not exist")
    if encoding == "raw":
        found = max(0, os.path.getsize(data_path) - start - skip)
        if found < expected:
            raise _incomplete(expected, found, compressed=False)
        return
    with open(data_path, "rb") as raw:
        raw.seek(start)
        if encoding == "gzip":
            found = _unpack(gzip.GzipFile(fileobj=raw, mode="rb"), expected)
        elif encoding == "bzip2":
            found = _unpack(bz2.BZ2File(raw, mode="rb"), expected)
        else:  # zlib or gzip stream (MetaImage writers use either)
            found = _unpack(_ZlibReader(raw), expected)
    if found - skip < expected:
        raise _incomplete(expected, max(0, found - skip), compressed=True)


class _ZlibReader:
    """A read() interface over a zlib (or gzip) stream that raises EOFError when the stream ends early."""

    def __init__(self, raw):
        self.raw = raw
        self.inflater = zlib.decompressobj(32 + 15)  # detect the zlib or gzip wrapper

    def read(self, size: int) -> bytes:
        while True:
            if self.inflater.eof:
                return b""
            data = self.raw.read(size)
            if not data:
                raise EOFError("the compressed data end before the end-of-stream marker")
            out = self.inflater.decompress(data)
            if out:
                return out


def _check_nrrd(path: Path) -> None:
    detached = path.name.lower().endswith(".nhdr")
    parsed = _text_header(path, b"NRRD000", lambda line: line == "", may_end_at_eof=detached)
    if parsed is None:
        return
    lines, data_start = parsed
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue  # comments and key/value pairs say nothing about the data
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    try:
        item = NRRD_TYPE_BYTES[fields["type"].lower()]
        sizes = [int(s) for s in fields["sizes"].split()]
    except (KeyError, ValueError):
        return  # a type or header ITK may still read (or refuse itself)
    if any(s < 1 for s in sizes):
        raise DamagedFileError(f"has a damaged header (sizes {fields['sizes']})")
    encoding = fields.get("encoding", "raw").lower()
    encoding = {"gz": "gzip", "bz2": "bzip2"}.get(encoding, encoding)
    if encoding not in ("raw", "gzip", "bzip2"):
        return  # text encodings: ITK parses every value and fails on a short file
    expected = int(np.prod(sizes, dtype=object)) * item
    try:
        byte_skip = int(fields.get("byte skip", "0"))
        line_skip = int(fields.get("line skip", "0"))
    except ValueError:
        return
    if byte_skip < 0 or line_skip:
        return  # data counted from the end of the file or after text lines: leave it to ITK
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file:
        if data_file.startswith("LIST") or len(data_file.split()) > 1:
            return  # one file per slice: ITK checks each
        data_path = (path.parent / data_file) if not os.path.isabs(data_file) else Path(data_file)
        data_start = 0
    else:
        data_path = path
    if encoding == "raw":
        _data_length(path, data_path, data_start + byte_skip, "raw", expected)
    else:
        _data_length(path, data_path, data_start, encoding, expected, skip=byte_skip)


def _check_meta(path: Path) -> None:
    with open(path, "rb") as stream:
        first = stream.read(64)
    if b"=" not in first.split(b"\n", 1)[0]:
        return
    parsed = _text_header(path, b"", lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    if parsed is None:
        return
    lines, data_start = parsed
    fields = {}
    for line in lines:
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
    try:
        item = META_TYPE_BYTES[fields["elementtype"].upper()]
        sizes = [int(s) for s in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_size = int(fields.get("headersize", "0"))
    except (KeyError, ValueError):
        return
    if any(s < 1 for s in sizes) or channels < 1:
        raise DamagedFileError(f"has a damaged header (DimSize {fields['dimsize']})")
    data_file = fields.get("elementdatafile", "")
    if data_file.upper().startswith("LIST") or "%" in data_file or header_size < 0:
        return
    expected = int(np.prod(sizes, dtype=object)) * item * channels
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data_file.upper() == "LOCAL":
        data_path = path
    else:
        data_path = (path.parent / data_file) if not os.path.isabs(data_file) else Path(data_file)
        data_start = 0
    _data_length(path, data_path, data_start + max(header_size, 0), "zlib" if compressed else "raw", expected)


def inspect_image_file(path) -> Optional[int]:
    """Raise DamagedFileError when a NIfTI, NRRD or MetaImage file's voxel data are shorter than its header
    says or its compressed data are damaged. -> the number of NaN/inf voxels of a float NIfTI file, else
    None. Files of other formats pass unchecked (ITK reads them)."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _check_nifti(path)
        if name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(path)
        elif name.endswith((".mha", ".mhd")):
            _check_meta(path)
    except OSError as exc:
        raise DamagedFileError(f"cannot be read ({exc.strerror or exc})") from None
    return None


def verify_image_file(path, what: str) -> Optional[int]:
    """inspect_image_file, with an InputError that names the file (what: "CT", "PET", ... words it)."""
    try:
        return inspect_image_file(path)
    except DamagedFileError as problem:
        raise InputError(f"{what} file '{path}' {problem}. Copy or export the file again.") from None
