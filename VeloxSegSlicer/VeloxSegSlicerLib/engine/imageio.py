"""Reading CT/PET volumes (NIfTI, NRRD, MHA, or a DICOM series folder) and writing label images.

Only file-level problems are checked here (missing, unreadable, not 3D, not scalar); voxel content is
checked by checks.py, which runs for images from any source (files or Slicer nodes).
"""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from .errors import InputError
from .nifti_scan import count_nonfinite

# Writable formats for label images: single-file formats only, so the atomic rename covers everything.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


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
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series_ids = ()
    if not series_ids:
        raise InputError(
            f"{modality}: no DICOM series found in folder {_describe(folder)}. Point to the folder holding "
            "the image slices, or to a NIfTI/NRRD file."
        )
    candidates = [list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in series_ids]
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


def read_dicom_series(path, modality: str, pixel_type=sitk.sitkUnknown):
    """-> (image, reader with per-slice metadata, file list)."""
    files = dicom_series_files(path, modality)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
    reader.SetOutputPixelType(pixel_type)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{modality}: cannot read the DICOM series in {_describe(path)}: {exc}") from exc
    if image.GetPixelID() == sitk.sitkFloat64:  # rescaled slices come out float64; float32 halves memory
        image = sitk.Cast(image, sitk.sitkFloat32)
    return check_geometry(image, modality, path), reader, files


def read_image(path, modality: str = "CT", pixel_type=sitk.sitkUnknown) -> sitk.Image:
    """Read a 3D scalar volume from a NIfTI/NRRD/MHA file or a DICOM series (folder or one of its files).

    modality ("CT" or "PET") only words the error messages. float64 data are read as float32.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{modality} file not found: {_describe(path)}. Check the path.")
    if path.is_dir() or is_dicom_file(path):
        image, _, _ = read_dicom_series(path, modality, pixel_type)
        return image
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        if pixel_type == sitk.sitkUnknown and reader.GetPixelID() == sitk.sitkFloat64:
            pixel_type = sitk.sitkFloat32  # convert while reading: no float64 copy of a whole-body volume
        reader.SetOutputPixelType(pixel_type)
        image = reader.Execute()
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(
            f"{modality} file {_describe(path)} cannot be read as an image ({first_line}). Supported: NIfTI "
            "(.nii, .nii.gz), NRRD, MHA, or a DICOM series folder."
        ) from exc
    nonfinite = count_nonfinite(path)  # ITK reads NaN in NIfTI as 0, so look at the file's own bytes
    if nonfinite:
        raise InputError(
            f"{modality} file {_describe(path)} has {nonfinite} voxels that are NaN or infinite. Fix the export "
            "(or replace them, e.g. by 0 for PET and -1000 for CT) and try again.")
    return check_geometry(image, modality, path)


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
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    writer.Execute(image)
