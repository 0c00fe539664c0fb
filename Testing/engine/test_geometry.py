"""A hot lesion must come back on the right voxels whatever the grids: oblique directions, flipped axes,
anisotropic spacing, CT and PET on different grids and fields of view."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import THRESHOLD, hot_voxel_pet, make_image, phantom, physical_points, rotation

from VeloxSegSlicerLib.engine import SegmentOptions, segment_study

# These tests check geometry, not the lesion table's default rule (>= 0.1 mL, SUVmax >= 2): report every lesion.
ALL = SegmentOptions(min_lesion_ml=0.0, min_suv_max=0.0)

CENTRE = (28.0, -22.0, 9.0)  # LPS mm, off every axis so a flipped or swapped axis would show
RADIUS = 16.0
SUV = 10.0


def _grid(size, spacing, direction=None, centre=(0.0, 0.0, 0.0)):
    """origin such that the grid's centre lies at `centre`."""
    direction = np.eye(3) if direction is None else np.asarray(direction)
    half = (np.asarray(size) - 1) * np.asarray(spacing) / 2.0
    origin = np.asarray(centre) - direction @ half
    return {"size": size, "spacing": spacing, "origin": origin, "direction": direction}


CASES = {
    "axis_aligned": (
        _grid((60, 60, 44), (3.3, 3.3, 3.3)),
        _grid((130, 130, 52), (1.5, 1.5, 2.5)),
    ),
    "oblique_anisotropic_ct": (
        _grid((60, 60, 44), (3.3, 3.3, 3.3)),
        _grid((230, 230, 30), (0.85, 0.85, 5.0), rotation("z", 25) @ rotation("x", 12)),
    ),
    "both_oblique": (
        _grid((64, 64, 44), (3.1, 3.1, 3.4), rotation("y", 15)),
        _grid((130, 130, 52), (1.6, 1.6, 2.5), rotation("z", -30)),
    ),
    "flipped_ct_axes": (
        _grid((60, 60, 44), (3.3, 3.3, 3.3)),
        _grid((130, 130, 52), (1.5, 1.5, 2.5), np.diag([-1.0, -1.0, 1.0])),
    ),
    "different_fields_of_view": (
        _grid((60, 60, 40), (3.3, 3.3, 3.3), centre=(0.0, 0.0, -25.0)),
        _grid((120, 110, 40), (1.5, 1.5, 2.5), centre=(10.0, 0.0, 30.0)),
    ),
}


