"""Reading CT/PET volumes (NIfTI, NRRD, MHA, or a DICOM series folder) and writing label images.

File-level problems are checked here (missing, unreadable, incomplete or damaged, not 3D, not scalar; for
DICOM: several series, unreadable slices, missing slices or uneven spacing); voxel content is checked by
checks.py, which runs for images from any source (files or Slicer nodes).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from ..errors import InputError, VeloxSegError
from .checks import check_ct
from .dicom_header import DicomHeaderError, read_header, text
from .integrity import verify_image_file

# Writable formats for label images: single-file formats only, so the atomic rename covers everything.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")

SERIES_INSTANCE_UID = (0x0020, 0x000E)
# Slice gaps may differ from their median by this much (DICOM positions are rounded decimal strings).
SLICE_GAP_TOLERANCE_MM = 0.05
SLICE_GAP_TOLERANCE_FRACTION = 0.02


@contextlib.contextmanager
def _quiet_itk():
    """ITK prints warnings (e.g. "Non uniform sampling or missing slices detected") straight to stderr; the
    problems they hint at are checked here and reported as one clear sentence instead."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_or_refuse(call, message):
    """Run an ITK reader call quietly; its failure becomes an InputError: message(ITK's own last line)."""
    try:
        with _quiet_itk():
            return call()
    except RuntimeError as exc:
        raise InputError(message(_last_line(exc))) from None


def _describe(path: Path) -> str:
    return f"'{path}'"


def is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    return path.suffix.lower() == ".dcm" or head[128:132] == b"DICM"


def dicom_series_files(path, modality: str) -> list:
    """Files of the one DICOM series in a folder (or of the series a given .dcm file belongs to)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        with _quiet_itk():
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series_ids = ()
    if not series_ids:
        raise InputError(
            f"{modality}: no DICOM series found in folder {_describe(folder)}. Point to the folder holding "
            "the image slices, or to a NIfTI/NRRD file."
        )
    with _quiet_itk():
        candidates = [list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in series_ids]
    _refuse_unreadable_members(folder, series_ids, candidates, modality)
    if path.is_file():
        target = os.path.abspath(path)
        candidates = [files for files in candidates if target in {os.path.abspath(f) for f in files}]
        if not candidates:
            raise InputError(f"{modality}: {_describe(path)} is not part of a readable DICOM series.")
    if len(candidates) > 1:
        raise InputError(
            f"{modality}: folder {_describe(folder)} holds {len(candidates)} DICOM series; put each series "
            "in its own folder, or pass one of its files."
        )
    return candidates[0]


def _refuse_unreadable_members(folder: Path, series_ids, candidates, modality: str) -> None:
    """GDCM leaves out of a series any slice it cannot parse (a truncated file, say), which would silently
    make a shorter volume or a gap. Refuse a folder holding a DICOM file that belongs to one of its series
    but is not listed, or that cannot be parsed at all. Other DICOM objects (an RT structure set, a
    DICOMDIR) belong to no image series and are left alone."""
    listed = {os.path.abspath(f) for files in candidates for f in files}
    series_uids = {s.strip() for s in series_ids}
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.upper() == "DICOMDIR" or os.path.abspath(entry) in listed:
            continue
        if not is_dicom_file(entry):
            continue
        try:
            uid = text(read_header(entry).get(SERIES_INSTANCE_UID))
        except (OSError, DicomHeaderError, ValueError, IndexError):
            uid = None
        if uid is None or uid in series_uids:
            raise InputError(
                f"{modality}: DICOM file {_describe(entry)} cannot be read as part of the series in "
                f"{_describe(folder)} (truncated or damaged?); copy the series again, or remove the file if "
                "it does not belong there."
            )


def _check_slice_positions(reader, files: list, modality: str, folder) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing slice, duplicates, mixed series): ITK
    would stack them with their average spacing, putting every slice after the gap at the wrong place."""
    if len(files) < 3:
        return
    try:
        orientation = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
        positions = [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(len(files))]
    except (RuntimeError, ValueError):
        return  # no per-slice positions (e.g. one multi-frame file): nothing to compare
    if len(orientation) != 6 or any(len(p) != 3 for p in positions):
        return
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.asarray(positions) @ normal
    gaps = np.diff(along)
    typical = float(np.median(np.abs(gaps)))
    if typical <= 1e-3:
        raise InputError(
            f"{modality}: the DICOM slices in {_describe(folder)} share positions ({len(files)} files, slice "
            "gap 0): duplicated files or several series in one folder. Keep one series per folder."
        )
    odd = np.flatnonzero(np.abs(np.abs(gaps) - typical) > max(SLICE_GAP_TOLERANCE_MM,
                                                              SLICE_GAP_TOLERANCE_FRACTION * typical))
    if odd.size:
        first = int(odd[0])
        raise InputError(
            f"{modality}: the DICOM slices in {_describe(folder)} are not evenly spaced: {abs(gaps[first]):.2f} mm "
            f"between slices {first + 1} and {first + 2} ({Path(files[first + 1]).name}) where the others are "
            f"{typical:.2f} mm apart (a missing slice?). Copy the complete series again."
        )


