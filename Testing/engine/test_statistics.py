"""Lesion statistics against a brute-force numpy ground truth (SUVpeak included)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import make_image, physical_points, rotation

from VeloxSegSlicerLib.engine.inference.statistics import PEAK_RADIUS_MM, lesion_statistics, study_totals


def test_peak_radius_is_one_cubic_centimetre():
    assert 4.0 / 3.0 * np.pi * PEAK_RADIUS_MM**3 == pytest.approx(1000.0)
    assert PEAK_RADIUS_MM == pytest.approx(6.2035, abs=1e-4)


def test_statistics_match_numpy_ground_truth():
    rng = np.random.default_rng(7)
    shape = (22, 26, 30)
    spacing, origin = (2.5, 3.0, 4.0), (-30.0, 12.0, 100.0)
    direction = rotation("z", 20) @ rotation("x", -15)
    suv = rng.gamma(2.0, 1.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint16)
    labels[3:9, 4:12, 5:10] = 1  # a box
    zz, yy, xx = np.indices(shape)
    labels[(zz - 15) ** 2 + (yy - 18) ** 2 + (xx - 27) ** 2 <= 9] = 2  # a ball touching the x border
    suv[15, 18, 29] = 40.0  # lesion 2's hottest voxel on the image border: the peak sphere is clipped
    pet = make_image(suv, spacing, origin, direction)
    label = make_image(labels, spacing, origin, direction)

    lesions = lesion_statistics(label, pet)
    points = physical_points(pet)
    assert [lesion.id for lesion in lesions] == [1, 2]
    for lesion in lesions:
        inside = labels == lesion.id
        values = suv[inside].astype(np.float64)
        hottest = np.unravel_index(np.argmax(np.where(inside, suv, -np.inf)), shape)
        distance = np.linalg.norm(points - points[hottest], axis=-1)
        peak = suv[distance <= PEAK_RADIUS_MM].astype(np.float64).mean()
        mtv = inside.sum() * np.prod(spacing) / 1000.0
        centre = points[inside].mean(axis=0)
        assert lesion.voxels == inside.sum()
        assert lesion.suv_max == pytest.approx(values.max())
        assert lesion.suv_mean == pytest.approx(values.mean())
        assert lesion.suv_peak == pytest.approx(peak)
        assert lesion.mtv_ml == pytest.approx(mtv)
        assert lesion.tlg == pytest.approx(values.mean() * mtv)
        assert np.allclose(lesion.centroid_ras_mm, (-centre[0], -centre[1], centre[2]), atol=1e-6)
    assert lesions[1].suv_max == pytest.approx(40.0)

    totals = study_totals(lesions)
    assert totals.lesion_count == 2
    assert totals.total_mtv_ml == pytest.approx(sum(lesion.mtv_ml for lesion in lesions))
    assert totals.total_tlg == pytest.approx(sum(lesion.tlg for lesion in lesions))


def test_no_lesions():
    pet = make_image(np.ones((5, 5, 5), dtype=np.float32))
    label = sitk.Image(5, 5, 5, sitk.sitkUInt16)
    assert lesion_statistics(label, pet) == []
    assert study_totals([]).lesion_count == 0