def _sphere_mask(image):
    return np.linalg.norm(physical_points(image) - np.asarray(CENTRE), axis=-1) <= RADIUS


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _centroid(image, mask):
    return physical_points(image)[mask].mean(axis=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lesion_lands_on_the_right_voxels(case, model):
    pet_grid, ct_grid = CASES[case]
    pet = phantom([(CENTRE, RADIUS, SUV)], kind="PET", **pet_grid)
    ct = phantom([(CENTRE, RADIUS, 60)], kind="CT", **ct_grid)
    result = segment_study(ct, pet, model, ALL)

    assert result.totals.lesion_count == 1
    for label, reference in ((result.label_ct, ct), (result.label_pet, pet)):
        assert label.GetSize() == reference.GetSize()
        assert np.allclose(label.GetOrigin(), reference.GetOrigin())
        assert np.allclose(label.GetDirection(), reference.GetDirection())
        found = sitk.GetArrayViewFromImage(label) == 1
        truth = _sphere_mask(reference)
        assert _dice(found, truth) > 0.85, case
        assert np.linalg.norm(_centroid(reference, found) - np.asarray(CENTRE)) < 1.5, case

    lesion = result.lesions[0]
    expected_ras = (-CENTRE[0], -CENTRE[1], CENTRE[2])
    assert np.allclose(lesion.centroid_ras_mm, expected_ras, atol=1.5)
    assert lesion.suv_max == pytest.approx(SUV)
    assert lesion.mtv_ml == pytest.approx(4.0 / 3.0 * np.pi * RADIUS**3 / 1000.0, rel=0.2)


def test_pet_on_the_model_lattice_is_reproduced_exactly(model):
    """A PET already at the model spacing, axis-aligned: the model grid sits on its lattice, so the PET
    label is exactly the thresholded PET (no interpolation anywhere)."""
    spheres = [(CENTRE, 9.0, 7.5), ((-40.0, 30.0, -20.0), 6.0, 5.0)]
    pet = phantom(spheres, (100, 100, 60), (2.036, 2.036, 3.0), (-101.3, -98.7, -88.4), kind="PET")
    ct = phantom([], (120, 120, 50), (1.7, 1.7, 3.6), (-100.0, -100.0, -90.0), kind="CT")
    result = segment_study(ct, pet, model, ALL)
    found = sitk.GetArrayViewFromImage(result.label_pet) > 0
    expected = sitk.GetArrayViewFromImage(pet) > THRESHOLD
    assert np.array_equal(found, expected)
    assert result.totals.lesion_count == 2
    assert result.lesions[0].voxels > result.lesions[1].voxels  # ids ordered by size


def test_ids_agree_between_ct_and_pet(model):
    spheres = [((30.0, 0.0, 0.0), 12.0, 9.0), ((-35.0, 10.0, 5.0), 9.0, 9.0)]
    pet = phantom(spheres, (60, 60, 40), (3.3, 3.3, 3.3), (-99.0, -99.0, -66.0))
    ct = phantom([], (100, 100, 40), (2.0, 2.0, 3.5), (-99.0, -99.0, -66.0), kind="CT")
    result = segment_study(ct, pet, model, ALL)
    assert result.totals.lesion_count == 2
    for lesion in result.lesions:
        for label, reference in ((result.label_ct, ct), (result.label_pet, pet)):
            mask = sitk.GetArrayViewFromImage(label) == lesion.id
            centre = _centroid(reference, mask)
            ras = np.array([-centre[0], -centre[1], centre[2]])
            assert np.allclose(ras, lesion.centroid_ras_mm, atol=2.0)


def test_min_lesion_volume_drops_small_lesions(model):

    spheres = [((30.0, 0.0, 0.0), 14.0, 9.0), ((-35.0, 10.0, 5.0), 6.0, 9.0)]
    pet = phantom(spheres, (60, 60, 40), (3.3, 3.3, 3.3), (-99.0, -99.0, -66.0))
    ct = phantom([], (60, 60, 40), (3.3, 3.3, 3.3), (-99.0, -99.0, -66.0), kind="CT")
    both = segment_study(ct, pet, model, ALL)
    assert both.totals.lesion_count == 2
    small = min(lesion.mtv_ml for lesion in both.lesions)
    large = max(lesion.mtv_ml for lesion in both.lesions)
    one = segment_study(ct, pet, model, SegmentOptions(min_lesion_ml=(small + large) / 2, min_suv_max=0.0))
    assert one.totals.lesion_count == 1
    assert one.lesions[0].id == 1 and one.lesions[0].mtv_ml == pytest.approx(large)
    assert set(np.unique(sitk.GetArrayViewFromImage(one.label_ct))) == {0, 1}


def test_empty_study_gives_no_lesions(model):
    pet = phantom([], (40, 40, 30), (4.0, 4.0, 4.0), (-80.0, -80.0, -60.0))
    ct = phantom([], (40, 40, 30), (4.0, 4.0, 4.0), (-80.0, -80.0, -60.0), kind="CT")
    result = segment_study(ct, pet, model, ALL)
    assert result.totals.lesion_count == 0 and result.lesions == []
    assert result.totals.total_mtv_ml == 0.0


def test_progress_reports_all_stages_in_order(model):
    pet = phantom([((0.0, 0.0, 0.0), 10.0, 8.0)], (40, 40, 30), (4.0, 4.0, 4.0), (-80.0, -80.0, -60.0))
    ct = phantom([], (40, 40, 30), (4.0, 4.0, 4.0), (-80.0, -80.0, -60.0), kind="CT")
    calls = []
    segment_study(ct, pet, model, ALL, progress=lambda fraction, stage: calls.append((fraction, stage)))
    stages = [stage for _, stage in calls]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "Resampling",
        "Inference",
        "Post-processing",
        "Statistics",
    ]
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_slab_wise_mapping_gives_the_same_labels(model, monkeypatch):
    """Large lesions are carried to fine grids slab by slab to bound memory; the result must not change."""
    from VeloxSegSlicerLib.engine.inference.postprocess import LesionMapper

    pet_grid, ct_grid = CASES["oblique_anisotropic_ct"]
    pet = phantom([(CENTRE, RADIUS, SUV)], kind="PET", **pet_grid)
    ct = phantom([(CENTRE, RADIUS, 60)], kind="CT", **ct_grid)
    whole = segment_study(ct, pet, model, ALL)
    monkeypatch.setattr(LesionMapper, "SLAB_VOXELS", 5000)
    slabs = segment_study(ct, pet, model, ALL)
    for a, b in ((whole.label_ct, slabs.label_ct), (whole.label_pet, slabs.label_pet)):
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


