"""Folder batch helpers of the Logic: find the CT and PET of each case, load them, save the results.

A case is a folder holding one CT and one PET (image files or DICOM series folders, possibly one or two
levels down); which is which follows the engine's rule (`engine.study_inputs`), the same as
`veloxseg batch`, or glob patterns when given.
"""

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import slicer

from . import mrml_io
from .engine import InputError, read_image, read_pet_suv
from .engine.study_inputs import find_study_inputs, study_candidates


@dataclass
class Case:
    name: str
    folder: Path
    ctPath: Path = None
    petPath: Path = None
    problem: str = ""  # why the case cannot run (reported in the summary), or ''


def findCase(folder, ctPattern=None, petPattern=None):
    """The Case of one folder, or None when it holds no image at all."""
    folder = Path(folder)
    if not study_candidates(folder):
        return None
    try:
        ctPath, petPath = find_study_inputs(folder, ctPattern, petPattern)
    except InputError as exc:
        return Case(folder.name, folder, problem=str(exc))
    return Case(folder.name, folder, ctPath, petPath)


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
