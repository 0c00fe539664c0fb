"""`veloxseg batch` and its Python API `run_batch`: every study subfolder of an input folder.

Studies run one after another in this process (--workers 1), in N local worker processes (--workers N,
default one per core), or as tasks on a running Dask cluster (--scheduler tcp://HOST:PORT).

The CT and PET of each study are found by `study_inputs.find_study_inputs` (names, or the --ct-pattern /
--pet-pattern globs; DICOM series folders and one or two folder levels below the study are searched).
Outputs go to <output>/<study>/lesions.nii.gz (CT grid), lesions.csv and veloxseg_run.json (the record of
inputs, model and options, written last: see batch_study). A rerun skips a study whose record matches the
same inputs, model and options. <output>/summary.csv has one row per study; a failing study is reported
on stderr and in the summary and the others continue; the run ends with a tally on stderr.

Console example (also inside 3D Slicer):

    from VeloxSegSlicerLib.engine import run_batch

    if __name__ == "__main__":  # worker processes re-import a script: without this each would run it again
        report = run_batch("/data/cohort", "/data/results", workers=2)      # or scheduler="tcp://host:8786"
        print(report.tally(), report.exit_code)
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import Cancelled, InputError, plural
from ..inference.manifest import load_manifest, verify_model_file
from ..inference.pipeline import SegmentOptions
from ..inference.runtime import Model, load_model
from ..inputs.study_inputs import find_study_inputs
from .batch_study import (
    LABEL_NAME,
    RECORD_NAME,
    STATS_NAME,
    ModelSpec,
    StudyTask,
    failure_code,
    finished_record,
    options_record,
    process_study,
    row_from_record,
)
from .outputs import PARTIAL_MARK, AtomicOutputs, check_writable
from .progress import CohortProgress

__all__ = ["LABEL_NAME", "RECORD_NAME", "STATS_NAME", "SUMMARY_NAME", "BatchReport", "default_workers",
           "run_batch"]

SUMMARY_NAME = "summary.csv"
# sites: lesions per anatomical site, e.g. "liver:2;lung:1" (empty when the model names no sites)
SUMMARY_COLUMNS = ("study", "status", "lesion_count", "total_mtv_ml", "total_tlg", "sites", "seconds", "worker",
                   "ct", "pet", "message")
EXIT_CANCELLED = 130
SUMMARY_EVERY_S = 30.0  # rewrite summary.csv this often during a long run, so it shows the progress so far
WORKER_MEMORY_BYTES = 1.5e9  # one worker's peak on an AutoPET-size study is about 1.1 GB (README), plus margin
# The exit status of a worker process that called run_batch while starting (see _refuse_in_starting_worker);
# batch_local reads it to tell this mistake from a worker killed or out of memory.
EXIT_WORKER_REENTERED = 86
MAIN_GUARD_HINT = (
    "A script that calls run_batch with workers > 1 must call it under `if __name__ == \"__main__\":` "
    "(docs/cli.md): each worker process starts by importing the script, and without that line it runs the "
    "whole batch again."
)


def _refuse_in_starting_worker() -> None:
    """Stop a worker process that is still starting (importing the caller's main script, as Python's
    'spawn' start method does) and reached run_batch: the script lacks its `__main__` guard. Exits with
    EXIT_WORKER_REENTERED before anything is written, so the coordinator can name the cause."""
    if not getattr(multiprocessing.current_process(), "_inheriting", False):  # set by spawn while starting
        return
    sys.stderr.write(f"veloxseg: a worker process stopped while starting: it re-ran run_batch. {MAIN_GUARD_HINT}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_WORKER_REENTERED)


def default_workers() -> int:
    """The number of cores this process may use, fewer when the available memory cannot hold that many
    workers (each needs up to about 1.5 GB on a whole-body study)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is not None:
        cores = min(cores, int(available // WORKER_MEMORY_BYTES))
    return max(1, cores)


@dataclass
class BatchReport:
    """What a batch did: rows of summary.csv (every study, in name order), the tally and the exit code
    (0; the worst failure: 2 bad input, 3 model problem, 4 runtime failure; 130 cancelled)."""

    rows: List[dict]
    summary_path: Path
    seconds: float
    cancelled: bool = False
    counts: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.cancelled:
            return EXIT_CANCELLED
        return max((int(row.get("code", 4)) for row in self.rows if row.get("status") == "failed"), default=0)

    def tally(self) -> str:
        c = self.counts
        text = (f"{plural(len(self.rows), 'study', 'studies')} in {self.seconds:.1f} s: {c.get('done', 0)} done, "
                f"{c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped")
        if c.get("cancelled"):
            text += f", {c['cancelled']} cancelled (nothing written for them)"
        return text + f"; summary: {self.summary_path}"


class _Batch:
    """The coordinator: plans the studies, receives the executors' events and results, keeps the rows."""

    def __init__(self, names: List[str], output_dir: Path, display: Optional[CohortProgress],
                 cancelled: Optional[Callable], progress: Optional[Callable] = None,
                 after_study: Optional[Callable] = None):
        self.names = names
        self.rows = {}
        self.output_dir = output_dir
        self.display = display
        self.cancelled_callback = cancelled
        self.progress_callback = progress
        self.after_study = after_study
        self.running = {}  # study -> its own progress fraction, for the cohort fraction
        self.reported = 0.0  # the cohort fraction last reported (never reported lower)
        self.stop = False
        self.last_summary = time.perf_counter()

    # called by the executors (possibly from another thread: the display locks itself)
    def stage(self, worker: str, study: str, fraction: float, stage: str) -> None:
        if self.display is not None:
            self.display.stage(_short_worker(worker), study, fraction, stage)
        if self.progress_callback is not None and study not in self.rows:
            self.running[study] = min(max(float(fraction), 0.0), 1.0)
            self._report(f"{study}: {stage}")

    def _report(self, text: str) -> None:
        """Cohort progress: finished studies count 1, running ones their own fraction; never goes back (a
        study retried after its worker died starts again from 0)."""
        fraction = (len(self.rows) + sum(self.running.values())) / max(1, len(self.names))
        self.reported = max(self.reported, min(fraction, 1.0))
        self.progress_callback(self.reported, text)

    def stop_requested(self) -> bool:
        if not self.stop and self.cancelled_callback is not None and self.cancelled_callback():
            self.stop = True
        return self.stop

    def result(self, row: dict) -> None:
        name = row["study"]
        if self.after_study is not None and row["status"] in ("done", "skipped"):
            row = self._after_study(row)
        self.rows[name] = row
        self.running.pop(name, None)
        status = row["status"]
        if self.display is not None:
            if row.get("worker"):
                self.display.idle(_short_worker(row["worker"]))
            self.display.finished(status, self._describe(row), error=status == "failed")
            if status == "done" and row.get("warning"):
                self.display.message(f"warning: {row['study']}: {row.get('message', '')}", error=True)
        if self.progress_callback is not None:
            self._report(f"{len(self.rows)}/{len(self.names)} studies finished; last: {name}, {status}")
        if time.perf_counter() - self.last_summary > SUMMARY_EVERY_S:
            self.write_summary()

    def _after_study(self, row: dict) -> dict:
        """The caller's extra outputs of a finished study; their failure fails the study in the summary
        (its record stays, so a rerun skips the segmentation and calls after_study again)."""
        try:
            self.after_study(dict(row), self.output_dir / row["study"])
        except Cancelled:
            raise
        except Exception as exc:
            row = dict(row, status="failed", code=failure_code(exc), warning=False,
                       message=f"segmented, but its extra outputs failed: {exc}")
        return row

    def _describe(self, row: dict) -> str:
        number = f"[{len(self.rows)}/{len(self.names)}] {row['study']}"
        status = row["status"]
        if status == "done":
            count = int(row.get("lesion_count") or 0)
            return (f"{number}: {plural(count, 'lesion')}, MTV {float(row['total_mtv_ml']):.2f} mL, TLG "
                    f"{float(row['total_tlg']):.2f} ({row.get('seconds', '?')} s)")
        if status == "skipped":
            return f"{number}: skipped, already finished with the same inputs, model and options"
        if status == "failed":
            return f"{number}: FAILED: {row.get('message', '')}"
        return ""  # cancelled: the tally says how many

    def final_rows(self) -> List[dict]:
        rows = []
        for name in self.names:
            row = self.rows.get(name)
            if row is None:
                row = {"study": name, "status": "cancelled", "message": "not finished: the batch stopped before it"}
            rows.append(row)
        return rows

    def write_summary(self) -> None:
        write_summary(self.final_rows() if self.stop else [self.rows[n] for n in self.names if n in self.rows],
                      self.output_dir / SUMMARY_NAME)
        self.last_summary = time.perf_counter()


def _short_worker(worker: str) -> str:
    """A worker's display name: 'pid 1234' on this machine, 'host:pid' elsewhere."""
    host, _, pid = worker.rpartition(":")
    return f"pid {pid}" if host == socket.gethostname() else worker


def _model_spec(model, device: str, threads: int):
    """(ModelSpec, loaded Model or None) for the `model` argument of run_batch."""
    if isinstance(model, Model):
        return ModelSpec.of(model.manifest, model.device, model.threads), model
    manifest = load_manifest(model)
    verify_model_file(manifest)  # a bad model stops the batch before any study (exit code 3)
    return ModelSpec.of(manifest, device, threads), None


def _plan(studies: List[Path], output_dir: Path, options: dict, spec: ModelSpec, ct_pattern, pet_pattern, batch):
    """The studies to run; those without inputs fail and those finished before are skipped, here."""
    tasks = []
    for study in studies:
        try:
            ct, pet = find_study_inputs(study, ct_pattern, pet_pattern)
        except InputError as exc:
            batch.result({"study": study.name, "status": "failed", "message": str(exc), "code": 2, "seconds": "0.0"})
            continue
        # Absolute, but links kept (not resolve()): the inputs' paths inside the study name them in the
        # record and the summary, and a linked file's target may lie anywhere (git-annex, DataLad, ln -s).
        task = StudyTask(study.name, str(study), str(ct), str(pet), str(output_dir / study.name), options)
        record = finished_record(task, spec)
        if record is not None:
            batch.result(row_from_record(task, record))
        else:
            tasks.append(task)
    return tasks


def _run_sequential(tasks: List[StudyTask], model, spec: ModelSpec, batch: _Batch) -> None:
    """Today's behaviour (--workers 1): one study after another in this process, one model."""
    if model is None:
        model = load_model(spec.manifest_path, device=spec.device, threads=spec.threads)
        if model.fallback_reason and batch.display is not None:
            batch.display.message(f"warning: {model.fallback_reason}", error=True)
    from .batch_study import worker_name

    me = worker_name()
    for task in tasks:
        if batch.stop_requested():
            return
        try:
            row = process_study(task, model, spec,
                                progress=lambda fraction, stage, name=task.name: batch.stage(me, name, fraction, stage),
                                cancelled=batch.stop_requested)
        except Cancelled:
            return
        batch.result(row)


def _sweep_partials(output_dir: Path, names: List[str]) -> None:
    """Remove temporary files a killed worker left in the studies' output folders (hidden, marked
    '.partial-': never taken for results, but clutter)."""
    for name in names:
        folder = output_dir / name
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") and PARTIAL_MARK in path.name:
                try:
                    path.unlink()
                except OSError:
                    pass


def run_batch(input_dir, output_dir, model=None, options: Optional[SegmentOptions] = None, *, workers: int = 1,
              scheduler: Optional[str] = None, device: str = "cpu", threads: int = 1,
              ct_pattern: Optional[str] = None, pet_pattern: Optional[str] = None,
              cancelled: Optional[Callable] = None, stdout=None, stderr=None, show_progress: bool = True,
              progress: Optional[Callable] = None, after_study: Optional[Callable] = None) -> BatchReport:
    """Segment every study subfolder of `input_dir` into `output_dir`; returns a BatchReport.

    model: None (the bundled model), a manifest path, or a Model from load_model (used as it is in this
    process; its manifest, device and threads are used by workers). workers: 1 runs the studies one after
    another in this process; N > 1 runs N worker processes (each loads the model once, `threads` ONNX
    Runtime threads each); 0 = default_workers(). scheduler: the address of a running Dask scheduler
    ("tcp://host:8786"): each study becomes a task on its workers (needs `pip install veloxseg[cluster]`;
    paths must be the same on every machine). cancelled() returning True (or Ctrl-C) stops the batch:
    running studies write nothing, finished ones stay, summary.csv lists every study.
    progress(fraction, text): the cohort's progress, 0 to 1 (from a Dask client thread with `scheduler`).
    after_study(row, study_output_dir): called in this process for each study done or skipped, once its
    outputs and record are in place, for a caller's own extra outputs (the Slicer Logic writes
    lesions.seg.nrrd and loads results into its scene); an exception it raises fails that study.
    A script that calls this with workers > 1 needs `if __name__ == "__main__":` (MAIN_GUARD_HINT).
    """
    _refuse_in_starting_worker()
    started = time.perf_counter()
    options = options or SegmentOptions()
    options.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be a whole number >= 0 (0 = one per core), got {workers!r}.")
    workers = workers or default_workers()
    input_dir, output_dir = Path(input_dir), Path(output_dir).absolute()
    if not input_dir.is_dir():
        raise InputError(f"Input folder '{input_dir}' does not exist.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder '{output_dir}': {exc.strerror}.") from exc
    check_writable(output_dir / SUMMARY_NAME, "Summary")
    studies = [p.absolute() for p in sorted(input_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not studies:
        raise InputError(f"Input folder '{input_dir}' has no study subfolders.")
    spec, loaded = _model_spec(model, device, threads)
    if scheduler:  # before any study: a missing optional dependency is a usage error, not a batch result
        from .batch_dask import import_distributed

        import_distributed()

    stderr = stderr or sys.stderr
    display = CohortProgress(len(studies), stdout=stdout, stderr=stderr) if show_progress else None
    batch = _Batch([s.name for s in studies], output_dir, display, cancelled, progress, after_study)
    interrupted = failed = False
    try:
        tasks = _plan(studies, output_dir, options_record(options), spec, ct_pattern, pet_pattern, batch)
        if tasks and scheduler:
            from .batch_dask import run_dask

            run_dask(tasks, spec, scheduler, batch)
        elif tasks and workers > 1:
            from .batch_local import run_local

            run_local(tasks, spec, min(workers, len(tasks)), batch)
        elif tasks:
            _run_sequential(tasks, loaded, spec, batch)
    except (KeyboardInterrupt, Cancelled):
        interrupted = True
    except BaseException:  # e.g. the scheduler cannot be reached: still write what was done, then report
        failed = True
        raise
    finally:
        stopped = interrupted or failed or batch.stop_requested() or len(batch.rows) < len(studies)
        batch.stop = stopped
        if display is not None:
            display.close()
        _sweep_partials(output_dir, batch.names)
        batch.write_summary()
        rows = batch.final_rows()
        counts = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        report = BatchReport(rows, output_dir / SUMMARY_NAME, time.perf_counter() - started, stopped, counts)
        if show_progress:
            how = "Stopped by an error. " if failed else "Cancelled. " if stopped else ""
            stderr.write(how + report.tally() + "\n")
            stderr.flush()
    return report


def write_summary(rows: list, path: Path) -> None:
    with AtomicOutputs() as outputs:
        with open(outputs.temporary(path), "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: row.get(key, "") for key in SUMMARY_COLUMNS})
