"""`prepare`: the prepared-dataset format, per-source splits, constants from the training split only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from data_fixtures import tiny_arrays, write_case
from scipy import ndimage

from veloxseg_train.cli import main as cli_main
from veloxseg_train.data.prepare import DatasetError, PrepareOptions, prepare_case, prepare_dataset
from veloxseg_train.data.prepared import load_case, load_dataset, split_cases
from veloxseg_train.data.sources import case_from_folder, find_folder_cases
from veloxseg_train.data.splits import assign_splits
from veloxseg_train.data.synthetic import PhantomConfig, generate_case

REPO = Path(__file__).resolve().parents[2]
SHARED = next((p for p in (REPO / "shared", REPO.parent / "shared") if (p / "data" / "ibsi-sts").is_dir()),
              REPO.parent / "shared")
IBSI_STS_002 = SHARED / "data" / "ibsi-sts" / "cases" / "STS_002"
OPTIONS = PrepareOptions(val_fraction=0.34, test_fraction=0.34, seed=1)


@pytest.fixture(scope="module")
def four_cases(tmp_path_factory) -> Path:
    """Three lesion cases with different tissue levels, and a lesion-free one."""
    root = tmp_path_factory.mktemp("raw")
    for name, ct, suv, seed in (("a", 40.0, 1.0, 0), ("b", 150.0, 2.5, 1), ("c", -60.0, 0.6, 2)):
        write_case(root / name, ct_tissue=ct, pet_tissue=suv, seed=seed)
    write_case(root / "free", ct_tissue=20.0, pet_tissue=0.8, lesion=False, seed=3)
    return root


@pytest.fixture(scope="module")
def prepared(four_cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep")
    prepare_dataset(find_folder_cases(four_cases), out, OPTIONS)
    return out


def test_dataset_json_format(prepared):
    dataset = load_dataset(prepared)
    assert dataset["format"] == "veloxseg-prepared/1"
    assert dataset["spacing_xyz_mm"] == [2.036, 2.036, 3.0]
    assert {c["name"] for c in dataset["cases"]} == {"case_a", "case_b", "case_c", "case_free"}
    for record in dataset["cases"]:
        assert set(record) >= {"name", "source", "split", "file", "shape_zyx", "lesion_voxels", "lesion_free"}
        assert record["source"] == "folder"
        case = load_case(prepared, record)
        assert case.ct.dtype == case.pet.dtype == np.float32 and case.label.dtype == np.uint8
        assert list(case.ct.shape) == record["shape_zyx"] == list(case.label.shape)
        assert int(case.label.sum()) == record["lesion_voxels"]
        assert record["lesion_free"] == (record["name"] == "case_free")
        assert case.spacing_xyz == (2.036, 2.036, 3.0) and case.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert case.pet.min() >= 0.0 and case.ct.min() >= -1024.0
    for modality, unit in (("CT", "HU"), ("PET", "SUVbw")):
        assert set(dataset["normalization"][modality]) == {"clip_low", "clip_high", "mean", "std", "unit"}
        assert dataset["normalization"][modality]["unit"] == unit
    assert "user-supplied" in dataset["attribution"]


def test_splits_hold_out_cases_of_each_kind(prepared):
    dataset = load_dataset(prepared)
    lesion_cases = {c["name"]: c["split"] for c in dataset["cases"] if not c["lesion_free"]}
    assert sorted(lesion_cases.values()) == ["test", "train", "val"]
    assert [c["name"] for c in split_cases(dataset, "train")] == sorted(
        [n for n, s in lesion_cases.items() if s == "train"] + ["case_free"])


def test_constants_come_from_the_training_split_only(prepared):
    dataset = load_dataset(prepared)
    hu, suv = [], []
    for record in split_cases(dataset, "train"):
        case = load_case(prepared, record)
        body = case.ct > -500
        hu.append(np.rint(case.ct[body]))
        suv.append(np.clip(case.pet[body].astype(np.float64), 0, 30))
    hu, suv = np.concatenate(hu), np.concatenate(suv)
    low, high = np.percentile(hu, [0.5, 99.5], method="inverted_cdf")
    ct, pet = dataset["normalization"]["CT"], dataset["normalization"]["PET"]
    assert (ct["clip_low"], ct["clip_high"]) == (low, high)
    assert ct["mean"] == pytest.approx(np.clip(hu, low, high).mean(), abs=0.01)
    assert ct["std"] == pytest.approx(np.clip(hu, low, high).std(), rel=1e-3)
    assert (pet["clip_low"], pet["clip_high"]) == (0.0, 30.0)
    assert pet["mean"] == pytest.approx(suv.mean(), rel=1e-4) and pet["std"] == pytest.approx(suv.std(), rel=1e-4)
    everything = np.concatenate([load_case(prepared, r).pet[load_case(prepared, r).ct > -500]
                                 for r in dataset["cases"]])
    assert abs(pet["mean"] - everything.mean()) > 0.05, "val/test cases must not leak into the constants"


def test_tilted_phantom_stays_aligned(tmp_path):
    phantom = generate_case(2, lesion_free=False, config=PhantomConfig(
        pet_spacing_mm=(3.5, 3.5, 3.5), ct_spacing_mm=(3.0, 3.0), tilt_fraction=1.0))
    folder = tmp_path / "tilted"
    folder.mkdir()
    for image, name in ((phantom.ct, "ct"), (phantom.pet, "pet"), (phantom.label, "label")):
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    (tmp_path / "out" / "cases").mkdir(parents=True)
    record, _ = prepare_case(case_from_folder(folder, "synthetic"), "t", tmp_path / "out", PrepareOptions())
    case = load_case(tmp_path / "out", record)
    lesion = case.label > 0
    ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion)
    assert case.pet[lesion].mean() > 1.5 * np.median(case.pet[ring])
    original_ml = phantom.info["lesion_voxels"] * np.prod(phantom.pet.GetSpacing()) / 1000
    assert lesion.sum() * np.prod(case.spacing_xyz) / 1000 == pytest.approx(original_ml, rel=0.3)


def test_bad_case_stops_prepare_unless_skipped(tmp_path):
    write_case(tmp_path / "raw" / "good")
    ct, pet, label = tiny_arrays()
    label[0, 0, 0] = 3
    write_case(tmp_path / "raw" / "broken", arrays=(ct, pet, label))
    cases = find_folder_cases(tmp_path / "raw")
    with pytest.raises(DatasetError, match=r"case broken: label is not binary") as info:
        prepare_dataset(cases, tmp_path / "p1")
    assert len(info.value.errors) == 1 and not (tmp_path / "p1" / "dataset.json").exists()
    dataset = prepare_dataset(cases, tmp_path / "p2", PrepareOptions(skip_bad=True))
    assert [c["name"] for c in dataset["cases"]] == ["case_good"]
    assert dataset["excluded"] == ["case broken: label is not binary: values {0, 1, 3}; expected 0 "
                                   "(background) and 1 (lesion) only"]


@pytest.mark.skipif(not IBSI_STS_002.is_dir(), reason=f"IBSI case not found at {IBSI_STS_002} (beside the checkout)")
def test_real_ibsi_case_and_attribution(tmp_path):
    dataset = prepare_dataset([case_from_folder(IBSI_STS_002)], tmp_path)
    record = dataset["cases"][0]
    assert (record["name"], record["source"], record["split"]) == ("ibsi_STS_002", "ibsi", "train")
    assert "Valli\u00e8res" in dataset["attribution"] and "10.7937/K9/TCIA.2015.7GO2GSKS" in dataset["attribution"]
    case = load_case(tmp_path, record)
    assert case.pet[case.label > 0].mean() > 3 * np.median(case.pet[case.ct > -500])


def test_split_assignment():
    ibsi = [(f"STS_{i:03d}", "ibsi", False) for i in range(29)]
    synth = [(f"case_{i:04d}", "synthetic", i % 7 == 6) for i in range(40)]
    splits = assign_splits(ibsi + synth, 0.15, 0.2, seed=0)
    assert splits == assign_splits(ibsi + synth, 0.15, 0.2, seed=0)
    assert splits != assign_splits(ibsi + synth, 0.15, 0.2, seed=1)
    ibsi_counts = [sum(splits[n] == s for n, _, _ in ibsi) for s in ("train", "val", "test")]
    assert ibsi_counts == [19, 4, 6]
    free = [n for n, _, f in synth if f]
    assert {splits[n] for n in free} >= {"train", "test"}, "lesion-free phantoms are held out too"
    assert assign_splits([("only", "ibsi", False)], 0.15, 0.2, 0) == {"only": "train"}


def test_command_line(four_cases, tmp_path, capsys):
    out = tmp_path / "prep"
    assert cli_main(["prepare", "--out", str(out), "--cases", str(four_cases), "--seed", "3"]) == 0
    assert "prepared 4 cases" in capsys.readouterr().out
    assert cli_main(["prepare", "--out", str(out), "--cases", str(four_cases)]) == 2  # refuses to overwrite
    assert cli_main(["prepare", "--out", str(out), "--cases", str(four_cases), "--force"]) == 0
    assert json.loads((out / "dataset.json").read_text())["format"] == "veloxseg-prepared/1"
    assert cli_main(["prepare", "--out", str(tmp_path / "x"), "--cases", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_given_normalisation_is_kept_and_a_bad_file_refused(prepared, four_cases, tmp_path, capsys):
    """A run resumed on regenerated data keeps its constants: prepare --normalization takes them from a
    fingerprint/dataset/manifest file instead of computing them."""
    computed = load_dataset(prepared)["normalization"]
    run_constants = json.loads(json.dumps(computed))
    run_constants["CT"]["mean"] += 1.5
    run_constants["PET"]["std"] *= 1.01
    given = tmp_path / "data_fingerprint.json"
    given.write_text(json.dumps({"normalization": run_constants, "cases": {}}))
    out = tmp_path / "prep"
    assert cli_main(["prepare", "--out", str(out), "--cases", str(four_cases), "--normalization", str(given)]) == 0
    dataset = load_dataset(out)
    assert dataset["normalization"] == run_constants != computed
    assert dataset["normalization_method"].startswith("given")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"normalization": {"CT": {"mean": 0.0}}}))
    capsys.readouterr()
    assert cli_main(["prepare", "--out", str(tmp_path / "p2"), "--cases", str(four_cases), "--normalization",
                     str(broken)]) == 1
    assert "not a JSON file with a complete 'normalization' entry" in capsys.readouterr().err
    assert not (tmp_path / "p2" / "dataset.json").exists()
