"""PET to SUVbw: DICOM header conversion (QIBA rules) against hand-computed values, real STS_002 series,
and the plausibility check of a PET file."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_dicom import write_pet_series
from engine_helpers import make_image

from VeloxSegSlicerLib.engine import InputError, read_pet_suv
from VeloxSegSlicerLib.engine.inputs.suv import SuvHeader, parse_time, suv_factor

REPO = Path(__file__).resolve().parents[2]
# the IBSI data beside the checkout (shared/ inside it, or next to it), as the training tests look for it
IBSI = next((p for p in (REPO / "shared", REPO.parent / "shared") if (p / "data" / "ibsi-sts").is_dir()),
            REPO.parent / "shared") / "data" / "ibsi-sts"
WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = 82.0, 350e6, 6586.2
SLOPES = [0.5, 1.25, 2.0, 0.75, 3.0]


def _stored():
    rng = np.random.default_rng(3)
    return rng.integers(0, 6000, (5, 6, 7)).astype(np.int16)


def _tags(units="BQML", decay="START", series_time="113000", weight=str(WEIGHT_KG)):
    return {
        (0x0010, 0x1030): ("DS", weight) if weight is not None else None,
        (0x0054, 0x1001): ("CS", units),
        (0x0054, 0x1102): ("CS", decay),
        (0x0008, 0x0021): ("DA", "20240305"),
        (0x0008, 0x0031): ("TM", series_time),
        (0x0008, 0x0022): ("DA", "20240305"),
        (0x0008, 0x0032): ("TM", series_time),
    }


def _radiopharmaceutical(start="102000.00", dose=str(DOSE_BQ), start_datetime=None):
    item = {
        (0x0018, 0x1072): ("TM", start),
        (0x0018, 0x1074): ("DS", dose),
        (0x0018, 0x1075): ("DS", str(HALF_LIFE_S)),
    }
    if start_datetime:
        item[(0x0018, 0x1078)] = ("DT", start_datetime)
    return {k: v for k, v in item.items() if v[1] is not None}


def _expected(factor):
    return _stored() * np.asarray(SLOPES, dtype=np.float64)[:, None, None] * factor


@pytest.mark.parametrize("explicit", [True, False])
def test_bqml_start_decay_corrected_to_scan_start(tmp_path, explicit):
    write_pet_series(
        tmp_path / "pet",
        _stored(),
        SLOPES,
        (4.0, 4.0, 3.0),
        (-10.0, 5.0, 20.0),
        _tags(),
        _radiopharmaceutical(),
        explicit=explicit,
    )
    suv = read_pet_suv(tmp_path / "pet")
    elapsed = 70 * 60.0  # 10:20 injection, 11:30 scan start
    factor = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-elapsed / HALF_LIFE_S))
    assert suv.GetPixelID() == sitk.sitkFloat32
    assert suv.GetSpacing() == pytest.approx((4.0, 4.0, 3.0))
    assert suv.GetOrigin() == pytest.approx((-10.0, 5.0, 20.0))
    assert np.allclose(sitk.GetArrayViewFromImage(suv), _expected(factor), rtol=1e-5)


def test_bqml_admin_uses_the_injected_dose(tmp_path):
    write_pet_series(
        tmp_path / "pet", _stored(), SLOPES, tags=_tags(decay="ADMIN"), radiopharmaceutical=_radiopharmaceutical()
    )
    suv = read_pet_suv(tmp_path / "pet")
    assert np.allclose(sitk.GetArrayViewFromImage(suv), _expected(WEIGHT_KG * 1000.0 / DOSE_BQ), rtol=1e-5)


def test_gml_is_taken_as_suv(tmp_path):
    write_pet_series(tmp_path / "pet", _stored(), [s * 1e-3 for s in SLOPES], tags=_tags(units="GML"))
    suv = read_pet_suv(tmp_path / "pet")
    assert np.allclose(sitk.GetArrayViewFromImage(suv), _expected(1e-3), rtol=1e-5)


def test_start_datetime_and_midnight():
    base = dict(units="BQML", decay_correction="START", weight_kg=70.0, total_dose_bq=3e8, half_life_s=6586.2)
    scan = dt.datetime(2024, 3, 6, 0, 30)
    factor = suv_factor(SuvHeader(scan_time=scan, injection_time=dt.datetime(2024, 3, 5, 23, 30), **base))
    assert factor == pytest.approx(70000.0 / (3e8 * 2 ** (-3600 / 6586.2)))
    with pytest.raises(InputError, match="implausible"):
        suv_factor(SuvHeader(scan_time=scan, injection_time=dt.datetime(2024, 3, 7, 0, 0), **base))


def test_injection_before_midnight_from_series_times(tmp_path):
    write_pet_series(
        tmp_path / "pet",
        _stored(),
        SLOPES,
        tags=_tags(series_time="001500"),
        radiopharmaceutical=_radiopharmaceutical(start="231500"),
    )
    suv = read_pet_suv(tmp_path / "pet")
    factor = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-3600.0 / HALF_LIFE_S))
    assert np.allclose(sitk.GetArrayViewFromImage(suv), _expected(factor), rtol=1e-5)


def test_radiopharmaceutical_start_datetime_is_used(tmp_path):
    write_pet_series(
        tmp_path / "pet",
        _stored(),
        SLOPES,
        tags=_tags(),
        radiopharmaceutical=_radiopharmaceutical(start="000000", start_datetime="20240305104000"),
    )
    suv = read_pet_suv(tmp_path / "pet")
    factor = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-50 * 60.0 / HALF_LIFE_S))
    assert np.allclose(sitk.GetArrayViewFromImage(suv), _expected(factor), rtol=1e-5)


def test_missing_tags_are_named(tmp_path):
    write_pet_series(tmp_path / "pet", _stored(), SLOPES, tags=_tags(weight=None), radiopharmaceutical=None)
    with pytest.raises(InputError) as error:
        read_pet_suv(tmp_path / "pet")
    message = str(error.value)
    for name in (
        "PatientWeight (0010,1030)",
        "RadionuclideTotalDose (0018,1074)",
        "RadionuclideHalfLife (0018,1075)",
        "RadiopharmaceuticalStartTime (0018,1072)",
    ):
        assert name in message


@pytest.mark.parametrize("units,decay,match", [("CNTS", "START", "CNTS"), ("BQML", "NONE", "DecayCorrection")])
def test_unsupported_units_or_decay(tmp_path, units, decay, match):
    write_pet_series(
        tmp_path / "pet",
        _stored(),
        SLOPES,
        tags=_tags(units=units, decay=decay),
        radiopharmaceutical=_radiopharmaceutical(),
    )
    with pytest.raises(InputError, match=match):
        read_pet_suv(tmp_path / "pet")


def test_time_parsing():
    assert parse_time("102030.5") == dt.time(10, 20, 30, 500000)
    assert parse_time("1020") == dt.time(10, 20)
    assert parse_time("10:20:30") == dt.time(10, 20, 30)
    assert parse_time("") is None


@pytest.mark.skipif(not (IBSI / "dicom/STS_002/PET/image").is_dir(),
                    reason=f"IBSI STS_002 DICOM not found at {IBSI / 'dicom/STS_002'} (beside the checkout)")
def test_real_sts002_series_matches_the_ibsi_suv():
    suv = sitk.GetArrayFromImage(read_pet_suv(IBSI / "dicom/STS_002/PET/image"))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(IBSI / "cases/STS_002/PET_SUV.nii.gz")))
    assert suv.shape == reference.shape
    assert math.isclose(float(suv.max()), float(reference.max()), rel_tol=0.01)
    assert math.isclose(float(np.median(suv)), float(np.median(reference)), rel_tol=0.01)


def test_pet_file_in_bq_per_ml_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    activity = rng.normal(5200.0, 300.0, (20, 20, 20)).astype(np.float32)  # a body at ~5 kBq/mL
    activity[8:12, 8:12, 8:12] = 40000.0
    activity[:, :, :3] = 0.0
    sitk.WriteImage(make_image(activity), str(tmp_path / "pet.nii.gz"))
    with pytest.raises(InputError, match="Bq/mL") as error:
        read_pet_suv(tmp_path / "pet.nii.gz")
    assert "SUV" in str(error.value)


def test_pet_file_that_is_a_ct_is_refused(tmp_path):
    ct = np.full((20, 20, 20), -1000, dtype=np.int16)
    ct[5:15, 5:15, 5:15] = 40
    sitk.WriteImage(make_image(ct), str(tmp_path / "pet.nii.gz"))
    with pytest.raises(InputError, match="swapped"):
        read_pet_suv(tmp_path / "pet.nii.gz")
