"""PET in SUVbw: conversion of a DICOM PET series from its header (QIBA rules), or a checked SUV file.

SUVbw = activity concentration [Bq/mL] x body weight [g] / injected dose [Bq], the dose decay-corrected to
the time the image values refer to:
- Units BQML, DecayCorrection START: values refer to the scan start, so the dose decays from injection to
  scan start (series date/time; if the series time is later than the first acquisition, as after
  reprocessing, GE's private scan time (0009,100D) or else the earliest acquisition time is used).
- Units BQML, DecayCorrection ADMIN: values are already decay-corrected to injection, dose used as is.
- Units GML: the scanner already stored SUVbw; factor 1.
The stored-value rescale (slope/intercept, per slice) is applied by the DICOM reader.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk  # noqa: N813  (the conventional alias)

from ..errors import InputError
from .checks import check_pet
from .dicom_header import DicomHeaderError, read_header, text
from .imageio import is_dicom_file, read_dicom_series, read_image

logger = logging.getLogger(__name__)

PATIENT_WEIGHT = "0010|1030"
UNITS = "0054|1001"
DECAY_CORRECTION = "0054|1102"
SERIES_DATE = "0008|0021"
SERIES_TIME = "0008|0031"
ACQUISITION_DATE = "0008|0022"
ACQUISITION_TIME = "0008|0032"
GE_SCAN_DATETIME = "0009|100d"
RADIOPHARMACEUTICAL_SEQUENCE = (0x0054, 0x0016)
START_TIME = (0x0018, 0x1072)
TOTAL_DOSE = (0x0018, 0x1074)
HALF_LIFE = (0x0018, 0x1075)
START_DATETIME = (0x0018, 0x1078)

NAMES = {
    PATIENT_WEIGHT: "PatientWeight (0010,1030)",
    UNITS: "Units (0054,1001)",
    DECAY_CORRECTION: "DecayCorrection (0054,1102)",
    SERIES_TIME: "SeriesTime (0008,0031)",
    SERIES_DATE: "SeriesDate (0008,0021)",
    START_TIME: "RadiopharmaceuticalStartTime (0018,1072) or RadiopharmaceuticalStartDateTime (0018,1078)",
    TOTAL_DOSE: "RadionuclideTotalDose (0018,1074)",
    HALF_LIFE: "RadionuclideHalfLife (0018,1075)",
}


@dataclass(frozen=True)
class SuvHeader:
    """The header values the conversion uses (times as datetimes, dose in Bq, weight in kg)."""

    units: str
    decay_correction: str = ""
    weight_kg: float = float("nan")
    total_dose_bq: float = float("nan")
    half_life_s: float = float("nan")
    scan_time: dt.datetime = None
    injection_time: dt.datetime = None


def parse_date(value: str):
    value = value.strip().replace(".", "").replace("-", "")
    return dt.datetime.strptime(value[:8], "%Y%m%d").date() if len(value) >= 8 else None


def parse_time(value: str):
    """DICOM TM 'HHMMSS.FFFFFF' (also HHMM, HH and the old 'HH:MM:SS') -> datetime.time."""
    value = value.strip().replace(":", "")
    if not value:
        return None
    whole, _, fraction = value.partition(".")
    try:
        hour = int(whole[0:2])
        minute = int(whole[2:4]) if len(whole) >= 4 else 0
        second = int(whole[4:6]) if len(whole) >= 6 else 0
        micro = int((fraction + "000000")[:6]) if fraction else 0
        return dt.time(hour, minute, min(second, 59), micro)
    except ValueError:
        return None


def parse_datetime(value: str):
    """DICOM DT 'YYYYMMDDHHMMSS.FFFFFF&ZZXX' (time-zone offset ignored) -> datetime."""
    value = value.strip()
    for sign in "+-":
        if sign in value[8:]:
            value = value[: 8 + value[8:].index(sign)]
    date = parse_date(value[:8])
    if date is None:
        return None
    time = parse_time(value[8:]) if len(value) > 8 else dt.time(0, 0)
    return dt.datetime.combine(date, time) if time is not None else None


def _number(value: str) -> float:
    try:
        return float(value.split("\\")[0])
    except ValueError:
        return float("nan")


def suv_factor(header: SuvHeader) -> float:
    """Multiplier from stored PET values (after rescale) to SUVbw; raises InputError naming missing tags."""
    units = header.units.upper()
    if units == "GML":
        return 1.0
    if units != "BQML":
        raise InputError(
            f"PET Units (0054,1001) is '{header.units}': VeloxSeg converts BQML (Bq/mL) and accepts GML (SUVbw). "
            "Export the PET in Bq/mL or SUV, or convert it to SUVbw and pass it as NIfTI/NRRD."
        )
    decay = header.decay_correction.upper()
    missing = []
    if not (header.weight_kg > 0):
        missing.append(NAMES[PATIENT_WEIGHT])
    if not (header.total_dose_bq > 0):
        missing.append(NAMES[TOTAL_DOSE])
    if decay == "START":
        if not (header.half_life_s > 0):
            missing.append(NAMES[HALF_LIFE])
        if header.scan_time is None:
            missing.append(f"{NAMES[SERIES_DATE]} and {NAMES[SERIES_TIME]}")
        if header.injection_time is None:
            missing.append(NAMES[START_TIME])
    elif decay != "ADMIN":
        raise InputError(
            f"PET DecayCorrection (0054,1102) is '{header.decay_correction or 'missing'}': SUV needs images "
            "decay-corrected to scan start (START) or injection (ADMIN). Reconstruct with decay correction, "
            "or convert to SUVbw yourself and pass a NIfTI/NRRD file."
        )
    if missing:
        raise InputError(
            "Cannot convert the DICOM PET to SUV: the header lacks " + "; ".join(missing) + ". Fill in these "
            "tags (e.g. with the scanner console or a DICOM editor), or convert to SUVbw yourself and pass a "
            "NIfTI/NRRD file."
        )
    dose = header.total_dose_bq
    if decay == "START":
        elapsed = (header.scan_time - header.injection_time).total_seconds()
        if not 0 <= elapsed <= 24 * 3600:
            raise InputError(
                f"Cannot convert the DICOM PET to SUV: the time from injection ({header.injection_time}) to scan "
                f"start ({header.scan_time}) is {elapsed / 3600:.1f} h, which is implausible. Check the "
                "RadiopharmaceuticalStartTime/DateTime (0018,1072/1078) and SeriesDate/Time (0008,0021/0031)."
            )
        dose = dose * math.pow(2.0, -elapsed / header.half_life_s)
    return header.weight_kg * 1000.0 / dose


def _slice_meta(reader: sitk.ImageSeriesReader, index: int, key: str) -> str:
    return reader.GetMetaData(index, key).strip() if reader.HasMetaDataKey(index, key) else ""


def _scan_time(reader: sitk.ImageSeriesReader, count: int):
    series_date = parse_date(_slice_meta(reader, 0, SERIES_DATE))
    series_clock = parse_time(_slice_meta(reader, 0, SERIES_TIME))
    series = dt.datetime.combine(series_date, series_clock) if series_date and series_clock else None
    acquisitions = []
    for index in range(count):
        date = parse_date(_slice_meta(reader, index, ACQUISITION_DATE)) or series_date
        clock = parse_time(_slice_meta(reader, index, ACQUISITION_TIME))
        if date and clock:
            acquisitions.append(dt.datetime.combine(date, clock))
    if series is None or not acquisitions or series <= min(acquisitions):
        return series, series_date
    # Series time after the first acquisition: the series was re-created later (QIBA note).
    ge = parse_datetime(_slice_meta(reader, 0, GE_SCAN_DATETIME))
    if ge is not None:
        return ge, series_date
    logger.warning("PET SeriesTime is after the first AcquisitionTime; using the earliest AcquisitionTime.")
    return min(acquisitions), series_date


def _injection_time(item: dict, series_date, scan_time):
    start_dt = parse_datetime(text(item.get(START_DATETIME)))
    if start_dt is not None and scan_time is not None and 0 <= (scan_time - start_dt).total_seconds() <= 86400:
        return start_dt
    clock = parse_time(text(item.get(START_TIME)))
    if clock is None or series_date is None:
        return start_dt
    injection = dt.datetime.combine(series_date, clock)
    if scan_time is not None and injection > scan_time:  # injected before midnight, scanned after
        injection -= dt.timedelta(days=1)
    return injection


def read_suv_header(reader: sitk.ImageSeriesReader, files: list) -> SuvHeader:
    """Collect the SUV-relevant values from a DICOM series: top-level tags from SimpleITK, the
    radiopharmaceutical sequence (not exposed by GDCM) from the first file's bytes."""
    units = _slice_meta(reader, 0, UNITS)
    if not units:
        raise InputError(f"Cannot convert the DICOM PET to SUV: the header lacks {NAMES[UNITS]}.")
    if units.upper() == "GML":
        return SuvHeader(units=units)
    try:
        header = read_header(files[0])
    except (OSError, DicomHeaderError) as exc:
        raise InputError(f"Cannot read the DICOM header of {files[0]} for SUV conversion: {exc}") from exc
    items = header.get(RADIOPHARMACEUTICAL_SEQUENCE) or [{}]
    item = items[0] if isinstance(items, list) and items else {}
    scan_time, series_date = _scan_time(reader, len(files))
    return SuvHeader(
        units=units,
        decay_correction=_slice_meta(reader, 0, DECAY_CORRECTION),
        weight_kg=_number(_slice_meta(reader, 0, PATIENT_WEIGHT)),
        total_dose_bq=_number(text(item.get(TOTAL_DOSE))),
        half_life_s=_number(text(item.get(HALF_LIFE))),
        scan_time=scan_time,
        injection_time=_injection_time(item, series_date, scan_time),
    )


def read_pet_suv(path) -> sitk.Image:
    """Read a PET as float32 SUVbw: a DICOM series is converted from its header; a NIfTI/NRRD/MHA file is
    taken as SUV after a plausibility check (Bq/mL is refused with instructions)."""
    path = Path(path)
    if path.exists() and (path.is_dir() or is_dicom_file(path)):
        image, reader, files = read_dicom_series(path, "PET", sitk.sitkFloat32)
        factor = suv_factor(read_suv_header(reader, files))
        if factor != 1.0:
            image = sitk.Cast(image * factor, sitk.sitkFloat32)
    else:
        image = read_image(path, "PET", sitk.sitkFloat32)
    check_pet(image, source=path)
    return image
