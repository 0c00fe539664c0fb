"""Which file of a study folder is the CT and which the PET: the one rule of `veloxseg batch` and the
Slicer module's folder batch.

Candidates are image files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) and DICOM series folders, in the
study folder or up to two folder levels below it (e.g. ``CT/image/*.dcm``). Names are compared
case-insensitively, split into words at any non-alphanumeric character, over the path relative to the
study folder:
- a candidate with a word meaning mask, label, segmentation, target volume (GTV, CTV, PTV), ROI or RT
  structure is ignored;
- its role is given by its first word that starts with "ct" (CT), or with "pet" or "suv", or is "pt"
  (PET): ``CT_on_PET_grid.nii.gz`` is a CT, ``PET/`` a PET;
- several CTs: those with the exact word "ct" win (``CT.nii.gz`` over ``CTres.nii.gz``); several PETs:
  those with a word starting with "suv" win (AutoPET keeps ``PET.nii.gz`` in Bq/mL next to
  ``SUV.nii.gz``), then a candidate named exactly "pet" or "suv". Still several: the study is ambiguous.
Glob patterns (matched against the relative path or the file name) replace the name rule for one role.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

from .errors import InputError
from .imageio import is_dicom_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
IGNORED_WORDS = ("mask", "label", "seg", "gtv", "ctv", "ptv", "roi", "rtstruct", "rtss")  # word prefixes
MAX_DEPTH = 3  # the study folder and two levels below it


def _words(relative: Path) -> List[str]:
    name = relative.as_posix().lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return [word for word in re.split(r"[^a-z0-9]+", name) if word]


def _role(words: List[str]) -> str:
    for word in words:
        if word.startswith("ct"):
            return "CT"
        if word.startswith(("pet", "suv")) or word == "pt":
            return "PET"
    return ""


def study_candidates(folder: Path) -> List[Path]:
    """Image files and DICOM series folders under `folder`, as paths relative to it, in name order."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        depth = len(here.relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth + 1 < MAX_DEPTH else []
        files = sorted(f for f in files if not f.startswith("."))
        if depth > 0 and any(is_dicom_file(here / f) for f in files[:5]):
            found.append(here.relative_to(folder))  # a series folder: its files are slices, not candidates
            dirs[:] = []
            continue
        found.extend((here / f).relative_to(folder) for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    return found


def _by_name(candidates: List[Path], role: str) -> List[Path]:
    matches = []
    for candidate in candidates:
        words = _words(candidate)
        if not any(w.startswith(IGNORED_WORDS) for w in words) and _role(words) == role:
            matches.append(candidate)
    preferences = ([lambda w: "ct" in w] if role == "CT" else
                   [lambda w: any(x.startswith("suv") for x in w), lambda w: "".join(w) in ("pet", "suv")])
    for prefer in preferences:
        preferred = [c for c in matches if prefer(_words(c))]
        if len(matches) > 1 and preferred:
            matches = preferred
    return matches


def _by_pattern(candidates: List[Path], pattern: str) -> List[Path]:
    pattern = pattern.lower()
    return [c for c in candidates
            if fnmatch.fnmatchcase(c.as_posix().lower(), pattern) or fnmatch.fnmatchcase(c.name.lower(), pattern)]


def _pick(candidates: List[Path], role: str, pattern: Optional[str], folder: Path) -> Path:
    matches = _by_pattern(candidates, pattern) if pattern else _by_name(candidates, role)
    if len(matches) == 1:
        return folder / matches[0]
    how = f"matching '{pattern}'" if pattern else "by its name"
    if not matches:
        raise InputError(f"no {role} found in '{folder}' ({how}); name it after the modality (e.g. {role}.nii.gz "
                         f"or a {role} DICOM folder) or give a {role} file pattern.")
    listed = ", ".join(m.as_posix() for m in matches)
    raise InputError(f"several {role} candidates in '{folder}' ({how}): {listed}; keep one, rename the others, "
                     f"or give a {role} file pattern.")


def find_study_inputs(folder, ct_pattern: Optional[str] = None, pet_pattern: Optional[str] = None) -> Tuple[Path, Path]:
    """(ct_path, pet_path) of a study folder by the rule in this module's docstring; InputError if not found
    or ambiguous."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Study folder '{folder}' does not exist.")
    candidates = study_candidates(folder)
    return _pick(candidates, "CT", ct_pattern, folder), _pick(candidates, "PET", pet_pattern, folder)
