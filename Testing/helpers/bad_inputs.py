"""The bad-input corpus: broken or implausible CT/PET inputs made at test time from the small real study.

Each case builds its files in a folder and says what `veloxseg segment` must answer: the exit code and
words of its one-line message. The engine tests run every case through the CLI (and some through a real
subprocess); the Slicer tests run the same cases through the Logic on real MRML. No binary is committed:
everything derives from Testing/Data/small_study (IBSI STS_002, see its README).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import SimpleITK as sitk

SMALL_STUDY = Path(__file__).resolve().parents[1] / "Data" / "small_study"
CT_FILE, PET_FILE = SMALL_STUDY / "ct.nii.gz", SMALL_STUDY / "pet.nii.gz"
UID_ROOT = "1.2.826.0.1.3680043.9.7777.13"  # test-only UID root


@dataclass(frozen=True)
class BadInput:
    name: str
    build: Callable[[Path], Tuple[Path, Path]]  # folder -> (ct path, pet path)
    code: int  # exit code of `veloxseg segment`
    words: tuple  # each must appear in the message (case-insensitive)
    file_level: bool = False  # refused while reading the file (before any voxel check)


def _read(path: Path, pixel=sitk.sitkUnknown) -> sitk.Image:
    return sitk.ReadImage(str(path), pixel)


def _write(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(image, str(path), compress)
    return path


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def _truncate(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _good_ct(folder: Path) -> Path:
    return _copy(CT_FILE, folder / "ct.nii.gz")


def _good_pet(folder: Path) -> Path:
    return _copy(PET_FILE, folder / "pet.nii.gz")


def _with_pet(make_pet):
    """A case with the good CT and a PET made by make_pet(folder) -> path."""
    return lambda folder: (_good_ct(folder), make_pet(folder))


def _with_ct(make_ct):
    return lambda folder: (make_ct(folder), _good_pet(folder))


def _pet_image() -> sitk.Image:
    return _read(PET_FILE, sitk.sitkFloat32)


def _ct_image() -> sitk.Image:
    return _read(CT_FILE)


def _pet_array_case(change, name="pet.nii.gz", compress=True):
    """A PET whose array is change(array) (float32), written as name."""
    def make(folder):
        pet = _pet_image()
        array = change(sitk.GetArrayFromImage(pet).astype(np.float32))
        return _write(_like(array, pet), folder / name, compress)
    return make


def _ct_array_case(change, name="ct.nii.gz"):
    def make(folder):
        ct = _ct_image()
        return _write(_like(change(sitk.GetArrayFromImage(ct)), ct), folder / name)
    return make


def _in_format(suffix: str, compress: bool, fraction: float):
    """The PET written as suffix (compressed or not), then cut to fraction of its bytes."""
    def make(folder):
        full = _write(_pet_image(), folder / f"full{suffix}", compress)
        return _truncate(full, folder / f"pet{suffix}", fraction)
    return make


def _flip_compressed_byte(folder: Path) -> Path:
    data = bytearray(CT_FILE.read_bytes())
    data[len(data) // 2] ^= 0x55  # inside the deflate stream: the CRC-32 (or the stream) breaks
    path = folder / "ct.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _detached_nrrd_without_data(folder: Path) -> Path:
    header = _write(_pet_image(), folder / "pet.nhdr", False)
    for data in folder.glob("pet.raw*"):
        data.unlink()
    return header


def _text_as_image(folder: Path) -> Path:
    path = folder / "ct.nii.gz"
    path.write_text("this is not an image\n")
    return path


def _empty_file(folder: Path) -> Path:
    path = folder / "ct.nii.gz"
    path.write_bytes(b"")
    return path


def _vector(image: sitk.Image, path: Path) -> Path:
    return _write(sitk.Compose(image, image), path)


def _one_slice_pet(folder: Path) -> Path:
    return _write(_pet_image()[:, :, 20:21], folder / "pet.nii.gz")


def _two_d_ct(folder: Path) -> Path:
    return _write(_ct_image()[:, :, 20], folder / "ct.nii.gz")


def _four_d_pet(folder: Path) -> Path:
    pet = _pet_image()
    return _write(sitk.JoinSeries([pet, pet]), folder / "pet.nii.gz")


def _far_pet(folder: Path) -> Path:
    pet = _pet_image()
    pet.SetOrigin(tuple(np.asarray(pet.GetOrigin()) + np.array([0.0, 0.0, 1000.0])))
    return _write(pet, folder / "pet.nii.gz")


def _nrrd_pet_with_nan(folder: Path) -> Path:
    pet = _pet_image()
    array = sitk.GetArrayFromImage(pet)
    array[10, 10, 10] = np.nan
    return _write(_like(array, pet), folder / "pet.nrrd")


def _label_map(reference: sitk.Image, path: Path) -> Path:
    array = (sitk.GetArrayFromImage(_pet_image()) > 4.0).astype(np.uint8)
    pet = _pet_image()
    label = _like(array, pet)
    if reference.GetSize() != pet.GetSize():
        label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return _write(label, path)


def write_ct_series(image: sitk.Image, folder: Path, series: str = "1", skip=(), duplicate=None) -> list:
    """The CT as a DICOM series, one file per slice (int16, rescale 1/0); skip: slice numbers left out;
    duplicate: a slice number written twice (under two file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                  direction[1], direction[4], direction[7]))
    paths = []
    for k in range(image.GetSize()[2]):
        if k in skip:
            continue
        plane = sitk.Cast(image[:, :, k], sitk.sitkInt16)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in (
            ("0008|0060", "CT"),
            ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
            ("0008|0018", f"{UID_ROOT}.{series}.{k + 1}"),
            ("0020|000d", f"{UID_ROOT}.100"),
            ("0020|000e", f"{UID_ROOT}.{series}"),
            ("0020|0013", str(k + 1)),
            ("0020|0032", "\\".join(f"{v:.4f}" for v in position)),
            ("0020|0037", orientation),
            ("0018|0050", f"{image.GetSpacing()[2]:.4f}"),
            ("0028|1052", "0"),
            ("0028|1053", "1"),
        ):
            plane.SetMetaData(key, value)
        copies = 2 if k == duplicate else 1
        for copy in range(copies):
            path = folder / f"s{series}_{k:04d}{'b' if copy else ''}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(plane)
            paths.append(path)
    return paths


