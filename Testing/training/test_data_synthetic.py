"""The synthetic PET/CT phantom: deterministic by seed, and its label agrees with its images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from veloxseg_train.data.synth_dataset import generate_dataset, is_lesion_free
from veloxseg_train.data.synthetic import PhantomConfig, generate_case
from veloxseg_train.data.validate import same_grid
from VeloxSegSlicerLib.engine.inference.preprocess import field_of_view
from VeloxSegSlicerLib.engine.inputs.checks import pet_in_ct_fraction

# A coarse grid keeps most tests fast; one test uses the default (full-resolution) phantom.
COARSE = PhantomConfig(pet_spacing_mm=(4.0, 4.0, 4.0), ct_spacing_mm=(3.0, 3.0))
TILTED = PhantomConfig(pet_spacing_mm=(3.5, 3.5, 3.5), ct_spacing_mm=(3.0, 3.0), tilt_fraction=1.0)


def arrays(case):
    return [sitk.GetArrayFromImage(image) for image in (case.ct, case.pet, case.label)]


@pytest.fixture(scope="module")
def full_case():
    return generate_case(11, lesion_free=False)


def test_same_seed_same_phantom_other_seed_other_phantom():
    first, again, other = (generate_case(seed, config=COARSE) for seed in (3, 3, 4))
    for a, b in zip(arrays(first), arrays(again)):
        np.testing.assert_array_equal(a, b)
    assert first.lesions == again.lesions and first.info == again.info
    assert first.info["variants"] is not None  # variants on, and drawn the same way
    assert first.ct.GetOrigin() == again.ct.GetOrigin() and first.pet.GetSpacing() == again.pet.GetSpacing()
    assert first.pet.GetSize() != other.pet.GetSize() or not np.array_equal(arrays(first)[1], arrays(other)[1])


def _lesion_contrasts(case):
    """(lesion entry, measured contrast) with contrast = mean PET in the lesion / median of a ring around it."""
    pet, label = sitk.GetArrayFromImage(case.pet), sitk.GetArrayFromImage(case.label)
    components, _ = ndimage.label(label)
    voxels = np.argwhere(components > 0)
    out = []
    for lesion in case.lesions:
        centre = np.array(case.pet.TransformPhysicalPointToContinuousIndex(lesion["centre_lps_mm"]))[::-1]
        nearest = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
        own = components == components[tuple(nearest)]
        ring = ndimage.binary_dilation(own, iterations=3) & ~ndimage.binary_dilation(own) & (label == 0)
        out.append((lesion, float(pet[own].mean() / np.median(pet[ring]))))
    return out


def _check_agreement(case):
    assert same_grid(case.label, case.pet), "the label lives on the PET grid"
    assert pet_in_ct_fraction(field_of_view(case.ct), field_of_view(case.pet)) > 0.9, "CT and PET cover the same body"
    assert case.ct.GetSpacing()[0] < case.pet.GetSpacing()[0], "the CT has its own, finer grid"
    assert case.ct.GetSize() != case.pet.GetSize() and case.ct.GetOrigin() != case.pet.GetOrigin()
    label = sitk.GetArrayFromImage(case.label)
    assert set(np.unique(label)) <= {0, 1} and int(label.sum()) == case.info["lesion_voxels"]
    assert len(case.lesions) == ndimage.label(label)[1], "lesions do not touch: one component each"
    for lesion, contrast in _lesion_contrasts(case):
        if lesion["visible"]:
            assert contrast > 1.2, f"visible lesion not hot in PET: {lesion}"
    # Lesions are on the CT too: soft tissue (or bone) where the lesion is, in HU.
    ct_on_pet = sitk.GetArrayFromImage(sitk.Resample(case.ct, case.pet, sitk.Transform(), sitk.sitkLinear,
                                                     -1000.0, sitk.sitkFloat32))
    assert float(np.median(ct_on_pet[label > 0])) > -300 if label.any() else True


def test_full_phantom_label_and_images_agree(full_case):
    assert full_case.lesions and not full_case.info["lesion_free"]
    _check_agreement(full_case)
    pet = sitk.GetArrayFromImage(full_case.pet)
    ct = sitk.GetArrayFromImage(full_case.ct)
    assert 5.0 < float(pet.max()) < 120.0 and float(pet.min()) >= 0.0  # brain/bladder hot, never negative
    assert (ct < -700).any() and (ct > 500).any() and ct.dtype == np.int16  # lungs and bone in HU
    assert full_case.pet.GetSpacing()[2] >= 2.5 and full_case.pet.GetSize()[2] >= 250  # whole body


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coarse_and_tilted_phantoms_agree(seed):
    case = generate_case(seed, lesion_free=False, config=TILTED if seed == 2 else COARSE)
    _check_agreement(case)
    if seed == 2:
        assert not np.allclose(case.pet.GetDirection(), np.eye(3).ravel())
        assert np.allclose(case.ct.GetDirection(), np.eye(3).ravel())


def test_visible_lesions_dominate():
    """Across phantoms most lesions are visible, and barely visible ones exist but stay rare."""
    kinds = [lesion["kind"] for seed in range(3, 7)
             for lesion in generate_case(seed, lesion_free=False, config=COARSE).lesions]
    assert kinds.count("clear") > 2 * kinds.count("barely")


def test_lesion_free_case_has_empty_label():
    case = generate_case(5, lesion_free=True, config=COARSE)
    assert case.lesions == [] and case.info["lesion_free"]
    assert not sitk.GetArrayViewFromImage(case.label).any()


def test_lesion_free_pattern_is_exact():
    assert sum(is_lesion_free(i, 0.15) for i in range(200)) == 30
    assert sum(is_lesion_free(i, 0.0) for i in range(50)) == 0


def test_dataset_writer(tmp_path):
    manifest = generate_dataset(tmp_path / "a", count=2, seed=9, config=COARSE)
    assert manifest["format"] == "veloxseg-synthetic/1" and manifest["count"] == 2
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [c["name"] for c in on_disk["cases"]] == ["case_0000", "case_0001"]
    for name in ("ct", "pet", "label"):
        assert (tmp_path / "a" / "case_0001" / f"{name}.nii.gz").stat().st_size > 0
    # Case i depends only on (seed, i): a shorter run reproduces the same first case.
    generate_dataset(tmp_path / "b", count=1, seed=9, config=COARSE)
    first = sitk.ReadImage(str(tmp_path / "a" / "case_0000" / "pet.nii.gz"))
    again = sitk.ReadImage(str(tmp_path / "b" / "case_0000" / "pet.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(again))


def test_command_line(tmp_path, capsys):
    from veloxseg_train.cli import main

    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--count", "1", "--seed", "2"]) == 0
    assert "wrote 1 cases" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["cases"][0]["name"] == "case_0000"
    assert main(["synth", "--out", str(out), "--count", "1"]) == 2  # refuses to overwrite without --force


# --- phantom families and variants (issue 12) ---------------------------------------------------------------


def _intervals(spec):
    """The (low, high) intervals of a range spec: one interval, or several."""
    return [tuple(spec)] if isinstance(spec[0], (int, float)) else [tuple(i) for i in spec]


def _inside(value, spec):
    return any(lo <= value <= hi for lo, hi in _intervals(spec))


def test_draw_stays_in_its_intervals_and_uses_each():
    from veloxseg_train.data.phantom_anatomy import draw

    rng = np.random.default_rng(0)
    single = [draw(rng, (2.0, 3.0)) for _ in range(200)]
    assert min(single) >= 2.0 and max(single) <= 3.0
    split = [draw(rng, ((0.0, 1.0), (10.0, 11.0))) for _ in range(400)]
    assert all(_inside(v, ((0.0, 1.0), (10.0, 11.0))) for v in split)
    low = sum(v <= 1.0 for v in split)
    assert 150 < low < 250  # both intervals, with equal odds


# Ranges where the held-out family is designed to lie outside the training family.
HELD_OUT_ANATOMY = ("height", "lean", "fat_mm", "belly", "organ_scale", "uptake_scale")
HELD_OUT_IMAGING = ("fwhm_mm", "noise_level", "noise_grain", "ct_noise_hu", "pet_in_plane_mm")


@pytest.mark.parametrize("name", HELD_OUT_ANATOMY + HELD_OUT_IMAGING)
def test_held_out_ranges_do_not_overlap_the_training_ones(name):
    train, held = PhantomConfig(), PhantomConfig.held_out()
    if name in HELD_OUT_ANATOMY:
        train, held = train.anatomy, held.anatomy
    for lo, hi in _intervals(getattr(held, name)):
        for t_lo, t_hi in _intervals(getattr(train, name)):
            assert hi <= t_lo or lo >= t_hi, f"{name}: held-out {lo, hi} overlaps training {t_lo, t_hi}"


def test_family_names():
    assert PhantomConfig.family("train") == PhantomConfig()
    assert PhantomConfig.family("held_out", lesion_free_fraction=0.3) == PhantomConfig.held_out(
        lesion_free_fraction=0.3)
    assert PhantomConfig.held_out().model_grid_fraction == 0.0  # never exactly on the training grid
    with pytest.raises(ValueError, match="unknown phantom family"):
        PhantomConfig.family("test")


def test_held_out_bodies_lie_outside_the_training_intervals():
    from veloxseg_train.data.phantom_anatomy import ORGANS, AnatomyRanges, sample_body

    train, held = AnatomyRanges(), AnatomyRanges.held_out()
    for seed in range(40):
        body = sample_body(np.random.default_rng(seed), held)
        for value, name in ((body.height, "height"), (body.lean, "lean"), (body.fat, "fat_mm"),
                            (body.belly, "belly")):
            assert _inside(value, getattr(held, name)), (seed, name, value)
            lo, hi = getattr(train, name)
            assert not lo < value < hi, (seed, name, value)
        for organ in ORGANS:
            assert all(not train.organ_scale[0] < s < train.organ_scale[1] for s in body.organ_scale[organ])
            assert np.all(np.abs(body.organ_shift[organ]) <= held.organ_shift_mm)
        trained = sample_body(np.random.default_rng(seed), train)
        assert train.height[0] <= trained.height <= train.height[1]
        assert all(train.organ_scale[0] <= s <= train.organ_scale[1] for s in trained.organ_scale["liver"])


def test_held_out_phantom_images_come_from_the_held_out_ranges():
    config = PhantomConfig.held_out(pet_spacing_mm=(4.0, 4.0, 4.0), ct_spacing_mm=(3.0, 3.0))
    train = PhantomConfig()
    for seed in (0, 1):
        info = generate_case(seed, lesion_free=False, config=config).info
        for key, name in (("fwhm_mm", "fwhm_mm"), ("noise_level", "noise_level"), ("ct_noise_hu", "ct_noise_hu")):
            # info rounds the drawn value, so compare with a rounding margin
            lo, hi = getattr(train, name)
            assert not lo + 1e-2 < info[key] < hi - 1e-2, (seed, key, info[key])
        assert not train.anatomy.height[0] < info["height_scale"] < train.anatomy.height[1]


def test_variant_odds_over_many_draws():
    """What `sample_variants` decides comes with roughly the odds it is written with (no images drawn)."""
    from veloxseg_train.data.phantom_anatomy import sample_body
    from veloxseg_train.data.phantom_variants import FIELDS_OF_VIEW, sample_variants

    rng = np.random.default_rng(123)
    n = 2000
    draws = [sample_variants(rng, sample_body(rng)) for _ in range(n)]

    def share(test):
        return sum(bool(test(v)) for v in draws) / n

    expected = {
        "arms up": (lambda v: v.arms == "up", 0.55), "arms down": (lambda v: v.arms == "down", 0.4),
        "breasts": (lambda v: v.breasts, 0.45), "ureters": (lambda v: v.ureters, 0.7),
        "inflamed joints": (lambda v: v.inflamed_joints, 0.2), "injection site": (lambda v: v.injection_site, 0.3),
        "contamination": (lambda v: v.contamination, 0.12), "metal": (lambda v: v.metal is not None, 0.1),
        "hot thyroid": (lambda v: v.thyroid_suv >= 3.0, 0.1),
        "exercised thighs": (lambda v: "thighs" in v.exercised, 0.12),
    }
    for fov, odds, _start, _end in FIELDS_OF_VIEW:
        expected[fov] = (lambda v, fov=fov: v.fov == fov, odds)
    for name, (test, odds) in expected.items():
        assert share(test) == pytest.approx(odds, abs=0.04), name
    assert share(lambda v: v.lactating and not v.breasts) == 0.0
    for v in draws:
        _, _, start, end = next(f for f in FIELDS_OF_VIEW if f[0] == v.fov)
        assert start[0] <= v.depth_range[0] <= start[1]
        assert end is None or end[0] <= v.depth_range[1] <= end[1]
        assert 0.8 <= v.thyroid_suv <= 10.0


def _case_with(monkeypatch, seed, config=COARSE, **changes):
    """A phantom whose drawn variants are overridden by `changes` (callables get the body)."""
    import dataclasses

    from veloxseg_train.data import synthetic

    original = synthetic.sample_variants

    def sample(rng, body):
        values = {k: (v(body) if callable(v) else v) for k, v in changes.items()}
        return dataclasses.replace(original(rng, body), **values)

    monkeypatch.setattr(synthetic, "sample_variants", sample)
    return generate_case(seed, lesion_free=False, config=config)


def _x_extent_mm(case, suv=0.15):
    """Width of the part of the PET with uptake (the body and arms; the couch and air have none)."""
    columns = np.flatnonzero((sitk.GetArrayViewFromImage(case.pet) > suv).any(axis=(0, 1)))
    return (columns[-1] - columns[0] + 1) * case.pet.GetSpacing()[0]


def test_arms_down_widen_the_body(monkeypatch):
    plain = dict(breasts=False, injection_site=False, contamination=False)
    down = _case_with(monkeypatch, 3, arms="down", **plain)
    none = _case_with(monkeypatch, 3, arms="none", **plain)
    assert down.info["variants"]["arms"] == "down" and none.info["variants"]["arms"] == "none"
    assert down.pet.GetSize()[0] > none.pet.GetSize()[0]  # the field of view makes room for them
    assert _x_extent_mm(down) > _x_extent_mm(none) + 100.0  # two arms, each several cm wide


def test_partial_field_of_view_is_shorter(monkeypatch):
    whole = _case_with(monkeypatch, 3, fov="vertex_to_thigh", depth_range=lambda body: (-20.0, body.scan_depth))
    thorax = _case_with(monkeypatch, 3, fov="thorax", depth_range=(230.0, 600.0))
    z_whole = whole.pet.GetSize()[2] * whole.pet.GetSpacing()[2]
    z_thorax = thorax.pet.GetSize()[2] * thorax.pet.GetSpacing()[2]
    assert z_thorax < 0.5 * z_whole
    height = whole.info["height_scale"]  # nominal depths are scaled by the body's height
    assert z_thorax == pytest.approx(370.0 * height, abs=3 * thorax.pet.GetSpacing()[2])
    assert thorax.info["variants"]["fov"] == "thorax"


def test_metal_saturates_the_ct_and_its_streaks_start_at_it(monkeypatch):
    from veloxseg_train.data import synthetic

    real, seen = synthetic._metal_streaks, []

    def spy(ct, centres, ct_origin, ct_spacing, rng):
        seen.extend(np.asarray(c, float) for c in centres)
        return real(ct, centres, ct_origin, ct_spacing, rng)

    monkeypatch.setattr(synthetic, "_metal_streaks", spy)
    config = PhantomConfig(pet_spacing_mm=(4.0, 4.0, 4.0), ct_spacing_mm=(3.0, 3.0), tilt_fraction=1.0)
    case = _case_with(monkeypatch, 7, config=config, metal="hip", fov="vertex_to_thigh",
                      depth_range=lambda body: (-20.0, body.scan_depth))
    ct = sitk.GetArrayFromImage(case.ct)
    metal = np.argwhere(ct >= 3071)
    assert len(metal) > 50 and case.info["variants"]["metal"] == "hip"
    # The streaks are centred on the metal as it lies on the CT (tilted PET frame, misregistration).
    assert len(seen) == 1
    points = np.array([case.ct.TransformIndexToPhysicalPoint([int(i) for i in v[::-1]]) for v in metal])
    assert np.linalg.norm(points - seen[0], axis=1).min() < 12.0


def test_metal_streaks_are_bright_and_dark_near_the_metal_only():
    from veloxseg_train.data.synthetic import _metal_streaks

    ct = np.zeros((13, 64, 64), np.float32)
    spacing, origin = (2.0, 2.0, 5.0), (0.0, 0.0, 0.0)
    _metal_streaks(ct, [(64.0, 64.0, 30.0)], origin, spacing, np.random.default_rng(0))  # slice 6
    assert ct[6].max() > 100.0 and ct[6].min() < -100.0
    assert not ct[:2].any() and not ct[11:].any()  # 20 mm reach at 5 mm slices: slices 2 to 10
    assert np.abs(ct[6]).mean() > np.abs(ct[9]).mean() > 0  # fading away from the metal's slice


def test_no_metal_no_saturated_ct():
    for seed in range(3):
        case = generate_case(seed, config=PhantomConfig(pet_spacing_mm=(4.0, 4.0, 4.0), ct_spacing_mm=(3.0, 3.0),
                                                        variants=False))
        assert case.info["variants"] is None
        assert int(sitk.GetArrayViewFromImage(case.ct).max()) < 2000


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_pet_stays_plausible_and_every_lesion_is_labelled(seed):
    case = generate_case(seed, lesion_free=False, config=COARSE)
    pet = sitk.GetArrayViewFromImage(case.pet)
    assert 3.0 < float(pet.max()) < 200.0 and float(pet.min()) >= 0.0
    label = sitk.GetArrayViewFromImage(case.label)
    assert case.lesions and all(lesion["voxels"] >= 1 for lesion in case.lesions)
    assert sum(lesion["voxels"] for lesion in case.lesions) == int(label.sum())
    assert len(case.lesions) == ndimage.label(label)[1]


def _canvas(n=15, step=4.0):
    from veloxseg_train.data.phantom_canvas import MUSCLE, Canvas

    axis = (np.arange(n) - n // 2) * step
    canvas = Canvas(axis, axis, axis, {MUSCLE: (1.0, 40.0)})
    canvas.tissue[:] = MUSCLE
    canvas.suv[:] = 1.0
    canvas.hu[:] = 40.0
    return canvas


@pytest.mark.parametrize("seed", range(8))
def test_heterogeneous_lesions_stay_bounded(seed):
    """Patchy uptake never explodes: a one-voxel lesion once came out at SUV 4e5."""
    from veloxseg_train.data.phantom_lesions import Lesion, _draw_one

    rng = np.random.default_rng(seed)
    tiny = Lesion("soft", "soft", (0.3, -0.2, 0.1), (1.0, 1.2, 0.9), 10.0, 1.0, "clear", False, 1, 0.35)
    canvas, label = _canvas(), np.zeros((15, 15, 15), np.uint8)
    assert _draw_one(canvas, label, tiny, rng) == 1 == int(label.sum())
    # one voxel: too few for patches, so it carries the smooth profile (7.5 at the rim to 10 at the centre)
    assert 7.5 <= float(canvas.suv[label > 0][0]) <= 10.0 and float(canvas.suv.max()) <= 10.0

    large = Lesion("soft", "soft", (0.0, 0.0, 0.0), (14.0, 12.0, 13.0), 10.0, 1.0, "clear", False, 2, 0.35)
    canvas, label = _canvas(), np.zeros((15, 15, 15), np.uint8)
    voxels = _draw_one(canvas, label, large, rng)
    inside = canvas.suv[label > 0]
    assert voxels == inside.size > 100
    assert inside.min() >= 1.0 and inside.max() <= 10.0 * (1.0 + 0.35 * 3.0) + 1e-4
    assert inside.std() > 0.5  # patchy, not smooth


def test_add_uptake_changes_pet_only():
    from veloxseg_train.data.phantom_canvas import MUSCLE

    canvas = _canvas()
    canvas.suv[7, 7, 7] = 30.0
    canvas.add_uptake(canvas.ellipsoid((0.0, 0.0, 0.0), (6.0, 6.0, 6.0)), 12.0)
    assert float(canvas.suv[7, 7, 7]) == 30.0  # raised to at least the value, never lowered
    assert float(canvas.suv[7, 7, 8]) == 12.0 and float(canvas.suv[0, 0, 0]) == 1.0
    assert (canvas.tissue == MUSCLE).all() and (canvas.hu == 40.0).all()
    canvas.add_uptake(None, 99.0)  # outside the grid: nothing
    assert float(canvas.suv.max()) == 30.0