# --- lesions of one PET voxel: each must be on the CT label, unless it lies outside the CT field of view ---

PET_LATTICE = {"size": (40, 40, 30), "spacing": (2.036, 2.036, 3.0), "origin": (-40.72, -40.72, -45.0)}


def _pet_with_hot_voxels(voxels):
    """PET on the model lattice (so each hot voxel is one model voxel) with {(x, y, z) index: SUV}, and the
    hot voxels' centres (LPS)."""
    image = hot_voxel_pet(voxels, **PET_LATTICE)
    return image, {index: np.asarray(image.TransformIndexToPhysicalPoint(index)) for index in voxels}


@pytest.mark.parametrize("suv", [4.5, 9.0])  # barely above the threshold (covers no CT voxel centre), clearly
def test_one_pet_voxel_lesion_is_on_a_finer_ct_grid(model, suv):
    pet, centres = _pet_with_hot_voxels({(20, 20, 15): suv})
    centre = centres[(20, 20, 15)]
    spacing = np.array([0.9, 0.9, 1.25])
    # no CT voxel centre within 0.4 mm of the lesion's centre on any axis
    ct = phantom([], (80, 80, 60), spacing, centre + 0.4 - np.array([40, 40, 30]) * spacing, kind="CT",
                 body_radius_mm=30.0)  # air around the body: a CT must look like one
    result = segment_study(ct, pet, model, ALL)

    assert result.totals.lesion_count == 1 and result.lesions[0].voxels == 1
    # the default rule leaves such a speck (one PET voxel, under 0.1 mL) out of the lesion table
    assert segment_study(ct, pet, model).totals.lesion_count == 0
    assert result.lesions[0].on_ct and result.not_on_ct == {}
    found = np.argwhere(sitk.GetArrayViewFromImage(result.label_ct) == 1)[:, ::-1]  # (x, y, z) indices
    assert len(found) >= 1 and set(np.unique(sitk.GetArrayViewFromImage(result.label_ct))) == {0, 1}
    points = np.array([ct.TransformIndexToPhysicalPoint([int(i) for i in index]) for index in found])
    assert np.all(np.abs(points - centre) <= np.asarray(PET_LATTICE["spacing"])), "marked beside the lesion"


def test_lesion_outside_the_ct_field_of_view_is_reported_as_such(model):
    """The model grid reaches beyond the CT where the PET does (network context): a lesion found there has
    PET statistics but cannot be on the CT label, and the result says so."""
    from VeloxSegSlicerLib.engine.inference.postprocess import OUTSIDE_CT

    pet, centres = _pet_with_hot_voxels({(20, 20, 15): 9.0, (20, 2, 15): 12.0})
    # CT: the PET's field of view less its first 8 rows in y, i.e. it ends 11 mm short of the hot voxel
    spacing = np.array([0.9, 0.9, 1.25])
    ct_origin = np.array([-40.72, -40.72 + 8 * 2.036, -45.0])
    ct = phantom([], (90, 70, 70), spacing, ct_origin, kind="CT", body_radius_mm=30.0)
    result = segment_study(ct, pet, model, ALL)

    assert result.totals.lesion_count == 2
    by_centre = {tuple(np.round(centres[index], 3)): index for index in centres}
    outside = [lesion for lesion in result.lesions if not lesion.on_ct]
    assert len(outside) == 1 and result.not_on_ct == {outside[0].id: OUTSIDE_CT}
    lps = np.array([-outside[0].centroid_ras_mm[0], -outside[0].centroid_ras_mm[1], outside[0].centroid_ras_mm[2]])
    assert by_centre[tuple(np.round(lps, 3))] == (20, 2, 15)
    inside = next(lesion for lesion in result.lesions if lesion.on_ct)
    assert set(np.unique(sitk.GetArrayViewFromImage(result.label_ct))) == {0, inside.id}
    assert set(np.unique(sitk.GetArrayViewFromImage(result.label_pet))) == {0, 1, 2}