def _dicom_ct(**kwargs):
    def make(folder):
        write_ct_series(_ct_image(), folder / "ct_dicom", **kwargs)
        return folder / "ct_dicom"
    return make


def _dicom_ct_truncated_slice(folder: Path) -> Path:
    paths = write_ct_series(_ct_image(), folder / "ct_dicom")
    _truncate(paths[-1], paths[-1], 0.5)  # the last slice: GDCM would simply leave it out
    return folder / "ct_dicom"


def _dicom_two_series(folder: Path) -> Path:
    write_ct_series(_ct_image(), folder / "ct_dicom", series="1")
    write_ct_series(_ct_image(), folder / "ct_dicom", series="2")
    return folder / "ct_dicom"


def _gzip_of_text(folder: Path) -> Path:
    path = folder / "pet.nii.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(b"not a NIfTI header" * 10)
    return path


SWAP = lambda folder: (_good_pet(folder), _good_ct(folder))  # noqa: E731

CORPUS = [
    # --- files that are missing, empty, incomplete or damaged
    BadInput("ct_missing", lambda f: (f / "absent.nii.gz", _good_pet(f)), 2, ("not found", "absent.nii.gz"), True),
    BadInput("ct_empty_file", _with_ct(_empty_file), 2, ("empty", "ct.nii.gz"), True),
    BadInput("ct_text_file", _with_ct(_text_as_image), 2, ("cannot be read", "ct.nii.gz"), True),
    BadInput("pet_gzip_of_text", _with_pet(_gzip_of_text), 2, ("cannot be read", "pet.nii.gz"), True),
    BadInput("pet_truncated_nii_gz", _with_pet(lambda f: _truncate(PET_FILE, f / "pet.nii.gz", 0.6)), 2,
             ("incomplete", "pet.nii.gz"), True),
    BadInput("pet_truncated_in_header", _with_pet(lambda f: _truncate(PET_FILE, f / "pet.nii.gz", 0.001)), 2,
             ("incomplete", "pet.nii.gz"), True),
    BadInput("ct_truncated_nii_gz", _with_ct(lambda f: _truncate(CT_FILE, f / "ct.nii.gz", 0.6)), 2,
             ("incomplete", "ct.nii.gz"), True),
    BadInput("ct_truncated_gzip_trailer", _with_ct(lambda f: _truncate(CT_FILE, f / "ct.nii.gz", 0.99998)), 2,
             ("incomplete", "ct.nii.gz"), True),
    BadInput("ct_truncated_nii", _with_ct(lambda f: _truncate(_write(_ct_image(), f / "full.nii", False),
                                                              f / "ct.nii", 0.6)), 2, ("incomplete", "ct.nii"), True),
    BadInput("ct_flipped_byte", _with_ct(_flip_compressed_byte), 2, ("ct.nii.gz", "copy or export"), True),
    BadInput("pet_truncated_nrrd_gzip", _with_pet(_in_format(".nrrd", True, 0.7)), 2, ("incomplete", "pet.nrrd"), True),
    BadInput("pet_truncated_nrrd_raw", _with_pet(_in_format(".nrrd", False, 0.7)), 2, ("incomplete", "pet.nrrd"), True),
    BadInput("pet_truncated_mha_zlib", _with_pet(_in_format(".mha", True, 0.7)), 2, ("incomplete", "pet.mha"), True),
    BadInput("pet_truncated_mha_raw", _with_pet(_in_format(".mha", False, 0.7)), 2, ("incomplete", "pet.mha"), True),
    BadInput("pet_nhdr_without_data", _with_pet(_detached_nrrd_without_data), 2, ("pet.nhdr", "does not exist"), True),
    BadInput("ct_folder_without_dicom", _with_ct(lambda f: (f / "empty_dir").mkdir() or f / "empty_dir"), 2,
             ("no DICOM series",), True),
    BadInput("ct_dicom_missing_slice", _with_ct(_dicom_ct(skip=(20,))), 2, ("not evenly spaced", "missing slice"),
             True),
    BadInput("ct_dicom_truncated_slice", _with_ct(_dicom_ct_truncated_slice), 2, ("truncated or damaged",), True),
    BadInput("ct_dicom_duplicated_slice", _with_ct(_dicom_ct(duplicate=7)), 2, ("ct_dicom",), True),
    BadInput("ct_dicom_two_series", _with_ct(_dicom_two_series), 2, ("2 DICOM series",), True),
    # --- readable files that are not a scalar 3-D volume
    BadInput("pet_vector", _with_pet(lambda f: _vector(_pet_image(), f / "pet.nii.gz")), 2, ("values per voxel",)),
    BadInput("ct_vector", _with_ct(lambda f: _vector(_ct_image(), f / "ct.nii.gz")), 2, ("values per voxel",)),
    BadInput("pet_one_slice", _with_pet(_one_slice_pet), 2, ("3D",)),
    BadInput("ct_2d", _with_ct(_two_d_ct), 2, ("3D",)),
    BadInput("pet_4d", _with_pet(_four_d_pet), 2, ("4D",)),
    # --- voxel content
    BadInput("pet_nan_nii_gz", _with_pet(_pet_array_case(lambda a: np.where(a > 10, np.nan, a).astype(np.float32))),
             2, ("NaN",)),
    BadInput("pet_nan_nrrd", _with_pet(_nrrd_pet_with_nan), 2, ("NaN",)),
    BadInput("ct_inf", _with_ct(_ct_array_case(lambda a: np.where(a > 900, np.inf, a).astype(np.float32))), 2,
             ("NaN or infinite",)),
    BadInput("pet_in_bq_per_ml", _with_pet(_pet_array_case(lambda a: a * 5000.0)), 2, ("does not look like SUV",)),
    BadInput("pet_all_zero", _with_pet(_pet_array_case(lambda a: a * 0.0)), 2, ("only zeros",)),
    BadInput("pet_negative", _with_pet(_pet_array_case(lambda a: a - 2000.0)), 2, ("looks like a CT",)),
    BadInput("pet_as_ct", lambda f: (_good_pet(f), _copy(PET_FILE, f / "pet2.nii.gz")), 2,
             ("does not look like a CT", "PET")),
    BadInput("ct_and_pet_swapped", SWAP, 2, ("looks like a PET", "swapped")),
    BadInput("ct_as_both", lambda f: (_good_ct(f), _copy(CT_FILE, f / "ct2.nii.gz")), 2, ("looks like a CT",)),
    BadInput("pet_label_map", _with_pet(lambda f: _label_map(_pet_image(), f / "pet.nii.gz")), 2, ("label map",)),
    BadInput("ct_label_map", _with_ct(lambda f: _label_map(_ct_image(), f / "ct.nii.gz")), 2, ("label map",)),
    BadInput("ct_without_rescale", _with_ct(_ct_array_case(lambda a: (a.astype(np.int32) + 1024).astype(np.uint16))),
             2, ("does not look like a CT", "no air")),
    BadInput("ct_in_hu_over_1000", _with_ct(_ct_array_case(lambda a: (a / 1000.0).astype(np.float32))), 2,
             ("does not look like a CT",)),
    BadInput("ct_intercept_twice", _with_ct(_ct_array_case(lambda a: (a.astype(np.int32) - 1024).astype(np.int16))),
             2, ("does not look like a CT", "no bone")),
    BadInput("pet_far_away", _with_pet(_far_pet), 2, ("do not overlap",)),
]
