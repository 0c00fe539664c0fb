"""Synthetic lesions in real studies: the tumour stays labelled, new lesions lie away from it, inside the body
and hot on PET; only studies of `prepare`'s train split serve as backgrounds; `synth --backgrounds` writes a
folder `prepare --synthetic` reads.

The studies here are small stand-ins in the IBSI folder layout (CT_on_PET_grid, PET_SUV, PET_GTV_mask), so
the tests need no real data; one optional test reads a real IBSI study when the shared data are present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from veloxseg_train.cli import main as cli_main
from veloxseg_train.data.prepare import PrepareOptions, output_names, prepare_dataset
from veloxseg_train.data.real_background import (
    BODY_HU,
    MIN_TUMOUR_GAP_MM,
    insert_lesions,
    training_backgrounds,
    write_real_background_dataset,
)
from veloxseg_train.data.sources import find_folder_cases, find_synthetic_cases
from veloxseg_train.data.splits import assign_splits

SHAPE_ZYX = (40, 44, 48)
SPACING = 4.0  # mm, every axis
REPO = Path(__file__).resolve().parents[2]
SHARED = next((p for p in (REPO / "shared", REPO.parent / "shared") if (p / "data" / "ibsi-sts").is_dir()),
              REPO.parent / "shared")
IBSI_STS_002 = SHARED / "data" / "ibsi-sts" / "cases" / "STS_002"


def stand_in(seed=0, tumour_at=(8, 22, 18)):
    """CT (HU), PET (SUV) and tumour mask (z, y, x) of a body cylinder with a spine and one hot tumour."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE_ZYX, dtype=np.float32)
    cy, cx = (SHAPE_ZYX[1] - 1) / 2, (SHAPE_ZYX[2] - 1) / 2
    body = ((y - cy) / (0.4 * SHAPE_ZYX[1])) ** 2 + ((x - cx) / (0.42 * SHAPE_ZYX[2])) ** 2 <= 1
    ct = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 10, SHAPE_ZYX).astype(np.float32)
    ct[(y - cy - 0.25 * SHAPE_ZYX[1]) ** 2 + (x - cx) ** 2 <= 4] = 700.0  # bone: the engine's CT check wants it
    pet = np.where(body, 1.0, 0.0).astype(np.float32) + np.abs(rng.normal(0, 0.1, SHAPE_ZYX)).astype(np.float32)
    tz, ty, tx = tumour_at
    tumour = (((z - tz) ** 2 + (y - ty) ** 2 + (x - tx) ** 2) <= 2.5 ** 2).astype(np.uint8)
    pet[tumour > 0] = 8.0
    return ct, pet, tumour


