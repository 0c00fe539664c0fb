"""`veloxseg batch` on a small cohort with the bundled model and real parts only: in this process, in two
local worker processes and on a real Dask LocalCluster over loopback (two worker processes, one of them
killed while it segments a study). Results must equal the sequential run's, a rerun skips what is finished
for the same inputs and model, a broken study fails among good ones (stderr, summary.csv, exit code), and
a cancelled batch leaves no partial file."""

from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from engine_helpers import phantom, poll_like_a_batch_worker

from VeloxSegSlicerLib.engine.cohort import batch_local, batch_study, cli
from VeloxSegSlicerLib.engine.cohort.batch import run_batch

SMALL_STUDY = Path(__file__).resolve().parents[1] / "Data" / "small_study"
REPO = Path(__file__).resolve().parents[2]
SLOW_GRID = {"size": (130, 130, 200), "spacing": (2.036, 2.036, 3.0), "origin": (-132.0, -132.0, -300.0)}
GOOD = ("a_slow", "b_autopet", "c_ibsi", "e_plain")
STUDIES = ("a_slow", "b_autopet", "c_ibsi", "d_broken", "e_plain")


def _write_cohort(root: Path) -> Path:
    """Five studies in the layouts batch must understand, one of them broken, one slow (12 patches)."""
    ct, pet = SMALL_STUDY / "ct.nii.gz", SMALL_STUDY / "pet.nii.gz"
    slow = root / "a_slow"
    slow.mkdir(parents=True)
    lesion = ((20.0, -10.0, 0.0), 15.0, 8.0)
    sitk.WriteImage(phantom([], kind="CT", body_radius_mm=120.0, **SLOW_GRID), str(slow / "CT.nii.gz"))
    sitk.WriteImage(phantom([lesion], kind="PET", body_radius_mm=120.0, **SLOW_GRID), str(slow / "PET.nii.gz"))
    autopet = root / "b_autopet"  # AutoPET: CT + CTres, SUV + PET in Bq/mL (here a CT: fails if picked)
    autopet.mkdir()
    for name, source in (("CT.nii.gz", ct), ("CTres.nii.gz", ct), ("SUV.nii.gz", pet), ("PET.nii.gz", ct)):
        shutil.copy(source, autopet / name)
    ibsi = root / "c_ibsi"  # IBSI: the CT on the PET grid beside a full-resolution CT and two masks
    ibsi.mkdir()
    for name, source in (("CT_on_PET_grid.nii.gz", ct), ("CT_fullres.nii.gz", ct), ("PET_SUV.nii.gz", pet)):
        shutil.copy(source, ibsi / name)
    mask = sitk.Cast(sitk.ReadImage(str(pet)) > 5, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(ibsi / "PET_GTV_mask.nii.gz"))
    sitk.WriteImage(mask, str(ibsi / "CT_fullres_GTV_mask.nii.gz"))
    broken = root / "d_broken"
    broken.mkdir()
    shutil.copy(ct, broken / "ct.nii.gz")
    (broken / "pet.nii.gz").write_bytes(b"not an image")
    plain = root / "e_plain"  # another result: the PET scaled, as NRRD
    plain.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(ct)), str(plain / "ct.nrrd"))
    sitk.WriteImage(sitk.ReadImage(str(pet)) * 0.6, str(plain / "pet.nrrd"))
    return root


def _summary(output: Path) -> dict:
    with open(output / "summary.csv", newline="", encoding="utf-8") as stream:
        return {row["study"]: row for row in csv.DictReader(stream)}


def _label(output: Path, study: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output / study / "lesions.nii.gz")))


def _assert_same_results(output: Path, reference: Path) -> None:
    for study in GOOD:
        np.testing.assert_array_equal(_label(output, study), _label(reference, study), err_msg=study)
        assert (output / study / "lesions.csv").read_text() == (reference / study / "lesions.csv").read_text()
    assert not (output / "d_broken").exists()


def _partial_files(output: Path) -> list:
    return [p for p in output.rglob("*") if ".partial-" in p.name]


def _run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return _write_cohort(tmp_path_factory.mktemp("cohort") / "in")


