"""Folder batch helpers of the Logic: find the CT and PET of each case, load them, save the results.

A case is a folder holding one CT and one PET: image files (NIfTI, NRRD, MHA) or DICOM series folders,
possibly one level down (e.g. ``CT/image/*.dcm``). Names decide which is which, unless glob patterns
are given.
"""

import csv
import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

import slicer

from . import mrml_io
from .engine import read_image, read_pet_suv
from .engine.imageio import is_dicom_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
EXCLUDED_TOKENS = {"mask", "masks", "label", "labels", "labelmap", "seg", "segmentation", "gtv", "roi",
                   "rtstruct", "rtss"}
CT_TOKENS = {"ct"}
PET_TOKENS = {"pet", "suv", "pt"}
MAX_DEPTH = 3


@dataclass
class Case:
    name: str
    folder: Path
    ctPath: Path = None
    petPath: Path = None
    problem: str = ""  # why the case cannot run (reported in the summary), or ''


def _tokens(relativePath):
    name = str(relativePath).lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return set(re.split(r"[^a-z0-9]+", name)) - {""}


def _candidates(folder):
    """Image files and DICOM series folders under ``folder`` as paths relative to it."""
    found = []
    for root, dirs, files in os.walk(folder):
        rootPath = Path(root)
        depth = len(rootPath.relative_to(folder).parts)
        if depth >= MAX_DEPTH:
            dirs[:] = []
        dirs.sort()
        files = sorted(files)
        if depth > 0 and any(is_dicom_file(rootPath / f) for f in files[:5]):
            found.append(rootPath.relative_to(folder))
            dirs[:] = []
            continue
        found.extend((rootPath / f).relative_to(folder) for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    return found


def _pick(candidates, pattern, wanted, other, role):
    if pattern:
        matches = [c for c in candidates if fnmatch.fnmatch(c.as_posix(), pattern)
                   or fnmatch.fnmatch(c.name, pattern)]
    else:
        matches = [c for c in candidates
                   if _tokens(c) & wanted and not _tokens(c) & other and not _tokens(c) & EXCLUDED_TOKENS]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, f"no {role} found"
    listed = ", ".join(m.as_posix() for m in matches)
    return None, f"several {role} candidates ({listed}); pass a {role.lower()}Pattern"


def findCase(folder, ctPattern=None, petPattern=None):
    """The Case of one folder, or None when it holds no image at all."""
    folder = Path(folder)
    candidates = _candidates(folder)
    if not candidates:
        return None
    ct, ctProblem = _pick(candidates, ctPattern, CT_TOKENS, PET_TOKENS, "CT")
    pet, petProblem = _pick(candidates, petPattern, PET_TOKENS, CT_TOKENS, "PET")
    problem = "; ".join(p for p in (ctProblem, petProblem) if p)
    return Case(folder.name, folder, folder / ct if ct else None, folder / pet if pet else None, problem)


def findCases(inputDir, ctPattern=None, petPattern=None):
    """``inputDir`` itself when it directly holds a CT and a PET, else one Case per sub-folder."""
    inputDir = Path(inputDir)
    if not inputDir.is_dir():
        return []
    own = findCase(inputDir, ctPattern, petPattern)
    if own is not None and not own.problem and len(own.ctPath.relative_to(inputDir).parts) == 1:
        return [own]
    cases = []
    for sub in sorted(p for p in inputDir.iterdir() if p.is_dir()):
        case = findCase(sub, ctPattern, petPattern)
        if case is not None:
            cases.append(case)
    return cases


def loadCase(case):
    """Read a case into the scene; PET DICOM becomes SUVbw. Returns (ctNode, petNode)."""
    from .engine import InputError

    if case.problem:
        raise InputError(f"{case.name}: {case.problem}")
    ctImage = read_image(case.ctPath, "CT")
    petImage = read_pet_suv(case.petPath)
    ctNode = mrml_io.addVolumeNodeFromSitk(ctImage, f"{case.name}_CT")
    petNode = mrml_io.addVolumeNodeFromSitk(petImage, f"{case.name}_PET")
    return ctNode, petNode


def saveCaseResults(caseName, segNode, tableNode, outputDir):
    """Write ``<case>.seg.nrrd`` and ``<case>_lesions.csv``; returns {'segmentation': path, 'table': path}."""
    segPath = os.path.join(outputDir, f"{caseName}.seg.nrrd")
    tablePath = os.path.join(outputDir, f"{caseName}_lesions.csv")
    segStorage = slicer.vtkMRMLSegmentationStorageNode()
    segStorage.SetFileName(segPath)
    segStorage.SetUseCompression(True)
    if not segStorage.WriteData(segNode):
        raise OSError(f"Could not write {segPath}")
    writeTableCsv(tableNode, tablePath)
    return {"segmentation": segPath, "table": tablePath}


def writeTableCsv(tableNode, path):
    """Plain CSV of a table node (header = column names), values with full float precision."""
    table = tableNode.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([column.GetName() for column in columns])
        for row in range(table.GetNumberOfRows()):
            writer.writerow([_cell(column, row) for column in columns])


def _cell(column, row):
    value = column.GetValue(row)
    if isinstance(value, float):
        return "" if value != value else repr(value)  # NaN -> empty cell
    return value


SUMMARY_FIELDS = ("case", "status", "lesions", "total_mtv_ml", "total_tlg_g", "suv_max", "seconds", "ct", "pet",
                  "segmentation", "table", "error")


def summaryRow(case, tableNode, outputs, seconds, error=""):
    row = {field: "" for field in SUMMARY_FIELDS}
    row.update(case=case.name, status="failed" if error else "ok", seconds=f"{seconds:.1f}",
               ct=str(case.ctPath or ""), pet=str(case.petPath or ""), error=error, **outputs)
    if tableNode is not None:
        table = tableNode.GetTable()
        last = table.GetNumberOfRows() - 1
        row["lesions"] = tableNode.GetAttribute("VeloxSeg.LesionCount")
        for field, column in (("total_mtv_ml", "MTV_mL"), ("total_tlg_g", "TLG_g"), ("suv_max", "SUVmax")):
            row[field] = _cell(table.GetColumnByName(column), last)
    return row


def writeSummary(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def nodeIds(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def removeNewNodes(scene, before):
    """Remove every node added since the snapshot ``before`` (set of IDs); keeps batch memory flat."""
    for nodeId in reversed(nodeIds(scene)):
        node = scene.GetNodeByID(nodeId) if nodeId not in before else None
        if node is not None:  # None also when it went with its owner
            mrml_io.removeNode(node)