def write_ibsi_like(folder: Path, seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ct, pet, tumour = stand_in(seed)
    for array, name in ((ct.astype(np.int16), "CT_on_PET_grid"), (pet, "PET_SUV"), (tumour, "PET_GTV_mask")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([SPACING] * 3)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ibsi_like")
    for k in range(6):
        write_ibsi_like(root / f"STS_{k:03d}", seed=k)
    return root


def _lesions(label, tumour, records):
    """The mask of each inserted lesion: the component of the new label voxels holding its centre."""
    components, _ = ndimage.label((label > 0) & (tumour == 0))
    masks = []
    for record in records:
        centre = tuple(int(round(c / SPACING)) for c in record["centre_mm_zyx"])
        assert components[centre] > 0, record
        masks.append(components == components[centre])
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_inserted_lesions_keep_the_tumour_and_lie_away_from_it_in_the_body(seed):
    ct, pet, tumour = stand_in()
    originals = ct.copy(), pet.copy(), tumour.copy()
    new_ct, new_pet, label, records = insert_lesions(ct, pet, tumour, (SPACING,) * 3, np.random.default_rng(seed), 3)
    for before, after in zip(originals, (ct, pet, tumour)):
        np.testing.assert_array_equal(before, after)  # the inputs are not modified
    assert set(np.unique(label)) == {0, 1} and (label[tumour > 0] == 1).all()
    assert len(records) == 3
    gap = ndimage.distance_transform_edt(tumour == 0, sampling=(SPACING,) * 3)
    body = ndimage.binary_fill_holes(ct > BODY_HU)
    new = (label > 0) & (tumour == 0)
    assert new.any() and body[new].all()  # nothing outside the body
    assert int(new.sum()) >= sum(1 for _ in records)
    for record, mask in zip(records, _lesions(label, tumour, records)):
        centre = tuple(int(round(c / SPACING)) for c in record["centre_mm_zyx"])
        assert gap[centre] >= MIN_TUMOUR_GAP_MM
        assert record["voxels"] >= 1
        # hotter than before, and a clear lesion clearly above its local background even after blur
        assert float((new_pet - pet)[mask].sum()) > 0
        if record["kind"] == "clear":
            assert float(new_pet[mask].max()) > 1.5 * record["background_suv"]
        assert -100.0 < float(np.median(new_ct[mask])) < 150.0  # soft-tissue density on CT
    outside = ndimage.binary_dilation(label > 0, iterations=4) == 0
    np.testing.assert_array_equal(new_ct[outside], ct[outside])  # CT untouched away from the lesions


def test_insert_lesions_is_deterministic_by_rng():
    ct, pet, tumour = stand_in()
    first, again, other = (insert_lesions(ct, pet, tumour, (SPACING,) * 3, np.random.default_rng(s), 2)
                           for s in (5, 5, 6))
    for a, b in zip(first[:3], again[:3]):
        np.testing.assert_array_equal(a, b)
    assert first[3] == again[3]
    assert first[3] != other[3]


def test_no_room_means_no_lesion():
    """A study whose body lies wholly within the gap around its tumour gets none (and no crash)."""
    ct, pet, tumour = stand_in()
    ct[:] = -1000.0
    ct[6:11, 19:26, 15:22] = 40.0  # a small block of tissue around the tumour only
    _, new_pet, label, records = insert_lesions(ct, pet, tumour, (SPACING,) * 3, np.random.default_rng(0), 3)
    assert records == [] and np.array_equal(label, tumour)
    np.testing.assert_array_equal(new_pet, pet)


@pytest.mark.parametrize("fractions", [(0.34, 0.34, 1), (0.2, 0.2, 0), (0.1, 0.15, 3)])
def test_training_backgrounds_are_the_train_split_of_prepare(studies, fractions):
    val, test, seed = fractions
    chosen = training_backgrounds(studies, val, test, seed)
    cases = find_folder_cases(studies)
    splits = assign_splits([(n, c.source, False) for n, c in zip(output_names(cases), cases)], val, test, seed)
    expected = {c.name for n, c in zip(output_names(cases), cases) if splits[n] == "train"}
    assert {c.name for c in chosen} == expected
    assert all(c.source == "ibsi" for c in chosen)  # the IBSI names are recognised


def test_training_backgrounds_match_an_actual_prepare_run(studies, tmp_path):
    chosen = {c.name for c in training_backgrounds(studies, 0.34, 0.34, 1)}
    dataset = prepare_dataset(find_folder_cases(studies), tmp_path,
                              PrepareOptions(val_fraction=0.34, test_fraction=0.34, seed=1))
    train = {r["original"]["case"] for r in dataset["cases"] if r["split"] == "train"}
    held_out = {r["original"]["case"] for r in dataset["cases"] if r["split"] != "train"}
    assert chosen == train and held_out and not chosen & held_out


def test_writer_cycles_the_backgrounds_and_is_deterministic(studies, tmp_path):
    backgrounds = find_folder_cases(studies)[:2]
    manifest = write_real_background_dataset(tmp_path / "a", backgrounds, 3, seed=4)
    assert [c["background"] for c in manifest["cases"]] == ["STS_000", "STS_001", "STS_000"]
    assert manifest["source"] == "real_background" and "CC BY 3.0" in manifest["attribution"]
    for entry in manifest["cases"]:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / entry["folder"] / "label.nii.gz")))
        assert int(label.sum()) == entry["lesion_voxels"] > int(stand_in()[2].sum())
        assert entry["lesion_count"] == len(entry["lesions"]) + 1 and not entry["lesion_free"]
    write_real_background_dataset(tmp_path / "b", backgrounds, 1, seed=4)
    for name in ("ct", "pet", "label"):
        first = sitk.ReadImage(str(tmp_path / "a" / "case_0000" / f"{name}.nii.gz"))
        again = sitk.ReadImage(str(tmp_path / "b" / "case_0000" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(again))
        assert first.GetSpacing() == (SPACING,) * 3
    with pytest.raises(ValueError, match="no background"):
        write_real_background_dataset(tmp_path / "c", [], 1, seed=0)


def test_backgrounds_are_read_with_the_engines_reader(tmp_path):
    """A truncated background (ITK would zero-fill its missing voxels) is refused, naming the study."""
    from veloxseg_train.data.case import DataError

    folder = write_ibsi_like(tmp_path / "studies" / "STS_009")
    pet = folder / "PET_SUV.nii.gz"
    pet.write_bytes(pet.read_bytes()[: pet.stat().st_size // 2])
    with pytest.raises(DataError, match=r"case STS_009: PET file '.*PET_SUV.nii.gz' is (incomplete|corrupt)"):
        write_real_background_dataset(tmp_path / "out", find_folder_cases(tmp_path / "studies"), 1, seed=0)


def test_synth_backgrounds_command_feeds_prepare(studies, tmp_path, capsys):
    out, prepared = tmp_path / "realbg", tmp_path / "prep"
    assert cli_main(["synth", "--out", str(out), "--count", "2", "--seed", "1", "--backgrounds", str(studies),
                     "--background-split", "0.34", "0.34", "1"]) == 0
    assert "wrote 2 cases" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    train = {c.name for c in training_backgrounds(studies, 0.34, 0.34, 1)}
    assert set(manifest["backgrounds"]) <= train and {c["background"] for c in manifest["cases"]} <= train
    assert [c.source for c in find_synthetic_cases(out)] == ["real_background"] * 2

    assert cli_main(["prepare", "--out", str(prepared), "--synthetic", str(out)]) == 0
    dataset = json.loads((prepared / "dataset.json").read_text(encoding="utf-8"))
    assert sorted(r["name"] for r in dataset["cases"]) == ["realbg_case_0000", "realbg_case_0001"]
    assert all(r["source"] == "real_background" and r["lesion_voxels"] > 0 for r in dataset["cases"])
    assert "IBSI" in dataset["attribution"]


def test_synth_backgrounds_command_errors(studies, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["synth", "--out", str(tmp_path / "x"), "--count", "1", "--backgrounds", str(empty)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(tmp_path / "y"), "--count", "1", "--backgrounds", str(studies),
                     "--background-split", "0.6", "0.6", "0"]) == 2
    assert "fraction" in capsys.readouterr().err


@pytest.mark.skipif(not IBSI_STS_002.is_dir(), reason=f"IBSI case not found at {IBSI_STS_002} (beside the checkout)")
def test_a_real_ibsi_study_as_background():
    from veloxseg_train.data.sources import case_from_folder

    files = case_from_folder(IBSI_STS_002)
    pet_image = sitk.ReadImage(str(files.pet))
    ct = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(files.ct)), pet_image, sitk.Transform(),
                                              sitk.sitkLinear, -1000.0, sitk.sitkFloat32))
    pet = sitk.GetArrayFromImage(pet_image)
    tumour = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(files.label)), pet_image, sitk.Transform(),
                                                  sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    spacing = tuple(reversed(pet_image.GetSpacing()))
    _, new_pet, label, records = insert_lesions(ct, pet, tumour, spacing, np.random.default_rng(0), 2)
    assert records and (label[tumour > 0] == 1).all() and int(label.sum()) > int(tumour.sum())
    assert float(new_pet[(label > 0) & (tumour == 0)].sum()) > float(pet[(label > 0) & (tumour == 0)].sum())


def test_default_background_split_is_prepares_default_split():
    """With both commands on their defaults, no study that prepare holds out becomes a background."""
    import argparse

    from veloxseg_train.commands import prepare as prepare_command
    from veloxseg_train.commands import synth as synth_command

    synth_parser, prepare_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    synth_command.add_arguments(synth_parser)
    prepare_command.add_arguments(prepare_parser)
    synth = synth_parser.parse_args(["--out", "x", "--count", "1"])
    prepare = prepare_parser.parse_args(["--out", "y", "--cases", "z"])
    options = PrepareOptions()
    assert tuple(synth.background_split) == (prepare.val_fraction, prepare.test_fraction, prepare.seed) == (
        options.val_fraction, options.test_fraction, options.seed)