@pytest.fixture(scope="module")
def sequential(cohort, tmp_path_factory) -> Path:
    """The reference: today's behaviour, one study after another in this process."""
    output = tmp_path_factory.mktemp("sequential") / "out"
    report = run_batch(cohort, output, workers=1, show_progress=False)
    assert [r["status"] for r in report.rows] == ["done", "done", "done", "failed", "done"]
    return output


def test_sequential_run_finds_each_layout_and_reports_the_failure(cohort, sequential, tmp_path, capsys):
    rows = _summary(sequential)
    assert (rows["b_autopet"]["ct"], rows["b_autopet"]["pet"]) == ("CT.nii.gz", "SUV.nii.gz")
    assert (rows["c_ibsi"]["ct"], rows["c_ibsi"]["pet"]) == ("CT_on_PET_grid.nii.gz", "PET_SUV.nii.gz")
    assert "cannot be read" in rows["d_broken"]["message"]
    for study in GOOD:
        assert float(rows[study]["seconds"]) >= 0 and rows[study]["worker"]
        assert int(rows[study]["lesion_count"]) >= 1
        record = batch_study.read_record(sequential / study)
        assert record["model"]["onnx_sha256"] and record["inputs"]["PET"]["sha256"]
        assert set(record["outputs"]) == {"lesions.nii.gz", "lesions.csv"}

    # the CLI: results on stdout with correct plurals, the failure and the tally on stderr (issue 13)
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", tmp_path / "o", "--workers", "1")
    assert code == 2
    assert "b_autopet: 1 lesion, MTV" in out and "1 lesions" not in out and "FAILED" not in out
    assert "d_broken: FAILED: PET file" in err
    assert "5 studies in" in err and "4 done, 1 failed, 0 skipped; summary:" in err
    _assert_same_results(tmp_path / "o", sequential)


