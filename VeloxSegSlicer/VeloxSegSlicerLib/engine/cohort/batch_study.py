"""One study of a batch, wherever it runs: in the calling process, a local worker process or a Dask worker.

A finished study's output folder holds ``lesions.nii.gz`` (CT grid), ``lesions.csv`` and, written last,
``veloxseg_run.json``: the record of what was run, i.e. the inputs (path inside the study, size,
modification time, SHA-256), the model (name, version, SHA-256 of its ONNX file), the options and the
outputs (size, SHA-256). All three files are written under temporary names and renamed only when the
study succeeded, the record last, so a study without a record is not finished whatever else is there.
A rerun skips a study whose record matches: same inputs, same model, same options, outputs present.

Everything here is picklable and importable without a display, so local workers (spawned processes) and
Dask workers run the same `run_task`; the model is loaded once per process and cached.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import Cancelled, InputError, ModelError, VeloxSegError
from ..inference.organs import sites_text
from ..inference.pipeline import SegmentOptions, segment_study
from ..inference.runtime import load_model
from ..inputs.imageio import read_ct, write_image
from ..inputs.suv import read_pet_suv
from .outputs import AtomicOutputs, write_stats_csv

try:
    import resource
except ImportError:  # Windows: no peak memory in the record
    resource = None

LABEL_NAME = "lesions.nii.gz"
STATS_NAME = "lesions.csv"
RECORD_NAME = "veloxseg_run.json"
RECORD_FORMAT = "veloxseg-batch-record/1"

# A study's own progress: reading its images, the engine's stages, writing the outputs.
_READ_END, _SEGMENT_END = 0.05, 0.95


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model, and the SHA-256 every worker must find (so a cluster whose
    machines hold different model files cannot mix results of two models in one cohort)."""

    manifest_path: str
    onnx_sha256: str
    model_name: str
    model_version: str
    device: str = "cpu"
    threads: int = 1
    # what decides lesion voxels besides the network: the calibrated threshold and the second-look classifier
    lesion_threshold: float = 0.0
    second_look_sha256: str = ""

    @classmethod
    def of(cls, manifest, device: str = "cpu", threads: int = 1) -> ModelSpec:
        # absolute, links kept: a linked manifest's .onnx is found beside the link, not beside its target
        second_look = getattr(manifest, "second_look", None)
        return cls(str(Path(manifest.path).absolute()), manifest.onnx_sha256, manifest.model_name,
                   manifest.model_version, device, threads, float(getattr(manifest, "lesion_threshold", 0.0)),
                   second_look.onnx_sha256 if second_look is not None else "")

    def record(self) -> dict:
        record = {"name": self.model_name, "version": self.model_version, "onnx_sha256": self.onnx_sha256}
        if self.lesion_threshold != 0.0 or self.second_look_sha256:  # a model without them: the record as before
            record.update(lesion_threshold=self.lesion_threshold, second_look_sha256=self.second_look_sha256)
        return record


@dataclass(frozen=True)
class StudyTask:
    """One study to segment: absolute paths (a cluster's workers must see them under the same names)."""

    name: str
    folder: str
    ct: str
    pet: str
    out_dir: str
    options: dict  # SegmentOptions fields

    @property
    def relative_inputs(self) -> dict:
        return {"CT": Path(self.ct).relative_to(self.folder).as_posix(),
                "PET": Path(self.pet).relative_to(self.folder).as_posix()}


def options_record(options: SegmentOptions) -> dict:
    return dataclasses.asdict(options)


