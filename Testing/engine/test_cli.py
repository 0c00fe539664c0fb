"""The `veloxseg` command end to end: segment, batch, info, exit codes, and bad inputs that must each give
a specific error and write nothing."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import hot_voxel_pet, make_image, phantom

from VeloxSegSlicerLib.engine.cohort import batch_study, cli
from VeloxSegSlicerLib.engine.errors import InputError

SMALL_STUDY = Path(__file__).resolve().parents[1] / "Data" / "small_study"
GRID = {"size": (40, 40, 30), "spacing": (4.0, 4.0, 4.0), "origin": (-80.0, -80.0, -60.0)}
LESION = ((10.0, -5.0, 0.0), 12.0, 9.0)


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_segment(capsys, ct, pet, out, model, stats=None, extra=()):
    """`veloxseg segment` with the usual arguments; returns (code, stdout, stderr)."""
    args = ["segment", "--ct", ct, "--pet", pet, "--out", out]
    if stats is not None:
        args += ["--stats", stats]
    return run(capsys, *args, "--model", model, *extra)


def write_study(folder: Path, ct=None, pet=None, ct_name="ct.nii.gz", pet_name="pet.nii.gz"):
    folder.mkdir(parents=True, exist_ok=True)
    ct = ct if ct is not None else phantom([], kind="CT", **GRID)
    pet = pet if pet is not None else phantom([LESION], kind="PET", **GRID)
    sitk.WriteImage(ct, str(folder / ct_name))
    sitk.WriteImage(pet, str(folder / pet_name))
    return folder / ct_name, folder / pet_name


def files_in(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


@pytest.fixture()
def study(tmp_path):
    ct, pet = write_study(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    return ct, pet, out


# --- success paths -------------------------------------------------------------------------------------


def test_segment_small_real_study(tmp_path, capsys, manifest_path):
    out, stats = tmp_path / "lesions.nii.gz", tmp_path / "stats.csv"
    code, stdout, _ = run_segment(
        capsys, SMALL_STUDY / "ct.nii.gz", SMALL_STUDY / "pet.nii.gz", out, manifest_path, stats=stats
    )
    assert code == 0, stdout
    assert files_in(tmp_path) == {"lesions.nii.gz", "stats.csv"}
    label, ct = sitk.ReadImage(str(out)), sitk.ReadImage(str(SMALL_STUDY / "ct.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt16
    assert label.GetSize() == ct.GetSize()
    assert np.allclose(label.GetOrigin(), ct.GetOrigin()) and np.allclose(label.GetSpacing(), ct.GetSpacing())
    rows = list(csv.DictReader(stats.open()))
    assert rows and rows[0]["lesion_id"] == "1"
    assert float(rows[0]["suv_max"]) == pytest.approx(21.676, abs=0.01)  # the sarcoma's SUVmax
    assert int(sitk.GetArrayFromImage(label).max()) == len(rows)
    assert f"{len(rows)} lesion{'' if len(rows) == 1 else 's'}, total MTV" in stdout


def test_gaussian_blending_reaches_the_engine(tmp_path, capsys, manifest_path, monkeypatch):
    used = []
    real_segment_study = cli.segment_study

    def recording_segment_study(ct, pet, model, options, **kwargs):
        used.append(options)
        return real_segment_study(ct, pet, model, options, **kwargs)

    monkeypatch.setattr(cli, "segment_study", recording_segment_study)
    out = tmp_path / "lesions.nii.gz"
    code, stdout, _ = run_segment(capsys, SMALL_STUDY / "ct.nii.gz", SMALL_STUDY / "pet.nii.gz", out,
                                  manifest_path, extra=("--blending", "gaussian", "--overlap", "0.5"))
    assert code == 0, stdout
    assert [(o.blending, o.overlap) for o in used] == [("gaussian", 0.5)]
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).max()) >= 1  # the sarcoma is still found


def test_segment_reports_a_lesion_outside_the_ct_field_of_view(tmp_path, capsys, manifest_path):
    """A lesion where only the PET reaches has statistics but no CT voxel: the stats CSV and the summary
    say so (on_ct 0), and the label holds only the other lesion."""
    pet_grid = {"size": (40, 40, 30), "spacing": (2.036, 2.036, 3.0), "origin": (-40.72, -40.72, -45.0)}
    pet = hot_voxel_pet({(20, 20, 15): 9.0, (20, 2, 15): 12.0}, **pet_grid)
    ct = phantom([], (90, 70, 70), (0.9, 0.9, 1.25), (-40.72, -40.72 + 8 * 2.036, -45.0), kind="CT",
                 body_radius_mm=35.0)  # with air around: a CT must look like one
    ct_path, pet_path = write_study(tmp_path, ct, pet)
    out, stats = tmp_path / "o.nrrd", tmp_path / "s.csv"
    # one-voxel test lesions: below the default rule's 0.1 mL, so report everything
    code, stdout, err = run_segment(capsys, ct_path, pet_path, out, manifest_path, stats=stats,
                                    extra=("--min-lesion-ml", "0"))
    assert code == 0, err
    rows = {row["lesion_id"]: row for row in csv.DictReader(stats.open())}
    assert sorted(row["on_ct"] for row in rows.values()) == ["0", "1"]
    outside = next(lesion_id for lesion_id, row in rows.items() if row["on_ct"] == "0")
    assert f"lesion {outside}: " in stdout and "not on the CT label: outside the CT field of view" in stdout
    assert "2 lesions," in stdout and "1 not on the CT label" in stdout
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(label).tolist()) == {0} | {int(i) for i, row in rows.items() if row["on_ct"] == "1"}


def test_segment_volume_smaller_than_a_patch(tmp_path, capsys, manifest_path):
    grid = {"size": (20, 18, 12), "spacing": (3.0, 3.0, 3.0), "origin": (-30.0, -27.0, -18.0)}
    ct, pet = write_study(
        tmp_path,
        phantom([], kind="CT", body_radius_mm=20.0, **grid),
        phantom([((0.0, 0.0, 0.0), 8.0, 9.0)], kind="PET", body_radius_mm=20.0, **grid),
    )
    code, _, err = run_segment(capsys, ct, pet, tmp_path / "o.nrrd", manifest_path)
    assert code == 0, err
    label = sitk.ReadImage(str(tmp_path / "o.nrrd"))
    assert label.GetSize() == (20, 18, 12)
    assert sitk.GetArrayFromImage(label).max() == 1


def test_info(capsys, manifest_path):
    code, stdout, _ = run(capsys, "info", "--model", manifest_path)
    assert code == 0
    assert "VeloxSeg-test-threshold" in stdout and "SHA-256 verified" in stdout


def _help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_segment_help_names_every_output_format(capsys):
    text = " ".join(_help(capsys, "segment").split())  # argparse wraps lines
    assert ".nii.gz, .nii, .nrrd, .seg.nrrd, .mha" in text and "segmentation for 3D Slicer" in text


def test_batch_help_speaks_to_users_not_developers(capsys):
    text = _help(capsys, "batch")
    # what a user needs: outputs, resuming, the summary, and the rule naming a study's CT and PET
    for needed in ("lesions.nii.gz", "veloxseg_run.json", "summary.csv", "rerun skips", "CT_on_PET_grid"):
        assert needed in text
    # no pointers into the engine's code (module and function names are not for users)
    engine = Path(cli.__file__).parent
    internal = {p.stem for p in engine.glob("*.py") if "_" in p.stem.strip("_")} | {"find_study_inputs"}
    assert internal and not [name for name in internal if name in text]
    assert "see batch" not in text


def test_no_command_is_a_usage_error(capsys):
    assert run(capsys)[0] == 2


def test_bad_option_value_is_a_usage_error(capsys, study):
    ct, pet, out = study
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(out / "o.nii.gz"), "--overlap", "1.5"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(out / "o.nii.gz"), "--blending", "box"])
    assert exit_info.value.code == 2
    assert not (out / "o.nii.gz").exists()


# --- batch ---------------------------------------------------------------------------------------------


def test_batch_continues_after_a_failure_and_skips_finished_studies(tmp_path, capsys, manifest_path, monkeypatch):
    source = tmp_path / "in"
    a = source / "A"
    a.mkdir(parents=True)
    shutil.copy(SMALL_STUDY / "ct.nii.gz", a / "CT.nii.gz")
    shutil.copy(SMALL_STUDY / "ct.nii.gz", a / "CTres.nii.gz")
    shutil.copy(SMALL_STUDY / "pet.nii.gz", a / "SUV.nii.gz")
    shutil.copy(SMALL_STUDY / "ct.nii.gz", a / "PET.nii.gz")  # would fail the SUV check if picked
    write_study(source / "B")
    broken = source / "C"
    broken.mkdir()
    sitk.WriteImage(phantom([], kind="CT", **GRID), str(broken / "ct.nii.gz"))  # no PET
    output = tmp_path / "out"

    code, stdout, _ = run(capsys, "batch", "--input", source, "--output", output, "--model", manifest_path,
                          "--workers", "1")
    assert code == 2  # the worst failure was a bad input
    rows = {r["study"]: r for r in csv.DictReader((output / "summary.csv").open())}
    assert [rows[s]["status"] for s in "ABC"] == ["done", "done", "failed"]
    assert "no PET" in rows["C"]["message"]
    assert rows["A"]["ct"] == "CT.nii.gz" and rows["A"]["pet"] == "SUV.nii.gz"
    assert int(rows["B"]["lesion_count"]) == 1
    for study in "AB":
        assert files_in(output / study) == {"lesions.nii.gz", "lesions.csv", "veloxseg_run.json"}
    assert not (output / "C").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished study was segmented again")

    monkeypatch.setattr(batch_study, "segment_study", must_not_run)
    code, _, _ = run(capsys, "batch", "--input", source, "--output", output, "--model", manifest_path,
                     "--workers", "1")
    rerun = {r["study"]: r for r in csv.DictReader((output / "summary.csv").open())}
    assert [rerun[s]["status"] for s in "ABC"] == ["skipped", "skipped", "failed"]
    assert rerun["B"]["lesion_count"] == rows["B"]["lesion_count"]
    assert float(rerun["A"]["total_mtv_ml"]) == pytest.approx(float(rows["A"]["total_mtv_ml"]), abs=1e-3)


# --- bad inputs: a specific error, exit code, and nothing written ---------------------------------------


def _bad_input(capsys, tmp_path, ct, pet, manifest_path, expected_code=2, extra=()):
    out = tmp_path / "result"
    out.mkdir(exist_ok=True)
    code, stdout, err = run_segment(
        capsys, ct, pet, out / "lesions.nii.gz", manifest_path, stats=out / "stats.csv", extra=extra
    )
    assert code == expected_code, err
    assert files_in(out) == set(), "something was written"
    return err


def test_missing_file(tmp_path, capsys, study, manifest_path):
    _, pet, _ = study
    err = _bad_input(capsys, tmp_path, tmp_path / "absent.nii.gz", pet, manifest_path)
    assert "CT file not found" in err


def test_unreadable_file(tmp_path, capsys, study, manifest_path):
    ct, _, _ = study
    garbage = tmp_path / "pet.nii.gz"
    garbage.write_bytes(b"this is not an image" * 50)
    err = _bad_input(capsys, tmp_path, ct, garbage, manifest_path)
    assert "cannot be read as an image" in err


def test_pet_not_in_suv(tmp_path, capsys, study, manifest_path):
    ct, _, _ = study
    pet = phantom([LESION], kind="PET", **GRID)
    bqml = sitk.Cast(pet * 5000.0, sitk.sitkFloat32)
    sitk.WriteImage(bqml, str(tmp_path / "bqml.nii.gz"))
    err = _bad_input(capsys, tmp_path, ct, tmp_path / "bqml.nii.gz", manifest_path)
    assert "does not look like SUV" in err and "Bq/mL" in err


def test_no_overlap(tmp_path, capsys, manifest_path):
    far = dict(GRID, origin=(-80.0, -80.0, 900.0))
    ct, pet = write_study(tmp_path / "in", pet=phantom([((10.0, -5.0, 960.0), 12.0, 9.0)], kind="PET", **far))
    err = _bad_input(capsys, tmp_path, ct, pet, manifest_path)
    assert "do not overlap" in err


def test_too_little_overlap_is_refused_by_the_one_rule(tmp_path, capsys, manifest_path):
    """The engine applies checks.MIN_PET_IN_CT_FRACTION (20 %) as the Slicer module and training do: a PET
    whose field of view lies 90 % outside the CT is refused (the console took any overlap before)."""
    shifted = dict(GRID, origin=(-80.0, -80.0, -60.0 + 0.9 * 29 * 4.0))  # 10 % of the PET's length in the CT
    ct, pet = write_study(tmp_path / "in", pet=phantom([((10.0, -5.0, 60.0), 12.0, 9.0)], kind="PET", **shifted))
    err = _bad_input(capsys, tmp_path, ct, pet, manifest_path)
    assert "do not overlap enough" in err and "only 10.0 % of the PET's field of view" in err


def test_2d_volume(tmp_path, capsys, study, manifest_path):
    _, pet, _ = study
    flat = sitk.GetImageFromArray(np.full((40, 40), 40, dtype=np.int16) - np.eye(40, dtype=np.int16) * 1000)
    sitk.WriteImage(flat, str(tmp_path / "ct2d.nii.gz"))
    err = _bad_input(capsys, tmp_path, tmp_path / "ct2d.nii.gz", pet, manifest_path)
    assert "2D" in err


def test_4d_volume(tmp_path, capsys, study, manifest_path):
    ct, _, _ = study
    frame = phantom([LESION], kind="PET", **GRID)
    sitk.WriteImage(sitk.JoinSeries([frame, frame, frame]), str(tmp_path / "dynamic.nii.gz"))
    err = _bad_input(capsys, tmp_path, ct, tmp_path / "dynamic.nii.gz", manifest_path)
    assert "4D" in err


@pytest.mark.parametrize("role", ["CT", "PET"])
def test_label_map_as_input(tmp_path, capsys, study, manifest_path, role):
    ct, pet, _ = study
    labels = np.zeros((30, 40, 40), dtype=np.uint8)
    labels[10:20, 10:20, 10:20] = 1
    labels[2:5, 2:5, 2:5] = 2
    sitk.WriteImage(make_image(labels, GRID["spacing"], GRID["origin"]), str(tmp_path / "seg.nii.gz"))
    args = (tmp_path / "seg.nii.gz", pet) if role == "CT" else (ct, tmp_path / "seg.nii.gz")
    err = _bad_input(capsys, tmp_path, *args, manifest_path)
    assert "label map" in err and role in err


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, capsys, study, manifest_path, model, bad):
    ct, _, _ = study
    pet = sitk.GetArrayFromImage(phantom([LESION], kind="PET", **GRID))
    pet[3, 4, 5] = bad
    image = make_image(pet, GRID["spacing"], GRID["origin"])
    for name in ("nan.nrrd", "nan.nii.gz"):  # ITK's NIfTI reader turns NaN into 0: the bytes are scanned
        sitk.WriteImage(image, str(tmp_path / name))
        err = _bad_input(capsys, tmp_path, ct, tmp_path / name, manifest_path)
        assert "NaN or infinite" in err
    from VeloxSegSlicerLib.engine import segment_study

    with pytest.raises(InputError, match="NaN or infinite"):  # the same check for images from memory
        segment_study(sitk.ReadImage(str(ct)), image, model)


def test_tampered_model(tmp_path, capsys, study, model_dir):
    ct, pet, _ = study
    for name in ("threshold.onnx", "threshold.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    with open(tmp_path / "threshold.onnx", "ab") as stream:
        stream.write(b"\0")
    err = _bad_input(capsys, tmp_path, ct, pet, tmp_path / "threshold.json", expected_code=3)
    assert "SHA-256" in err
    assert run(capsys, "info", "--model", tmp_path / "threshold.json")[0] == 3


def test_onnxruntime_missing(tmp_path, capsys, study, manifest_path, monkeypatch):
    ct, pet, _ = study
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    err = _bad_input(capsys, tmp_path, ct, pet, manifest_path, expected_code=3)
    assert "pip install onnxruntime" in err


@pytest.mark.parametrize("target", ["missing_folder", "is_a_folder", "bad_extension", "read_only", "stats"])
def test_output_not_writable_is_checked_before_the_run(tmp_path, capsys, study, manifest_path, monkeypatch, target):
    ct, pet, out = study

    def must_not_read(*args, **kwargs):
        raise AssertionError("inputs were read before the output was checked")

    monkeypatch.setattr(cli, "read_ct", must_not_read)
    label, stats = out / "lesions.nii.gz", None
    if target == "missing_folder":
        label = out / "absent" / "lesions.nii.gz"
    elif target == "is_a_folder":
        label = out / "folder.nii.gz"
        label.mkdir()
    elif target == "bad_extension":
        label = out / "lesions.png"
    elif target == "stats":
        stats = out / "absent" / "stats.csv"
    else:
        import tempfile

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)  # root ignores chmod, so simulate a read-only folder
    before = files_in(out)
    args = ["segment", "--ct", ct, "--pet", pet, "--out", label, "--model", manifest_path]
    if stats is not None:
        args += ["--stats", stats]
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert files_in(out) == before


# --- cancel and failures during the run ----------------------------------------------------------------


def _patched_model(monkeypatch, behaviour):
    real_load = cli.load_model

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        model.run = behaviour
        return model

    monkeypatch.setattr(cli, "load_model", load)


def test_interrupt_during_inference_writes_nothing(tmp_path, capsys, study, manifest_path, monkeypatch):
    ct, pet, out = study

    def interrupted(batch):
        raise KeyboardInterrupt

    _patched_model(monkeypatch, interrupted)
    code, _, err = run_segment(capsys, ct, pet, out / "l.nii.gz", manifest_path, stats=out / "s.csv")
    assert code == 130 and "Cancelled" in err
    assert files_in(out) == set()


def test_cancel_callback_writes_nothing(tmp_path, capsys, study, manifest_path):
    ct, pet, out = study
    parser = cli.build_parser()
    args = parser.parse_args(
        ["segment", "--ct", str(ct), "--pet", str(pet), "--out", str(out / "l.nii.gz"), "--model", str(manifest_path)]
    )
    from VeloxSegSlicerLib.engine import Cancelled

    with pytest.raises(Cancelled):
        cli.command_segment(args, cancelled=lambda: True)
    assert files_in(out) == set()


def test_runtime_failure_writes_nothing(tmp_path, capsys, study, manifest_path, monkeypatch):
    ct, pet, out = study

    def broken(batch):
        raise RuntimeError("onnxruntime exploded")

    _patched_model(monkeypatch, broken)
    code, _, err = run_segment(capsys, ct, pet, out / "l.nii.gz", manifest_path)
    assert code == 4 and "onnxruntime exploded" in err
    assert files_in(out) == set()


def test_failure_while_writing_leaves_no_partial_output(tmp_path, capsys, study, manifest_path, monkeypatch):
    ct, pet, out = study
    from VeloxSegSlicerLib.engine.cohort import outputs

    def disk_full(lesions, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "write_stats_csv", disk_full)
    code, _, err = run_segment(capsys, ct, pet, out / "l.nii.gz", manifest_path, stats=out / "s.csv")
    assert code == 4 and "No space left" in err
    assert files_in(out) == set()