def test_two_local_workers_match_the_sequential_run_and_a_rerun_skips(cohort, sequential, tmp_path, capsys):
    output = tmp_path / "out"
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", output, "--workers", "2")
    assert code == 2 and "d_broken: FAILED" in err and "4 done, 1 failed, 0 skipped" in err
    rows = _summary(output)
    assert [rows[s]["status"] for s in STUDIES] == ["done", "done", "done", "failed", "done"]
    assert len({rows[s]["worker"] for s in GOOD}) == 2  # both workers took studies
    _assert_same_results(output, sequential)

    # rerun: the finished studies are skipped (same inputs, same model, same options), the broken one fails again
    before = {s: (output / s / "lesions.nii.gz").stat().st_mtime_ns for s in GOOD}
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", output, "--workers", "2")
    assert code == 2 and "0 done, 1 failed, 4 skipped" in err
    assert {s: (output / s / "lesions.nii.gz").stat().st_mtime_ns for s in GOOD} == before

    # a copied cohort (new modification times, same bytes) is still recognised, through the SHA-256
    copied = tmp_path / "copied"
    shutil.copytree(cohort, copied)
    for path in copied.rglob("*.n*"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    code, out, err = _run_cli(capsys, "batch", "--input", copied, "--output", output, "--workers", "1")
    assert "0 done, 1 failed, 4 skipped" in err

    # a changed input, or other options, run again
    sitk.WriteImage(sitk.ReadImage(str(copied / "e_plain" / "pet.nrrd")), str(copied / "b_autopet" / "SUV.nii.gz"))
    code, out, err = _run_cli(capsys, "batch", "--input", copied, "--output", output, "--workers", "1")
    assert "1 done, 1 failed, 3 skipped" in err and "b_autopet: 1 lesion" in out
    code, out, err = _run_cli(capsys, "batch", "--input", copied, "--output", output, "--workers", "1",
                              "--min-lesion-ml", "0.001")
    assert "4 done, 1 failed, 0 skipped" in err


def test_a_different_model_or_a_missing_output_reruns(cohort, sequential):
    task = batch_study.StudyTask("e_plain", str(cohort / "e_plain"), str(cohort / "e_plain" / "ct.nrrd"),
                                 str(cohort / "e_plain" / "pet.nrrd"), str(sequential / "e_plain"),
                                 batch_study.read_record(sequential / "e_plain")["options"])
    record = batch_study.read_record(sequential / "e_plain")
    same = batch_study.ModelSpec("m.json", record["model"]["onnx_sha256"], "VeloxSeg", "x")
    other = batch_study.ModelSpec("m.json", "0" * 64, "VeloxSeg", "x")
    assert batch_study.finished_record(task, same) is not None
    assert batch_study.finished_record(task, other) is None
    (sequential / "e_plain" / "lesions.csv").rename(sequential / "e_plain" / "moved.csv")
    try:
        assert batch_study.finished_record(task, same) is None  # an output is missing
    finally:
        (sequential / "e_plain" / "moved.csv").rename(sequential / "e_plain" / "lesions.csv")


def test_cancel_keeps_finished_studies_and_writes_no_partial_file(cohort, tmp_path):
    output = tmp_path / "out"
    finished = []

    def cancelled():
        finished[:] = [p for p in output.glob("*/veloxseg_run.json")]
        return bool(finished)

    report = run_batch(cohort, output, workers=2, cancelled=cancelled, show_progress=False)
    assert report.cancelled and report.exit_code == 130
    statuses = {r["study"]: r["status"] for r in report.rows}
    assert set(statuses) == set(STUDIES) and "cancelled" in statuses.values()
    assert _summary(output).keys() == set(STUDIES)
    for study, status in statuses.items():
        files = {p.name for p in (output / study).iterdir()} if (output / study).exists() else set()
        assert files in (set(), {"lesions.nii.gz", "lesions.csv", "veloxseg_run.json"}), (study, files)
        assert (status == "done") == bool(files)
    assert not _partial_files(output)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_the_command_line(cohort, tmp_path):
    """A real SIGINT to the process group, as a terminal sends it: exit 130, a tally, nothing partial."""
    # Many studies, so the batch is still running when the signal arrives even on a loaded machine (with the
    # five of the shared cohort, 2 workers could finish them all before the test's poll noticed the first).
    big = tmp_path / "in"
    names = [f"s{i:02d}" for i in range(16)]
    for name in names:
        shutil.copytree(cohort / "e_plain", big / name)
    output = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO / "VeloxSegSlicer"))
    command = [sys.executable, "-m", "VeloxSegSlicerLib.engine", "batch", "--input", str(big), "--output",
               str(output), "--workers", "2"]
    # A test run started in the background of a script (`cmd &`) inherits SIGINT *ignored*, and so would the
    # batch: give it the disposition a terminal's foreground job has (it ignored the signal and finished).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(output.glob("*/veloxseg_run.json")):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Cancelled. 16 studies in" in err and "summary:" in err
    assert not _partial_files(output)
    rows = _summary(output)
    assert rows.keys() == set(names)
    assert any(row["status"] == "cancelled" for row in rows.values())