def test_min_suv_max_drops_lesions_below_it_and_keeps_ids_consecutive(model):

    # Both spheres are above the model's SUV 4 threshold; the larger one is barely so.
    spheres = [((30.0, 0.0, 0.0), 14.0, 5.0), ((-35.0, 10.0, 5.0), 8.0, 9.0)]
    pet = phantom(spheres, (60, 60, 40), (3.3, 3.3, 3.3), (-99.0, -99.0, -66.0))
    ct = phantom([], (60, 60, 40), (3.3, 3.3, 3.3), (-99.0, -99.0, -66.0), kind="CT")
    both = segment_study(ct, pet, model, ALL)
    assert sorted(round(lesion.suv_max, 3) for lesion in both.lesions) == [5.0, 9.0]
    hot = segment_study(ct, pet, model, SegmentOptions(min_lesion_ml=0.0, min_suv_max=7.0))
    assert hot.totals.lesion_count == 1
    assert hot.lesions[0].id == 1 and hot.lesions[0].suv_max == pytest.approx(9.0)
    for label in (hot.label_ct, hot.label_pet):
        assert set(np.unique(sitk.GetArrayViewFromImage(label))) == {0, 1}
    assert segment_study(ct, pet, model, SegmentOptions(min_suv_max=5.0)).totals.lesion_count == 2  # >= keeps


def test_label_maps_min_suv_max_on_a_hand_made_logit_map():
    from VeloxSegSlicerLib.engine.inference.postprocess import label_maps
    from VeloxSegSlicerLib.engine.inference.preprocess import Grid

    shape = (12, 14, 16)  # z, y, x
    logit = np.full(shape, -5.0, np.float32)
    logit[2:6, 2:6, 2:6] = 3.0  # a large lesion, on cool PET
    logit[8:10, 9:11, 10:12] = 3.0  # a small one, on hot PET
    suv = np.full(shape, 1.0, np.float32)
    suv[2:6, 2:6, 2:6] = 2.0
    suv[8:10, 9:11, 10:12] = 6.0
    pet = make_image(suv, (2.0, 2.0, 3.0), (-10.0, -12.0, 5.0))
    grid = Grid(origin=pet.GetOrigin(), spacing=pet.GetSpacing(), size=pet.GetSize())
    _, all_pet, _ = label_maps(logit, grid, pet, pet)
    assert set(np.unique(sitk.GetArrayViewFromImage(all_pet))) == {0, 1, 2}
    _, hot_pet, _ = label_maps(logit, grid, pet, pet, min_suv_max=5.0)
    found = sitk.GetArrayViewFromImage(hot_pet)
    expected = np.zeros(shape, np.uint16)
    expected[8:10, 9:11, 10:12] = 1
    assert np.array_equal(found, expected)  # the cool one is gone; the hot one is lesion 1
    _, none_pet, _ = label_maps(logit, grid, pet, pet, min_suv_max=6.5)
    assert not sitk.GetArrayViewFromImage(none_pet).any()


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "2.5", None])
def test_min_suv_max_must_be_a_finite_number_from_zero(value):
    from VeloxSegSlicerLib.engine import InputError, SegmentOptions

    with pytest.raises(InputError, match="min_suv_max"):
        SegmentOptions(min_suv_max=value).validate()
    SegmentOptions(min_suv_max=0.0).validate()
    SegmentOptions(min_suv_max=2.5).validate()
