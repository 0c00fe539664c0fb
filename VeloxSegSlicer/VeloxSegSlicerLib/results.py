"""Engine results -> MRML: the coded segmentation, the lesion table and how they are shown.

Built in two steps so that nothing in the scene changes until everything is ready:
``buildSegmentation``/``buildTableRows`` make plain objects outside the scene (any thread), and
``commitResults`` (main thread) puts them into nodes in one go, removing what it created if it fails.
"""

import logging

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import mrml_io, terminology

TABLE_REFERENCE_ROLE = "VeloxSegLesionTable"
LESION_ID_TAG = "VeloxSeg.LesionId"
PET_HEAT_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"

# (column name, unit label, description); the order is the table's column order.
TABLE_COLUMNS = (
    ("Lesion", "", "Lesion number (Total = all lesions of the study)"),
    ("Segment", "", "ID of the segment that holds the lesion"),
    ("SUVmax", "g/ml", "Maximum SUVbw in the lesion"),
    ("SUVmean", "g/ml", "Mean SUVbw in the lesion"),
    ("SUVpeak", "g/ml", "Mean SUVbw in a 1 mL sphere centred on the hottest lesion voxel"),
    ("MTV_mL", "mL", "Metabolic tumour volume"),
    ("TLG_g", "g", "Total lesion glycolysis = SUVmean x MTV"),
    ("CentroidR_mm", "mm", "Centroid, Right coordinate (RAS)"),
    ("CentroidA_mm", "mm", "Centroid, Anterior coordinate (RAS)"),
    ("CentroidS_mm", "mm", "Centroid, Superior coordinate (RAS)"),
    ("Site", "", "Anatomical site under the lesion (liver, lung, bone, ...), from the model's organ output; empty "
                 "when the model names no sites"),
    ("Voxels", "", "Number of PET voxels in the lesion"),
    ("OnCT", "", "1 = the lesion is in the segmentation (CT grid); 0 = it has no voxel on the CT grid (it lies "
                 "outside the CT field of view): PET statistics only, no segment"),
    ("CutByCTEdge", "", "1 = the lesion touches the part of the PET the CT does not cover, which is not analysed: "
                        "it is cut there (MTV and TLG too low); 0 = not"),
)
_STRING_COLUMNS = ("Lesion", "Segment", "Site")
# Counts and 0/1 flags: double columns in the table (the Total row's flags are NaN), whole numbers in a CSV.
INTEGER_COLUMNS = ("Voxels", "OnCT", "CutByCTEdge")


def _binaryLabelmapName():
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _setSourceRepresentation(segmentation, name):
    # Slicer >= 5.4 says "source", older versions "master"
    setter = getattr(segmentation, "SetSourceRepresentationName", None) or segmentation.SetMasterRepresentationName
    setter(name)


def _orientedImage(array, offsetKji, ijkToRas):
    """vtkOrientedImageData holding a (k, j, i) uint8/uint16 ``array`` placed at voxel offset (k, j, i) of the
    reference grid whose voxel-to-RAS matrix is ``ijkToRas``."""
    image = slicer.vtkOrientedImageData()
    k0, j0, i0 = (int(v) for v in offsetKji)
    nk, nj, ni = array.shape
    image.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijkToRas[r, c]))
    image.SetImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if array.dtype == np.uint8 else vtk.VTK_UNSIGNED_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    return image


