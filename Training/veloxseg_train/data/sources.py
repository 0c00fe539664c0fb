"""Find the cases of a data folder: the AutoPET-II nnU-Net layout, or one sub-folder per case.

Only file discovery happens here; reading and checking the images is `validate.load_case`.

Which file of a case folder is the CT, the PET and the label follows the engine's rule
(`engine/inputs/study_inputs.py`), the one `veloxseg batch` and the Slicer module use, so a folder
that inference accepts is read the same way here: words of the name, case-insensitive; a word starting
with mask/label/seg/gtv makes a label, else the first word starting with `ct` a CT, with `pet`/`suv` (or
`pt`) a PET; ties go to the exact word `ct`, then the CT on the PET grid (IBSI `CT_on_PET_grid` over
`CT_fullres`), to `SUV` over `PET`, and to the label on the PET (`PET_GTV_mask` over
`CT_fullres_GTV_mask`). Image files only (training does not read DICOM series). A role with no candidate,
or several left after the tie-breakers, is a DataError naming the case.
A folder whose three files carry the IBSI names is reported as source "ibsi".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, List, Optional

from VeloxSegSlicerLib import engine

from .case import CaseFiles, DataError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IBSI_NAMES = {"ct": "ct_on_pet_grid", "pet": "pet_suv", "label": "pet_gtv_mask"}
SYNTHETIC_MANIFEST = "manifest.json"
SYNTHETIC_FORMAT = "veloxseg-synthetic/1"
_ENGINE_ROLES = {"ct": "CT", "pet": "PET", "label": "label"}
ORGAN_FILE_STEM = "organs"  # an optional organ map beside them: organs.nii.gz (codes of organs.ORGAN_NAMES)


def image_stem(path: Path) -> Optional[str]:
    """The file name without its image extension, or None when it is not an image file."""
    lower = path.name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return path.name[: -len(ext)]
    return None


def role_of(stem: str) -> Optional[str]:
    """'ct', 'pet', 'label' or None for a file-name stem, by the engine's rule."""
    role = engine.role_of(stem)
    return role.lower() if role else None


def case_from_folder(folder: Path, source: Optional[str] = None) -> CaseFiles:
    """The CT, PET and label files of one case folder; a missing or ambiguous one is a DataError naming
    the case."""
    folder = Path(folder)
    case = folder.name
    if not folder.is_dir():
        raise DataError(case, f"{folder} is not a folder")
    candidates = [c for c in engine.study_candidates(folder, dicom_series=False) if image_stem(c)]
    picked = {}
    for role, engine_role in _ENGINE_ROLES.items():
        matches = engine.matches_by_name(candidates, engine_role)
        if len(matches) > 1:
            raise DataError(case, engine.ambiguity_message(engine_role, folder, matches))
        picked[role] = folder / matches[0] if matches else None
    missing = [role.upper() for role in ("ct", "pet", "label") if picked[role] is None]
    if missing:
        raise DataError(case, f"missing {' and '.join(missing)} in {folder} (naming rule: docs/data.md)")
    organs = [c for c in candidates if image_stem(c).lower() == ORGAN_FILE_STEM]
    if source is None:
        is_ibsi = all(image_stem(picked[r]).lower() == IBSI_NAMES[r] for r in IBSI_NAMES)
        source = "ibsi" if is_ibsi else "folder"
    return CaseFiles(case, source, picked["ct"], picked["pet"], picked["label"],
                     folder / organs[0] if organs else None)


def find_folder_cases(root: Path, source: Optional[str] = None) -> List[CaseFiles]:
    """One case per sub-folder of `root` (sorted by name); every sub-folder must be a complete case."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(str(root), "holds no case sub-folders (expected one folder per case with CT, PET "
                                   "and a label)")
    return [case_from_folder(folder, source) for folder in folders]


def find_autopet_cases(root: Path) -> List[CaseFiles]:
    """Cases of an nnU-Net raw data set: imagesTr/NAME_0000 (CT), NAME_0001 (PET SUV), labelsTr/NAME."""
    root = Path(root)
    images, labels = root / "imagesTr", root / "labelsTr"
    for folder in (images, labels):
        if not folder.is_dir():
            raise DataError(str(root), f"has no {folder.name}/ folder (expected the nnU-Net raw layout: "
                                       "imagesTr/NAME_0000.nii.gz, NAME_0001.nii.gz, labelsTr/NAME.nii.gz)")
    channels = {}
    for path in sorted(images.iterdir()):
        match = re.fullmatch(r"(.+)_(\d{4})\.nii(\.gz)?", path.name)
        if match:
            channels.setdefault(match.group(1), {})[int(match.group(2))] = path
    label_files = {image_stem(p): p for p in sorted(labels.iterdir()) if image_stem(p) is not None}
    cases = []
    for name in sorted(set(channels) | set(label_files)):
        have = channels.get(name, {})
        missing = [f"{what} ({name}_{ch:04d}.nii.gz)" for ch, what in ((0, "CT"), (1, "PET"))
                   if ch not in have]
        if name not in label_files:
            missing.append(f"label (labelsTr/{name}.nii.gz)")
        if missing:
            raise DataError(name, f"missing {', '.join(missing)} in {root}")
        extra = sorted(set(have) - {0, 1})
        if extra:
            raise DataError(name, f"unexpected channel(s) {extra}; the AutoPET layout has 0000 = CT and "
                                  "0001 = PET only")
        cases.append(CaseFiles(name, "autopet", have[0], have[1], label_files[name]))
    if not cases:
        raise DataError(str(root), "imagesTr/ holds no NAME_0000.nii.gz files")
    return cases


def find_synthetic_cases(root: Path) -> List[CaseFiles]:
    """The cases listed in a `veloxseg-train synth` manifest; every listed case must be present."""
    root = Path(root)
    manifest_path = root / SYNTHETIC_MANIFEST
    if not manifest_path.is_file():
        raise DataError(str(root), f"has no {SYNTHETIC_MANIFEST} (write it with `veloxseg-train synth`)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != SYNTHETIC_FORMAT:
        raise DataError(str(root), f"{SYNTHETIC_MANIFEST} is not a {SYNTHETIC_FORMAT} manifest")
    cases = []
    for entry in manifest["cases"]:
        folder = root / entry["folder"]
        if not folder.is_dir():
            raise DataError(entry["name"], f"listed in the manifest but {folder} does not exist")
        # phantoms are "synthetic"; lesions inserted into real studies say so ("real_background")
        cases.append(case_from_folder(folder, manifest.get("source", "synthetic")))
    return cases


def find_all(autopet: Iterable[Path] = (), cases: Iterable[Path] = (),
             synthetic: Iterable[Path] = ()) -> List[CaseFiles]:
    """Every case of the given folders, in argument order."""
    found: List[CaseFiles] = []
    for root in autopet:
        found += find_autopet_cases(root)
    for root in cases:
        found += find_folder_cases(root)
    for root in synthetic:
        found += find_synthetic_cases(root)
    return found
