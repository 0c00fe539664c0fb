"""`veloxseg batch`: one study per subfolder of an input folder.

The CT and PET of each study are found by `study_inputs.find_study_inputs` (names, or the --ct-pattern /
--pet-pattern globs; DICOM series folders and one or two folder levels below the study are searched).
Outputs go to <output>/<study>/lesions.nii.gz (CT grid) and <output>/<study>/lesions.csv; the CSV is
written last, so a study with both files is finished and is skipped on a rerun. <output>/summary.csv has
one row per study. A failing study is reported and the others continue.
"""

from __future__ import annotations

import csv
import time
import traceback
from pathlib import Path

from .errors import Cancelled, InputError, ModelError, VeloxSegError
from .imageio import read_image
from .outputs import AtomicOutputs, check_writable, read_stats_totals
from .pipeline import segment_study
from .study_inputs import find_study_inputs
from .suv import read_pet_suv

LABEL_NAME = "lesions.nii.gz"
STATS_NAME = "lesions.csv"
SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("study", "status", "lesion_count", "total_mtv_ml", "total_tlg", "seconds", "ct", "pet", "message")


def _failure_code(exc: BaseException) -> int:
    if isinstance(exc, InputError):
        return 2
    if isinstance(exc, ModelError):
        return 3
    return 4


def run_batch(input_dir, output_dir, model, options, progress_factory=None, log=print, cancelled=None,
              ct_pattern=None, pet_pattern=None) -> int:
    """Process every study; returns the exit code (0, or the worst failure's code: 2 input, 4 runtime)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InputError(f"Input folder '{input_dir}' does not exist.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder '{output_dir}': {exc.strerror}.") from exc
    check_writable(output_dir / SUMMARY_NAME, "Summary")
    studies = [p for p in sorted(input_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not studies:
        raise InputError(f"Input folder '{input_dir}' has no study subfolders.")

    rows, worst = [], 0
    try:
        for number, study in enumerate(studies, 1):
            row = {"study": study.name}
            out = output_dir / study.name
            label_path, stats_path = out / LABEL_NAME, out / STATS_NAME
            started = time.perf_counter()
            if label_path.is_file() and stats_path.is_file():
                count, mtv, tlg = read_stats_totals(stats_path)
                row.update(status="skipped", lesion_count=count, total_mtv_ml=f"{mtv:.4f}", total_tlg=f"{tlg:.4f}")
                row["message"] = "already finished"
                log(f"[{number}/{len(studies)}] {study.name}: already finished, skipped")
                rows.append(row)
                continue
            try:
                ct_path, pet_path = find_study_inputs(study, ct_pattern, pet_pattern)
                row.update(ct=ct_path.relative_to(study).as_posix(), pet=pet_path.relative_to(study).as_posix())
                ct, pet = read_image(ct_path, "CT"), read_pet_suv(pet_path)
                progress = progress_factory(f"[{number}/{len(studies)}] {study.name} ") if progress_factory else None
                try:
                    result = segment_study(ct, pet, model, options, progress=progress, cancelled=cancelled)
                finally:
                    if progress is not None:
                        progress.close()
                del ct, pet
                out.mkdir(exist_ok=True)
                with AtomicOutputs() as outputs:
                    outputs.write_label(result.label_ct, label_path)
                with AtomicOutputs() as outputs:  # the CSV last: its presence marks the study finished
                    outputs.write_stats(result.lesions, stats_path)
                totals = result.totals
                row.update(
                    status="done",
                    lesion_count=totals.lesion_count,
                    total_mtv_ml=f"{totals.total_mtv_ml:.4f}",
                    total_tlg=f"{totals.total_tlg:.4f}",
                )
                log(f"[{number}/{len(studies)}] {study.name}: {totals.lesion_count} lesions")
            except (Cancelled, KeyboardInterrupt):
                raise
            except Exception as exc:  # one bad study must not stop the batch
                message = str(exc) if isinstance(exc, VeloxSegError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, VeloxSegError):
                    message += " | " + traceback.format_exc(limit=3).replace("\n", " ")
                row.update(status="failed", message=message)
                worst = max(worst, _failure_code(exc))
                log(f"[{number}/{len(studies)}] {study.name}: FAILED: {message}")
            row["seconds"] = f"{time.perf_counter() - started:.1f}"
            rows.append(row)
    finally:
        write_summary(rows, output_dir / SUMMARY_NAME)
    return worst


def write_summary(rows: list, path: Path) -> None:
    with AtomicOutputs() as outputs:
        with open(outputs.temporary(path), "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: row.get(key, "") for key in SUMMARY_COLUMNS})
