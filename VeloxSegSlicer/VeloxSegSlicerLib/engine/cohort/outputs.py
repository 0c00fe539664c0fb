"""Safe output writing for the CLI: paths checked before a run, files replaced atomically after it.

Every output is written to a temporary file in its destination folder and moved into place with
os.replace only when the whole run succeeded, so a failure or a cancel never leaves partial files.
"""

from __future__ import annotations

import csv
import os
import secrets
import tempfile
from pathlib import Path

from ..errors import InputError
from ..inputs.imageio import LABEL_SUFFIXES, label_suffix, write_image

STATS_COLUMNS = (
    "lesion_id",
    "voxels",
    "suv_max",
    "suv_mean",
    "suv_peak",
    "mtv_ml",
    "tlg",
    "centroid_r_mm",
    "centroid_a_mm",
    "centroid_s_mm",
    "site",  # the anatomical site under the lesion (the model's organ output); empty when the model names none
    "on_ct",  # 1, or 0 for a lesion outside the CT field of view: it has no voxel on the CT-grid label
    "cut_by_ct_edge",  # 1 for a lesion touching the PET region the CT does not cover: cut, MTV too low
)


def check_writable(path, what: str, suffixes=None) -> Path:
    """Fail now (not after a long run) if path cannot be written: folder missing or read-only, a folder
    in the way, or an unsupported extension."""
    path = Path(path)
    if suffixes is not None and not any(path.name.lower().endswith(s) for s in suffixes):
        raise InputError(f"{what} '{path}' must end with one of: {', '.join(suffixes)}.")
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder; give a file name.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{what}: folder '{folder}' does not exist; create it first.")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} '{path}' exists and is not writable.")
    try:  # os.access is unreliable on network shares and under root; really try
        handle, probe = tempfile.mkstemp(prefix=".veloxseg-probe-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise InputError(f"{what}: cannot write in folder '{folder}' ({exc.strerror}).") from exc
    return path


def check_label_path(path) -> Path:
    return check_writable(path, "Output", LABEL_SUFFIXES)


PARTIAL_MARK = ".partial-"  # in every temporary name: hidden, and never the name of a finished output


def _temporary_name(path: Path) -> Path:
    suffix = label_suffix(path) or path.suffix
    # pid plus a random token: two machines of a cluster may write into one shared folder with equal pids
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name[: len(path.name) - len(suffix)]}{PARTIAL_MARK}{token}{suffix}")


class AtomicOutputs:
    """Collects outputs as temporary files; commit() moves them all into place, discard() removes them."""

    def __init__(self):
        self.pending = []  # (temporary, final)

    def temporary(self, final) -> Path:
        final = Path(final)
        temporary = _temporary_name(final)
        self.pending.append((temporary, final))
        return temporary

    def write_label(self, image, final) -> None:
        write_image(image, self.temporary(final))

    def write_stats(self, lesions, final) -> None:
        write_stats_csv(lesions, self.temporary(final))

    def commit(self) -> None:
        for temporary, final in self.pending:
            os.replace(temporary, final)
        self.pending = []

    def discard(self) -> None:
        for temporary, _ in self.pending:
            try:
                os.remove(temporary)
            except OSError:
                pass
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def write_stats_csv(lesions, path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(STATS_COLUMNS)
        for lesion in lesions:
            r, a, s = lesion.centroid_ras_mm
            writer.writerow(
                [
                    lesion.id,
                    lesion.voxels,
                    f"{lesion.suv_max:.4f}",
                    f"{lesion.suv_mean:.4f}",
                    f"{lesion.suv_peak:.4f}",
                    f"{lesion.mtv_ml:.4f}",
                    f"{lesion.tlg:.4f}",
                    f"{r:.2f}",
                    f"{a:.2f}",
                    f"{s:.2f}",
                    lesion.site,
                    int(lesion.on_ct),
                    int(lesion.cut_by_ct_edge),
                ]
            )


def read_stats_totals(path) -> tuple:
    """(lesion_count, total_mtv_ml, total_tlg) from a stats CSV written by write_stats_csv."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    return len(rows), sum(float(r["mtv_ml"]) for r in rows), sum(float(r["tlg"]) for r in rows)