def read_dicom_series(path, modality: str, pixel_type=sitk.sitkUnknown):
    """-> (image, reader with per-slice metadata, file list)."""
    files = dicom_series_files(path, modality)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
    reader.SetOutputPixelType(pixel_type)
    image = _itk_or_refuse(reader.Execute,
                           lambda why: f"{modality}: cannot read the DICOM series in {_describe(path)}: {why}")
    image = check_geometry(image, modality, path)
    _check_slice_positions(reader, files, modality, path)
    if image.GetPixelID() == sitk.sitkFloat64:  # rescaled slices come out float64; float32 halves memory
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image, reader, files


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def read_image(path, modality: str = "CT", pixel_type=sitk.sitkUnknown) -> sitk.Image:
    """Read a 3D scalar volume from a NIfTI/NRRD/MHA file or a DICOM series (folder or one of its files).

    modality ("CT" or "PET") only words the error messages. float64 data are read as float32. Incomplete
    or damaged files are refused (InputError), never read with invented voxels.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():  # e.g. a DataLad/git-annex file whose content is not fetched
        raise InputError(f"{modality} file {_describe(path)} is a symbolic link whose target "
                         f"'{os.readlink(path)}' does not exist. Fetch the content (`datalad get`, "
                         "`git annex get`) or fix the link.")
    if not path.exists():
        raise InputError(f"{modality} file not found: {_describe(path)}. Check the path.")
    if path.is_dir() or is_dicom_file(path):
        image, _, _ = read_dicom_series(path, modality, pixel_type)
        return image
    if path.stat().st_size == 0:
        raise InputError(f"{modality} file {_describe(path)} is empty (0 bytes). Copy or export it again.")
    nonfinite = verify_image_file(path, modality)  # before ITK, which may zero-fill what is missing
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _itk_or_refuse(reader.ReadImageInformation, lambda why: (
        f"{modality} file {_describe(path)} cannot be read as an image ({why}). Supported: NIfTI (.nii, .nii.gz), "
        "NRRD, MHA, or a DICOM series folder."))
    # Before any conversion: with an output pixel type set, ITK would silently turn a vector image scalar.
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise InputError(
            f"{modality} file {_describe(path)} has {components} values per voxel (colour or vector image); "
            "give a scalar grey-value volume."
        )
    if pixel_type == sitk.sitkUnknown and reader.GetPixelID() == sitk.sitkFloat64:
        pixel_type = sitk.sitkFloat32  # convert while reading: no float64 copy of a whole-body volume
    reader.SetOutputPixelType(pixel_type)
    image = _itk_or_refuse(reader.Execute, lambda why: (
        f"{modality} file {_describe(path)} cannot be read ({why}). Copy or export it again."))
    if nonfinite:
        raise InputError(
            f"{modality} file {_describe(path)} has {nonfinite} voxel{'s' if nonfinite != 1 else ''} that are NaN or "
            "infinite. Fix the export (or replace them, e.g. by 0 for PET and -1000 for CT) and try again.")
    return check_geometry(image, modality, path)


def read_ct(path) -> sitk.Image:
    """Read a CT in Hounsfield units and check that it looks like one (InputError naming the file)."""
    image = read_image(path, "CT")
    check_ct(image, source=path)
    return image


def check_geometry(image: sitk.Image, modality: str, source="") -> sitk.Image:
    """Refuse anything but a scalar 3D volume; a 4D image with one time point is reduced to 3D."""
    where = f" ({source})" if source else ""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{modality} image{where} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour "
            "or vector image); give a scalar grey-value volume."
        )
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dimension = 3
    if dimension == 4:
        raise InputError(
            f"{modality} image{where} is 4D ({image.GetSize()[3]} frames, e.g. a dynamic PET); give a single "
            "3D volume (extract one frame or a static reconstruction)."
        )
    if dimension != 3 or min(image.GetSize()) < 2:
        raise InputError(
            f"{modality} image{where} is 2D (size {list(image.GetSize())}); VeloxSeg needs a 3D volume. "
            "For DICOM, make sure the folder holds all slices of the series."
        )
    return image


def label_suffix(path) -> str:
    """The supported image suffix a path ends with, as spelled in the path ("" if none)."""
    name = Path(path).name
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[-len(suffix) :]
    return ""


def write_image(image: sitk.Image, path, compress: bool = True) -> None:
    """Write an image; a failure (a full disk, a lost share) is a VeloxSegError naming the file, and the
    caller's temporary file is removed by AtomicOutputs, so no partial output stays behind."""
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    try:
        with _quiet_itk():
            writer.Execute(image)
    except RuntimeError as exc:
        raise VeloxSegError(f"Cannot write {_describe(Path(path))} ({_last_line(exc)}); is the disk full or the "
                            "folder no longer writable? Nothing was written.") from None
