"""What the Logic adds to the engine's cohort runner (``engine.cohort.batch.run_batch``), and result files.

``segmentFolder`` is ``run_batch`` (the same study finding, resume records, workers or Dask, summary.csv as
``veloxseg batch``) with ``StudyOutputs`` as its ``after_study`` hook: for each finished study it writes the
lesions as a Slicer segmentation (``lesions.seg.nrrd``, coded segments, on the CT grid) beside the engine's
outputs and, when asked, loads the study and its results into the scene. It runs in the calling process,
from the engine's label and lesion table, so it is the same for studies run by local or Dask workers.
"""

import csv
import dataclasses
import os
from pathlib import Path

import SimpleITK as sitk
import slicer
import vtk

from . import mrml_io, results
from .engine import LesionStats, StudyTotals, VeloxSegError, read_ct, read_pet_suv
from .engine.cohort.batch_study import LABEL_NAME, RECORD_NAME, STATS_NAME, read_record
from .engine.cohort.outputs import AtomicOutputs

SEGMENTATION_NAME = "lesions.seg.nrrd"
_NRRD_HEADER_LIMIT = 1 << 20  # a .seg.nrrd header with thousands of segments still fits


def readLesionStats(path):
    """The engine's per-lesion CSV (``lesions.csv``) as LesionStats, in its order."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    known = {field.name for field in dataclasses.fields(LesionStats)}
    lesions = []
    for row in rows:
        values = {
            "id": int(row["lesion_id"]), "voxels": int(float(row["voxels"])), "suv_max": float(row["suv_max"]),
            "suv_mean": float(row["suv_mean"]), "suv_peak": float(row["suv_peak"]), "mtv_ml": float(row["mtv_ml"]),
            "tlg": float(row["tlg"]),
            "centroid_ras_mm": tuple(float(row[f"centroid_{axis}_mm"]) for axis in "ras"),
            "on_ct": float(row.get("on_ct") or 1) != 0,
        }
        if "cut_by_ct_edge" in row and "cut_by_ct_edge" in known:  # a flag newer engines write
            values["cut_by_ct_edge"] = float(row["cut_by_ct_edge"] or 0) != 0
        if "site" in row and "site" in known:  # the anatomical site newer engines write ("" when unknown)
            values["site"] = row["site"] or ""
        lesions.append(LesionStats(**values))
    return lesions


def _nrrdHeader(path):
    """The ``key:=value`` fields of a NRRD header (read without the voxels)."""
    with open(path, "rb") as stream:
        head = stream.read(_NRRD_HEADER_LIMIT)
    fields = {}
    for line in head.split(b"\n\n", 1)[0].decode("latin-1").splitlines():
        key, separator, value = line.partition(":=")
        if separator:
            fields[key] = value
    return fields


def _segmentationIsCurrent(path, recordPath, oneSegmentPerLesion):
    """Whether a study's .seg.nrrd was written after its record and with this segment layout."""
    try:
        if path.stat().st_mtime_ns < recordPath.stat().st_mtime_ns:
            return False  # older than the engine's outputs: from an earlier run
        firstSegment = _nrrdHeader(path).get("Segment0_ID")
    except OSError:
        return False
    if firstSegment is None:
        return True  # no lesion: the same file in both layouts
    return (firstSegment == results.ALL_LESIONS_SEGMENT_ID) != bool(oneSegmentPerLesion)


def writeSegmentationFile(segmentation, referenceImage, path):
    """Write a vtkSegmentation (left unchanged) as a Slicer .seg.nrrd whose reference geometry is
    ``referenceImage``'s grid; under a temporary name renamed when complete, as the engine's outputs."""
    node = slicer.vtkMRMLSegmentationNode()  # outside any scene: the user's scene is not touched
    node.GetSegmentation().DeepCopy(segmentation)
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(0, referenceImage.GetWidth() - 1, 0, referenceImage.GetHeight() - 1, 0,
                       referenceImage.GetDepth() - 1)
    ijkToRas = vtk.vtkMatrix4x4()
    ijkToRas.DeepCopy([float(v) for v in mrml_io.ijkToRasFromSitk(referenceImage).ravel()])
    geometry.SetImageToWorldMatrix(ijkToRas)
    node.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(geometry))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetUseCompression(True)
    with AtomicOutputs() as outputs:
        storage.SetFileName(str(outputs.temporary(path)))
        if not storage.WriteData(node):
            raise VeloxSegError(f"Cannot write '{path}'; is the disk full or the folder no longer writable?")


class StudyOutputs:
    """``run_batch``'s ``after_study`` hook of ``segmentFolder``: ``lesions.seg.nrrd`` for every finished
    study (rewritten when the engine ran it again, or when it is missing, stale or of the other segment
    layout) and, with ``loadResults``, the study's CT, PET, segmentation and lesion table in the scene.
    Runs in the calling thread, which must be the main thread when ``loadResults`` is set."""

    def __init__(self, inputDir, oneSegmentPerLesion=True, loadResults=False):
        self.inputDir = Path(inputDir)
        self.oneSegmentPerLesion = bool(oneSegmentPerLesion)
        self.loadResults = bool(loadResults)
        self.loaded = {}  # study -> (segmentation node, table node) added to the scene

    def __call__(self, row, outDir):
        outDir = Path(outDir)
        segPath = outDir / SEGMENTATION_NAME
        write = row["status"] == "done" or not _segmentationIsCurrent(segPath, outDir / RECORD_NAME,
                                                                      self.oneSegmentPerLesion)
        if not (write or self.loadResults):
            return
        label = sitk.ReadImage(str(outDir / LABEL_NAME))  # the engine's label, on the CT grid
        lesions = readLesionStats(outDir / STATS_NAME)
        segmentation, segmentOfLesion = results.buildSegmentation(
            sitk.GetArrayViewFromImage(label), mrml_io.ijkToRasFromSitk(label), [lesion.id for lesion in lesions],
            self.oneSegmentPerLesion)
        if write:
            writeSegmentationFile(segmentation, label, segPath)
        if self.loadResults:
            self.loaded[row["study"]] = self._load(row, outDir, segmentation, lesions, segmentOfLesion)

    def _load(self, row, outDir, segmentation, lesions, segmentOfLesion):
        """The study into the scene: its CT and PET as read by the engine, the segmentation, the table."""
        study = row["study"]
        totals = (read_record(outDir) or {}).get("totals") or {}
        totals = StudyTotals(len(lesions), float(totals.get("total_mtv_ml", sum(x.mtv_ml for x in lesions))),
                             float(totals.get("total_tlg", sum(x.tlg for x in lesions))))
        folder = self.inputDir / study
        added = []
        try:
            added.append(mrml_io.addVolumeNodeFromSitk(read_ct(folder / row["ct"]), f"{study}_CT"))
            added.append(mrml_io.addVolumeNodeFromSitk(read_pet_suv(folder / row["pet"]), f"{study}_PET"))
            tableRows = results.buildTableRows(lesions, totals, segmentOfLesion)
            return results.commitResults(added[0], added[1], segmentation, tableRows, len(lesions),
                                         showResult=False, baseName=study)
        except Exception:
            for node in added:
                mrml_io.removeNode(node)
            raise


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
        if value != value:
            return ""  # NaN -> empty cell
        # a voxel count or a flag reads 716 and 1, not 716.0 and 1.0
        return str(int(value)) if column.GetName() in results.INTEGER_COLUMNS else repr(value)
    return value