def _pool_workers() -> list:
    """PIDs of this process's multiprocessing worker children (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid() \
                    and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the workers")
def test_local_workers_killed_mid_study_are_replaced(cohort, sequential, tmp_path):
    output = tmp_path / "out"
    killed = {}

    def kill_the_workers_while_the_slow_study_runs():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(output.glob("*/veloxseg_run.json")):
            time.sleep(0.01)  # a small study is finished: the workers run, the slow study (~1.5 s) too
        killed["slow_was_running"] = not (output / "a_slow" / "veloxseg_run.json").exists()
        killed["pids"] = _pool_workers()
        for pid in killed["pids"]:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_workers_while_the_slow_study_runs)
    killer.start()
    report = run_batch(cohort, output, workers=2, show_progress=False)
    killer.join()
    assert killed["slow_was_running"] and len(killed["pids"]) == 2
    assert [r["status"] for r in report.rows] == ["done", "done", "done", "failed", "done"]
    assert not batch_study.read_record(output / "a_slow")["worker"].endswith(tuple(f":{p}" for p in killed["pids"]))
    _assert_same_results(output, sequential)
    assert not _partial_files(output)


def test_a_worker_killed_at_any_instant_cannot_freeze_the_others():
    """A SIGKILLed process never releases a lock it held. Kill one of two workers while both poll the
    cancel flag and report stages in a tight loop: the survivor still sees the cancel and exits."""
    context = multiprocessing.get_context("spawn")
    cancel = batch_local.cancel_flag(context)
    for trial in range(6):
        cancel.value = False
        events = context.Queue()  # what run_local gives each pool
        victim, survivor = (context.Process(target=poll_like_a_batch_worker, args=(events, cancel))
                            for _ in range(2))
        victim.start()
        survivor.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and events.qsize() < 200:
            time.sleep(0.01)  # both are in their loops
        time.sleep(0.05 * trial)
        victim.kill()
        victim.join(10)
        cancel.value = True
        survivor.join(20)
        alive = survivor.is_alive()
        if alive:
            survivor.kill()
        assert not alive, f"trial {trial}: the surviving worker was frozen by its killed sibling"


# --- Dask ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local:
        with distributed.Client(local) as client:
            yield local, client


def test_dask_cluster_matches_the_sequential_run(cohort, sequential, cluster, tmp_path, capsys):
    local, _ = cluster
    output = tmp_path / "out"
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", output, "--scheduler",
                              local.scheduler_address)
    assert code == 2 and "d_broken: FAILED: PET file" in err and "4 done, 1 failed, 0 skipped" in err
    _assert_same_results(output, sequential)
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", output, "--scheduler",
                              local.scheduler_address)
    assert "0 done, 1 failed, 4 skipped" in err
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", output, "--scheduler",
                              local.scheduler_address, "--workers", "2")
    assert code == 2 and "--workers is for local runs" in err


def test_dask_worker_killed_mid_study_the_study_runs_elsewhere(cohort, sequential, cluster, tmp_path):
    local, client = cluster
    output = tmp_path / "out"
    killed = {}

    def kill_the_worker_of_the_slow_study():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for address, keys in client.processing().items():
                if any(str(key).endswith("-a_slow") for key in keys):
                    time.sleep(0.5)  # well inside the study (~1.5 s): reading done, inference running
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_worker_of_the_slow_study)
    killer.start()
    report = run_batch(cohort, output, scheduler=local.scheduler_address, show_progress=False)
    killer.join()
    assert killed, "the slow study was never seen running"
    assert [r["status"] for r in report.rows] == ["done", "done", "done", "failed", "done"]
    record = batch_study.read_record(output / "a_slow")
    assert not record["worker"].endswith(f":{killed['pid']}")  # finished by another process
    _assert_same_results(output, sequential)
    assert not _partial_files(output)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_without_dask_the_scheduler_option_says_how_to_install_it(cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask[distributed] were not installed
    code, out, err = _run_cli(capsys, "batch", "--input", cohort, "--output", tmp_path / "o", "--scheduler",
                              "tcp://127.0.0.1:1")
    assert code == 2 and 'pip install "veloxseg[cluster]"' in err
    assert not (tmp_path / "o" / "summary.csv").exists()  # refused before any study


@pytest.fixture
def small_cohort(tmp_path) -> Path:
    """Two copies of the small study and one without a PET, for the threshold test model (fast)."""
    root = tmp_path / "in"
    for name in ("s1", "s2"):
        (root / name).mkdir(parents=True)
        for file in ("ct.nii.gz", "pet.nii.gz"):
            shutil.copy(SMALL_STUDY / file, root / name / file)
    (root / "s3").mkdir()
    shutil.copy(SMALL_STUDY / "ct.nii.gz", root / "s3" / "ct.nii.gz")
    return root


def test_after_study_hook_and_cohort_progress(small_cohort, manifest_path, tmp_path):
    """The hooks the Slicer Logic builds on: after_study for each study done or skipped, in this process,
    with its outputs in place (a failure of it fails that study, and a rerun calls it again); progress
    from 0 to 1, never back."""
    output = tmp_path / "out"
    calls, progress = [], []

    def after_study(row, out_dir):
        assert (out_dir / "veloxseg_run.json").is_file() and (out_dir / "lesions.nii.gz").is_file()
        calls.append((row["study"], row["status"], os.getpid()))
        if row["study"] == "s2" and row["status"] == "done":
            raise OSError("disk full")

    report = run_batch(small_cohort, output, model=str(manifest_path), workers=2, show_progress=False,
                       progress=lambda fraction, text: progress.append((fraction, text)), after_study=after_study)
    assert sorted(calls) == [("s1", "done", os.getpid()), ("s2", "done", os.getpid())]
    rows = {row["study"]: row for row in report.rows}
    assert [rows[s]["status"] for s in ("s1", "s2", "s3")] == ["done", "failed", "failed"]
    assert rows["s2"]["message"] == "segmented, but its extra outputs failed: disk full" and report.exit_code == 4
    assert _summary(output)["s2"]["status"] == "failed"
    fractions = [fraction for fraction, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and 0 < fractions[0] < 1
    assert any(": Inference" in text for _, text in progress)  # the workers' stages come through

    calls.clear()
    report = run_batch(small_cohort, output, model=str(manifest_path), workers=1, show_progress=False,
                       after_study=after_study)
    assert sorted(calls) == [("s1", "skipped", os.getpid()), ("s2", "skipped", os.getpid())]
    assert [row["status"] for row in report.rows] == ["skipped", "skipped", "failed"]


_API_SCRIPT = """\
from VeloxSegSlicerLib.engine import run_batch
{body}
"""
_CALL = """report = run_batch({inputs!r}, {output!r}, model={model!r}, workers=2)
print("TALLY", report.tally(), report.exit_code)"""


def _run_api_script(tmp_path, inputs, output, model, guarded: bool, prefix: str = "") -> subprocess.CompletedProcess:
    """docs/cli.md's `run_batch(..., workers=2)` example saved as a script and run with `python api.py`."""
    call = _CALL.format(inputs=str(inputs), output=str(output), model=str(model))
    if guarded:
        call = 'if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in call.splitlines())
    script = tmp_path / output.name / "api.py"
    script.parent.mkdir()
    script.write_text(prefix + _API_SCRIPT.format(body=call))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "VeloxSegSlicer"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "api.py"], cwd=script.parent, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_documented_api_script_with_workers(small_cohort, manifest_path, tmp_path):
    """Without `if __name__ == "__main__":` each spawned worker re-runs the script: the batch stops at once
    with that cause and its fix (not "a worker died ... out of memory" after three tries per study), the
    workers write nothing; with the guard the same script works and the summary is written once."""
    output = tmp_path / "unguarded_out"
    run = _run_api_script(tmp_path, small_cohort, output, manifest_path, guarded=False)
    assert run.returncode != 0 and "TALLY" not in run.stdout
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("VeloxSegSlicerLib.engine.errors.InputError: The worker processes could not start")
    assert 'if __name__ == "__main__":' in last
    assert "out of memory" not in run.stderr and "died" not in run.stderr
    assert run.stderr.count("; summary: ") == 1  # one batch: the workers stopped before theirs
    assert not list(output.glob("s*/*"))

    output = tmp_path / "guarded_out"
    run = _run_api_script(tmp_path, small_cohort, output, manifest_path, guarded=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("TALLY") == 1 and "2 done, 1 failed" in run.stdout
    assert run.stderr.count("; summary: ") == 1
    assert [row["status"] for row in _summary(output).values()] == ["done", "done", "failed"]


def test_a_worker_start_up_error_is_reported_as_one(small_cohort, manifest_path, tmp_path):
    """Any other error of the workers before their first study (here: the script fails when a worker imports
    it) stops the batch at once with what happened, not as a worker out of memory after three tries."""
    prefix = 'if __name__ != "__main__":\n    raise ImportError("only in the workers")\n'
    output = tmp_path / "broken_out"
    run = _run_api_script(tmp_path, small_cohort, output, manifest_path, guarded=True, prefix=prefix)
    assert run.returncode != 0 and "TALLY" not in run.stdout
    assert "ImportError: only in the workers" in run.stderr  # the workers' own error, printed by them
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("VeloxSegSlicerLib.engine.errors.VeloxSegError: The worker processes stopped while "
                           "starting, before any study (exit code 1;")
    assert "out of memory" not in run.stderr and not list(output.glob("s*/*"))