def failure_code(exc: BaseException) -> int:
    """The CLI's exit code for a failure: 2 bad input, 3 model problem, 4 anything else."""
    if isinstance(exc, InputError):
        return 2
    if isinstance(exc, ModelError):
        return 3
    return 4


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def peak_memory_mb():
    """This process's peak resident memory so far (MB), or None where the platform does not say."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# --- input fingerprints ---------------------------------------------------------------------------------


def _input_files(path: Path) -> list:
    """The files an input consists of: itself, or the files of a DICOM series folder (name order)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def fingerprint(path, study_folder, with_hash: bool = True) -> dict:
    """Size, newest modification time and (with_hash) SHA-256 of one input file or DICOM folder."""
    path = Path(path)
    files = _input_files(path)
    stats = [f.stat() for f in files]
    entry = {
        "path": path.relative_to(study_folder).as_posix(),
        "files": len(files),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }
    if with_hash:
        digest = hashlib.sha256()
        for file in files:
            if path.is_dir():  # a folder's hash covers its file names too
                digest.update(file.name.encode("utf-8") + b"\0")
            with open(file, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        entry["sha256"] = digest.hexdigest()
    return entry


def _same_input(recorded: dict, path: Path, study_folder: Path) -> bool:
    """Whether an input still is what the record says. Size and modification time unchanged: trusted
    without reading (as make and rsync do), so a rerun over thousands of studies stays fast; a changed
    modification time (a copied cohort) with the same size: decided by the SHA-256."""
    try:
        now = fingerprint(path, study_folder, with_hash=False)
    except OSError:
        return False
    if any(now[key] != recorded.get(key) for key in ("path", "files", "bytes")):
        return False
    if now["mtime_ns"] == recorded.get("mtime_ns"):
        return True
    try:
        return fingerprint(path, study_folder)["sha256"] == recorded.get("sha256")
    except OSError:
        return False


def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def read_record(out_dir) -> Optional[dict]:
    try:
        with open(Path(out_dir) / RECORD_NAME, encoding="utf-8") as stream:
            record = json.load(stream)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def finished_record(task: StudyTask, spec: ModelSpec) -> Optional[dict]:
    """The study's record when its outputs are complete for these inputs, this model and these options
    (the study can be skipped), else None."""
    record = read_record(task.out_dir)
    if record is None:
        return None
    try:
        if record["model"]["onnx_sha256"] != spec.onnx_sha256 or record["options"] != task.options:
            return None
        if (record["model"].get("lesion_threshold", 0.0) != spec.lesion_threshold
                or record["model"].get("second_look_sha256", "") != spec.second_look_sha256):
            return None  # the same network, but another threshold or second look decides the lesions
        folder = Path(task.folder)
        for role, path in (("CT", task.ct), ("PET", task.pet)):
            if not _same_input(record["inputs"][role], Path(path), folder):
                return None
        for name, expected in record["outputs"].items():
            output = Path(task.out_dir) / name
            if not output.is_file() or output.stat().st_size != expected["bytes"]:
                return None
    except (KeyError, TypeError):  # a record from another version of this format
        return None
    return record


def row_from_record(task: StudyTask, record: dict) -> dict:
    totals = record.get("totals", {})
    return {
        "study": task.name,
        "status": "skipped",
        "lesion_count": totals.get("lesion_count", ""),
        "total_mtv_ml": f"{totals.get('total_mtv_ml', 0.0):.4f}",
        "total_tlg": f"{totals.get('total_tlg', 0.0):.4f}",
        "sites": totals.get("sites", ""),
        "seconds": "0.0",
        "ct": task.relative_inputs["CT"],
        "pet": task.relative_inputs["PET"],
        "message": " ".join([f"already finished on {record.get('finished', '?')} (same inputs, model and options)"]
                            + list(record.get("warnings", []))),
    }


# --- the model, once per process -------------------------------------------------------------------------

_MODELS = {}
_MODELS_LOCK = threading.Lock()  # a Dask worker may run several tasks at once in threads


def worker_model(spec: ModelSpec):
    """The model of `spec`, loaded on first use in this process and kept for the next studies."""
    key = (spec.manifest_path, spec.device, spec.threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(spec.manifest_path, device=spec.device, threads=spec.threads)
            if model.manifest.onnx_sha256 != spec.onnx_sha256:
                raise ModelError(
                    f"{worker_name()} holds a different model at {spec.manifest_path} (SHA-256 "
                    f"{model.manifest.onnx_sha256}, the batch uses {spec.onnx_sha256}); install the same model "
                    "on every machine or give --model a path on the shared filesystem."
                )
            _MODELS[key] = model
    return model


# --- one study ---------------------------------------------------------------------------------------------


def _failed_row(task: StudyTask, exc: BaseException) -> dict:
    if isinstance(exc, VeloxSegError):
        message = str(exc)
    else:  # an unforeseen error: keep where it came from, on one line
        message = f"{type(exc).__name__}: {exc} | " + traceback.format_exc(limit=3).replace("\n", " ")
    return {"study": task.name, "status": "failed", "message": message, "code": failure_code(exc)}


def process_study(task: StudyTask, model, spec: ModelSpec, progress: Optional[Callable] = None,
                  cancelled: Optional[Callable] = None) -> dict:
    """Segment one study and write its outputs; returns its summary row (status done or failed).
    Cancelled (or KeyboardInterrupt) propagates, and then nothing of this study was written."""
    report = progress or (lambda fraction, stage: None)
    started = time.perf_counter()
    row = {"study": task.name, "ct": task.relative_inputs["CT"], "pet": task.relative_inputs["PET"],
           "worker": worker_name()}
    try:
        report(0.0, "Reading")
        folder = Path(task.folder)
        inputs = {role: fingerprint(path, folder) for role, path in (("CT", task.ct), ("PET", task.pet))}
        ct, pet = read_ct(task.ct), read_pet_suv(task.pet)
        if cancelled is not None and cancelled():
            raise Cancelled("Segmentation cancelled.")

        def engine_progress(fraction, stage):
            report(_READ_END + (_SEGMENT_END - _READ_END) * fraction, stage)

        result = segment_study(ct, pet, model, SegmentOptions(**task.options), progress=engine_progress,
                               cancelled=cancelled)
        del ct, pet
        report(_SEGMENT_END, "Writing")
        out = Path(task.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        totals = result.totals
        sites = sites_text(result.lesions)  # "liver:2;lung:1", "" when the model names no sites
        with AtomicOutputs() as outputs:  # all three renamed only on success, the record last
            label_tmp, stats_tmp = outputs.temporary(out / LABEL_NAME), outputs.temporary(out / STATS_NAME)
            write_image(result.label_ct, label_tmp)
            write_stats_csv(result.lesions, stats_tmp)
            record = {
                "format": RECORD_FORMAT,
                "study": task.name,
                "inputs": inputs,
                "model": spec.record(),
                "options": task.options,
                "outputs": {LABEL_NAME: _file_record(label_tmp), STATS_NAME: _file_record(stats_tmp)},
                "totals": {"lesion_count": totals.lesion_count, "total_mtv_ml": totals.total_mtv_ml,
                           "total_tlg": totals.total_tlg, "sites": sites},
                "pet_outside_ct_fraction": round(result.pet_outside_ct_fraction, 6),
                "warnings": list(result.warnings),
                "seconds": round(time.perf_counter() - started, 2),
                "device": result.device,
                "worker": worker_name(),
                "worker_peak_memory_mb": peak_memory_mb(),  # one study at a time: the single-study bound
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            with open(outputs.temporary(out / RECORD_NAME), "w", encoding="utf-8") as stream:
                json.dump(record, stream, indent=2)
        row.update(status="done", lesion_count=totals.lesion_count, total_mtv_ml=f"{totals.total_mtv_ml:.4f}",
                   total_tlg=f"{totals.total_tlg:.4f}", sites=sites)
        if result.warnings:  # e.g. a CT covering only part of the PET: in summary.csv and on stderr
            row.update(message=" ".join(result.warnings), warning=True)
        report(1.0, "Done")
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # one bad study must not stop the batch
        row.update(_failed_row(task, exc))
    row["seconds"] = f"{time.perf_counter() - started:.1f}"
    return row


def run_task(task: StudyTask, spec: ModelSpec, progress: Optional[Callable] = None,
             cancelled: Optional[Callable] = None) -> dict:
    """process_study with this process's cached model: the entry point of local and Dask workers. A
    model that cannot be loaded fails the study (with exit code 3), not the worker."""
    try:
        model = worker_model(spec)
    except Exception as exc:
        row = {"study": task.name, "ct": task.relative_inputs["CT"], "pet": task.relative_inputs["PET"],
               "worker": worker_name(), "seconds": "0.0"}
        row.update(_failed_row(task, exc))
        return row
    return process_study(task, model, spec, progress, cancelled)
