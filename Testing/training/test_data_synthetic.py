"""The synthetic PET/CT phantom: deterministic by seed, and its label agrees with its images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from veloxseg_train.data.synth_dataset import generate_dataset, is_lesion_free
from veloxseg_train.data.synthetic import PhantomConfig, generate_case
from veloxseg_train.data.validate import overlap_fraction, same_grid

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
    assert overlap_fraction(case.pet, case.ct) > 0.9, "CT and PET cover the same body"
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
