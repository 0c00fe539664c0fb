"""Which file of a study folder is the CT, the PET and (for training) the lesion label: the one rule of
`veloxseg batch`, the Slicer module's folder batch and `veloxseg-train prepare` / `evaluate`.

Candidates are image files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) and DICOM series folders, in the
study folder or up to two folder levels below it (e.g. ``CT/image/*.dcm``). Names are compared
case-insensitively, split into words at any non-alphanumeric character, over the path relative to the
study folder:
- a candidate with a word starting with mask, label, seg or gtv is a lesion label (read by training
  only); one with a word starting with ctv, ptv, roi, rtstruct or rtss (other contours) is ignored;
- otherwise its role is given by its first word that starts with "ct" (CT), or with "pet" or "suv", or
  is "pt" (PET): ``CT_on_PET_grid.nii.gz`` and ``CTres.nii.gz`` are CTs, ``PET/`` a PET;
- several CTs: those with the exact word "ct" win (``CT.nii.gz`` over ``CTres.nii.gz``), then one named
  exactly "ct", then one whose name also names the PET (the CT resampled onto the PET grid: the IBSI
  ``CT_on_PET_grid.nii.gz`` over ``CT_fullres.nii.gz``, since every IBSI case has the former);
- several PETs: those with a word starting with "suv" win (AutoPET keeps ``PET.nii.gz`` in Bq/mL next
  to ``SUV.nii.gz``), then one named exactly "pet" or "suv";
- several labels: those on the PET (a word starting with "pet" or "suv", or "pt") win (IBSI
  ``PET_GTV_mask`` over ``CT_fullres_GTV_mask``), then one named exactly label, mask, seg, segmentation
  or gtv;
- still several for one role: the study is ambiguous (the error names the candidates).
Glob patterns (matched against the relative path or the file name) replace the name rule for one role.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import InputError
from .imageio import is_dicom_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_WORDS = ("mask", "label", "seg", "gtv")  # word prefixes of a lesion label
IGNORED_WORDS = ("ctv", "ptv", "roi", "rtstruct", "rtss")  # word prefixes of other contours
EXACT_LABEL_NAMES = ("label", "mask", "seg", "segmentation", "gtv")
ROLES = ("CT", "PET", "label")
MAX_DEPTH = 3  # the study folder and two levels below it


def _words(relative) -> List[str]:
    name = Path(relative).as_posix().lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return [word for word in re.split(r"[^a-z0-9]+", name) if word]


def _names_pet(word: str) -> bool:
    return word.startswith(("pet", "suv")) or word == "pt"


def role_of(relative) -> Optional[str]:
    """'CT', 'PET', 'label' or None for a candidate's path relative to its study (or a bare file name)."""
    words = _words(relative)
    if any(w.startswith(LABEL_WORDS) for w in words):
        return "label"
    if any(w.startswith(IGNORED_WORDS) for w in words):
        return None
    for word in words:
        if word.startswith("ct"):
            return "CT"
        if _names_pet(word):
            return "PET"
    return None


def study_candidates(folder, dicom_series: bool = True) -> List[Path]:
    """Image files and (unless dicom_series is False) DICOM series folders under `folder`, as paths
    relative to it, in name order."""
    folder = Path(folder)
    found = []
    # followlinks: a linked series or sub-folder is searched like a real one (link farms, e.g. DataLad);
    # MAX_DEPTH bounds the walk, so a link cycle cannot make it endless.
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        depth = len(here.relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth + 1 < MAX_DEPTH else []
        files = sorted(f for f in files if not f.startswith("."))
        if depth > 0 and any(is_dicom_file(here / f) for f in files[:5]):
            if dicom_series:
                found.append(here.relative_to(folder))  # a series folder: its files are slices, not candidates
            dirs[:] = []
            continue
        found.extend((here / f).relative_to(folder) for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    return found


# Tie-breakers per role, applied in order while more than one candidate is left (each keeps the
# candidates it prefers, when there are any).
_PREFERENCES = {
    "CT": (
        lambda words: "ct" in words,
        lambda words: words == ["ct"],
        lambda words: any(_names_pet(w) for w in words),
    ),
    "PET": (
        lambda words: any(w.startswith("suv") for w in words),
        lambda words: "".join(words) in ("pet", "suv"),
    ),
    "label": (
        lambda words: any(_names_pet(w) for w in words),
        lambda words: "".join(words) in EXACT_LABEL_NAMES,
    ),
}


def matches_by_name(candidates: List[Path], role: str) -> List[Path]:
    """The candidates the name rule gives `role` ("CT", "PET" or "label"), after its tie-breakers."""
    matches = [c for c in candidates if role_of(c) == role]
    for prefer in _PREFERENCES[role]:
        preferred = [c for c in matches if prefer(_words(c))]
        if len(matches) > 1 and preferred:
            matches = preferred
    return matches


def matches_by_pattern(candidates: List[Path], pattern: str) -> List[Path]:
    pattern = pattern.lower()
    return [c for c in candidates
            if fnmatch.fnmatchcase(c.as_posix().lower(), pattern) or fnmatch.fnmatchcase(c.name.lower(), pattern)]


def ambiguity_message(role: str, folder, matches: List[Path], pattern: Optional[str] = None) -> str:
    how = f"matching '{pattern}'" if pattern else "by its name"
    listed = ", ".join(m.as_posix() for m in matches)
    return (f"several {role} candidates in '{folder}' ({how}): {listed}; keep one, rename the others, "
            f"or give a {role} file pattern.")


def pick(candidates: List[Path], role: str, pattern: Optional[str], folder) -> Path:
    """The one candidate of `role` (absolute); InputError when there is none or more than one."""
    matches = matches_by_pattern(candidates, pattern) if pattern else matches_by_name(candidates, role)
    if len(matches) == 1:
        return Path(folder) / matches[0]
    if not matches:
        how = f"matching '{pattern}'" if pattern else "by its name"
        raise InputError(f"no {role} found in '{folder}' ({how}); name it after the modality (e.g. {role}.nii.gz "
                         f"or a {role} DICOM folder) or give a {role} file pattern.")
    raise InputError(ambiguity_message(role, folder, matches, pattern))


def find_study_inputs(folder, ct_pattern: Optional[str] = None, pet_pattern: Optional[str] = None) -> Tuple[Path, Path]:
    """(ct_path, pet_path) of a study folder by the rule in this module's docstring; InputError if not found
    or ambiguous."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Study folder '{folder}' does not exist.")
    candidates = study_candidates(folder)
    return pick(candidates, "CT", ct_pattern, folder), pick(candidates, "PET", pet_pattern, folder)