def _unionBox(labelArray):
    """(lower kji, upper kji exclusive) around all non-zero voxels, or None when there are none."""
    lower, upper = [], []
    for axis in range(3):
        present = np.flatnonzero(labelArray.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        lower.append(int(present[0]))
        upper.append(int(present[-1]) + 1)
    return np.array(lower), np.array(upper)


def _newSegment(name, color, lesionIds, labelValue):
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetTerminology(terminology.lesionTerminologyEntry())
    segment.SetTag(LESION_ID_TAG, ",".join(str(i) for i in lesionIds))
    segment.SetLabelValue(int(labelValue))
    return segment


def segmentIdForLesion(lesionId):
    return f"lesion_{lesionId}"


ALL_LESIONS_SEGMENT_ID = "lesions"


def buildSegmentation(labelArray, ijkToRas, lesionIds, oneSegmentPerLesion=True):
    """A vtkSegmentation (outside any scene) with the lesions of a (k, j, i) label array.

    ``ijkToRas`` is the 4x4 voxel-to-RAS matrix of the reference volume (the CT, in its own frame).
    Lesions never overlap, so all segments share one labelmap cropped to the lesions' bounding box
    (label value = lesion id), as Slicer stores them itself: memory and save time do not grow with
    the number of lesions. Returns (segmentation, {lesion id: segment id}).
    """
    segmentation = slicer.vtkSegmentation()
    _setSourceRepresentation(segmentation, _binaryLabelmapName())
    box = _unionBox(labelArray)
    crop = labelArray[box[0][0]:box[1][0], box[0][1]:box[1][1], box[0][2]:box[1][2]] if box else None
    present = set(int(v) for v in np.unique(crop)) - {0} if crop is not None else set()
    # The engine puts every lesion on the CT label except one outside the CT field of view (found where the
    # PET reaches beyond the CT; LesionStats.on_ct is False): it keeps its table row (statistics are measured
    # on the PET) but gets no segment.
    missing = [int(i) for i in lesionIds if int(i) not in present]
    if missing:
        logging.info(f"VeloxSeg: lesions {missing} have no voxel on the CT grid (outside the CT field of view); "
                     "no segment for them")
    lesionIds = [int(i) for i in lesionIds if int(i) in present]
    if not lesionIds:
        return segmentation, {}
    if present - set(lesionIds):  # labels that are not listed lesions are not shown
        crop = np.where(np.isin(crop, lesionIds), crop, 0)
    if oneSegmentPerLesion:
        shared = _orientedImage(crop.astype(np.uint8 if max(lesionIds) < 256 else np.uint16), box[0], ijkToRas)
        segmentOfLesion = {}
        for index, lesionId in enumerate(lesionIds):
            color = terminology.LESION_COLORS[index % len(terminology.LESION_COLORS)]
            segment = _newSegment(f"Lesion {lesionId}", color, [lesionId], lesionId)
            segment.AddRepresentation(_binaryLabelmapName(), shared)
            segmentation.AddSegment(segment, segmentIdForLesion(lesionId))
            segmentOfLesion[lesionId] = segmentIdForLesion(lesionId)
        return segmentation, segmentOfLesion
    segment = _newSegment("Lesions", terminology.ALL_LESIONS_COLOR, lesionIds, 1)
    segment.AddRepresentation(_binaryLabelmapName(), _orientedImage((crop > 0).astype(np.uint8), box[0], ijkToRas))
    segmentation.AddSegment(segment, ALL_LESIONS_SEGMENT_ID)
    return segmentation, {lesionId: ALL_LESIONS_SEGMENT_ID for lesionId in lesionIds}


def buildTableRows(lesions, totals, segmentOfLesion):
    """Rows (dicts keyed by TABLE_COLUMNS names): one per lesion, then the study total."""
    rows = []
    for lesion in lesions:
        r, a, s = (float(v) for v in lesion.centroid_ras_mm)
        rows.append({
            "Lesion": str(lesion.id), "Segment": segmentOfLesion.get(int(lesion.id), ""),
            "SUVmax": float(lesion.suv_max), "SUVmean": float(lesion.suv_mean), "SUVpeak": float(lesion.suv_peak),
            "MTV_mL": float(lesion.mtv_ml), "TLG_g": float(lesion.tlg),
            "CentroidR_mm": r, "CentroidA_mm": a, "CentroidS_mm": s, "Site": str(getattr(lesion, "site", "")),
            "Voxels": float(lesion.voxels),
            "OnCT": 1.0 if int(lesion.id) in segmentOfLesion else 0.0,
            "CutByCTEdge": 1.0 if lesion.cut_by_ct_edge else 0.0,
        })
    voxels = sum(float(lesion.voxels) for lesion in lesions)
    totalMtv = float(totals.total_mtv_ml)
    rows.append({
        "Lesion": "Total", "Segment": "",
        "SUVmax": max((float(lesion.suv_max) for lesion in lesions), default=float("nan")),
        # voxel-weighted mean over all lesions, i.e. total TLG / total MTV
        "SUVmean": float(totals.total_tlg) / totalMtv if totalMtv > 0 else float("nan"),
        "SUVpeak": max((float(lesion.suv_peak) for lesion in lesions), default=float("nan")),
        "MTV_mL": totalMtv, "TLG_g": float(totals.total_tlg),
        "CentroidR_mm": float("nan"), "CentroidA_mm": float("nan"), "CentroidS_mm": float("nan"), "Site": "",
        "Voxels": voxels, "OnCT": float("nan"), "CutByCTEdge": float("nan"),
    })
    return rows


def _fillTableNode(tableNode, rows, lesionCount):
    table = vtk.vtkTable()
    for name, _unit, _description in TABLE_COLUMNS:
        column = vtk.vtkStringArray() if name in _STRING_COLUMNS else vtk.vtkDoubleArray()
        column.SetName(name)
        column.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            column.SetValue(index, row[name])
        table.AddColumn(column)
    tableNode.SetAndObserveTable(table)
    for name, unit, description in TABLE_COLUMNS:
        if unit:
            tableNode.SetColumnUnitLabel(name, unit)
        tableNode.SetColumnDescription(name, description)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetAttribute("VeloxSeg.LesionCount", str(lesionCount))


def _detachLabelmaps(segmentation):
    """Drop the segments' labelmaps before the segments themselves go.

    Removing a segment that shares its labelmap makes Slicer first erase that segment's voxels from the
    shared image (a pass over the whole image per segment, minutes for hundreds of lesions); segments
    that are thrown away anyway do not need that.
    """
    for index in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(index).RemoveRepresentation(_binaryLabelmapName())


def _copySegments(source, targetNode):
    """Replace all segments of ``targetNode`` by copies of those of ``source`` (shared layer kept);
    ``source`` is emptied (it is a temporary)."""
    target = targetNode.GetSegmentation()
    _detachLabelmaps(target)
    target.DeepCopy(source)
    _detachLabelmaps(source)
    source.RemoveAllSegments()


def _placeInStudy(scene, node, ctNode):
    """Put ``node`` beside the CT in the subject hierarchy (its study), as DICOM SEG export needs."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parentItem = shNode.GetSceneItemID()
    ctItem = shNode.GetItemByDataNode(ctNode)
    if ctItem:
        parentItem = shNode.GetItemParent(ctItem)
    item = shNode.GetItemByDataNode(node)
    if item:  # real Slicer creates items for new nodes by itself
        shNode.SetItemParent(item, parentItem)
    else:
        shNode.CreateItem(parentItem, node)


def commitResults(ctNode, petNode, segmentation, rows, lesionCount, outputSegmentationNode=None,
                  outputTableNode=None, showResult=True, baseName=None):
    """Put the results into the scene; on any failure remove the nodes created here and re-raise.

    An existing output segmentation keeps its node (ID, name, display) and gets its segments replaced;
    its previous lesion table is reused when none is given.
    """
    scene = ctNode.GetScene()
    baseName = baseName or ctNode.GetName()
    created = []
    try:
        segNode = outputSegmentationNode
        if segNode is None:
            segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                              scene.GenerateUniqueName(f"{baseName} lesions"))
            created.append(segNode)
        tableNode = outputTableNode or segNode.GetNodeReference(TABLE_REFERENCE_ROLE)
        if tableNode is None:
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                                scene.GenerateUniqueName(f"{segNode.GetName()} statistics"))
            created.append(tableNode)
        if segNode.GetDisplayNode() is None:
            segNode.CreateDefaultDisplayNodes()
        wasModifying = segNode.StartModify()
        try:
            _copySegments(segmentation, segNode)  # first: the copy also brings (empty) conversion parameters
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
            # same frame as the CT, whose voxel grid the labelmaps use
            segNode.SetAndObserveTransformNodeID(ctNode.GetTransformNodeID())
            segNode.SetNodeReferenceID(TABLE_REFERENCE_ROLE, tableNode.GetID())
            segNode.SetNodeReferenceID("VeloxSegPET", petNode.GetID())
        finally:
            segNode.EndModify(wasModifying)
        _fillTableNode(tableNode, rows, lesionCount)
        _placeInStudy(scene, segNode, ctNode)
        _placeInStudy(scene, tableNode, ctNode)
        if showResult:
            showResults(ctNode, petNode, segNode)
    except Exception:
        for node in reversed(created):
            mrml_io.removeNode(node)
        raise
    return segNode, tableNode


def showResults(ctNode, petNode, segNode):
    """PET in PET-Heat over the grey CT, lesions with a visible outline."""
    petDisplay = petNode.GetDisplayNode()
    if petDisplay is None:
        petNode.CreateDefaultDisplayNodes()
        petDisplay = petNode.GetDisplayNode()
    petDisplay.SetAndObserveColorNodeID(PET_HEAT_COLOR_NODE_ID)
    petDisplay.AutoWindowLevelOff()
    petDisplay.SetWindowLevelMinMax(0.0, 8.0)  # SUV 0..8: lesions stand out, background stays visible
    segDisplay = segNode.GetDisplayNode()
    segDisplay.SetVisibility(True)
    segDisplay.SetVisibility2DOutline(True)
    segDisplay.SetVisibility2DFill(True)
    segDisplay.SetOpacity2DFill(0.25)
    segDisplay.SetSliceIntersectionThickness(2)
    # the slice views exist only in the application
    if hasattr(slicer, "app"):
        slicer.util.setSliceViewerLayers(background=ctNode, foreground=petNode, foregroundOpacity=0.5)
