"""Which loaded volume is the CT and which the PET, and whether a CT/PET pair can be segmented.

Every problem comes back as a sentence that says what is wrong and what to do, so the module can show
it in the button tooltip before anything runs, and the Logic can raise it as an InputError.
"""

import numpy as np
import slicer

from .engine.errors import InputError
from .mrml_io import volumeArray, worldBounds

# Units Slicer's PET DICOM plugin (PETDICOMExtension) puts on SUV volumes, as UCUM code values.
SUV_BW_UNITS = "{SUVbw}g/ml"
OTHER_SUV_UNITS = ("{SUVlbm}g/ml", "{SUVbsa}cm2/ml", "{SUVibw}g/ml")

# Above this 99.5th percentile a PET cannot be SUV: activity concentrations are in the thousands of Bq/ml,
# while even a bladder or a hot tumour stays below ~100 g/ml in SUVbw.
MAX_PLAUSIBLE_SUV_P995 = 100.0
# The quick check (button tooltip) only has the value range: no SUV image reaches this maximum.
MAX_PLAUSIBLE_SUV = 1000.0
# A CT in Hounsfield units spans at least air-to-soft-tissue or fat-to-bone.
MIN_CT_VALUE_SPREAD = 300.0
# CT and PET must share at least this fraction of the PET field of view.
MIN_OVERLAP_FRACTION = 0.2

HOW_TO_GET_SUV = (
    "Load the PET series through the DICOM module with the PET DICOM extension installed (its PET plugin "
    "converts to SUVbw), or convert it yourself: SUVbw = activity [Bq/ml] x body weight [g] / "
    "decay-corrected injected dose [Bq]."
)


def dicomModality(volumeNode):
    """The DICOM modality (e.g. 'CT', 'PT') Slicer recorded for the node's series, or ''."""
    scene = volumeNode.GetScene()
    if scene is None:
        return ""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return ""
    itemId = shNode.GetItemByDataNode(volumeNode)
    if not itemId:
        return ""
    attributeName = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    return (shNode.GetItemAttribute(itemId, attributeName) or "").strip().upper()


def voxelUnits(volumeNode):
    """The code value of the node's voxel value units (e.g. '{SUVbw}g/ml', 'Bq/ml'), or ''."""
    units = volumeNode.GetVoxelValueUnits() if hasattr(volumeNode, "GetVoxelValueUnits") else None
    return (units.GetCodeValue() or "") if units is not None else ""


def _robustMax(array):
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if finite.size == 0:
        return float("nan")
    # a strided sample keeps this fast on whole-body volumes; percentiles barely change
    sample = finite.ravel()[:: max(1, finite.size // 2_000_000)]
    return float(np.percentile(sample, 99.5))


def roleScore(name, modality, units, valueMin, valueMax):
    """How much a volume looks like a PET (> 0) or a CT (< 0); 0 when nothing tells."""
    name = name.lower()
    score = 0.0
    if modality == "PT":
        score += 10
    elif modality == "CT":
        score -= 10
    if "suv" in units.lower():
        score += 8
    if any(token in name for token in ("pet", "suv", "_pt", "pt_")) or name.startswith("pt"):
        score += 4
    if any(token in name for token in ("ct", "hu")) and "pet" not in name:
        score -= 4
    if valueMin < -500:  # air in Hounsfield units
        score -= 2
    elif valueMin >= 0 and valueMax < 200:  # non-negative, SUV-like range
        score += 1
    return score


def candidateVolumes(scene=None):
    """Scalar, non-labelmap volumes with voxels, in scene order."""
    scene = scene or slicer.mrmlScene
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetHideFromEditors():
            continue
        imageData = node.GetImageData()
        if imageData is None or imageData.GetNumberOfScalarComponents() != 1:
            continue
        nodes.append(node)
    return nodes


def guessCtAndPet(scene=None):
    """Best (ctNode, petNode) among loaded volumes; either may be None. Never the same node twice."""
    scored = []
    for node in candidateVolumes(scene):
        valueMin, valueMax = node.GetImageData().GetScalarRange()
        scored.append((roleScore(node.GetName(), dicomModality(node), voxelUnits(node), valueMin, valueMax), node))
    petScore, petNode = max(scored, key=lambda item: item[0], default=(0, None))
    ctScore, ctNode = min(scored, key=lambda item: item[0], default=(0, None))
    if petNode is not None and petScore <= 0:
        petNode = None
    if ctNode is not None and (ctScore >= 0 or ctNode is petNode):
        ctNode = None
    return ctNode, petNode


def _checkVolume(node, role):
    if node is None:
        return f"Select the {role} volume."
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return (f"'{node.GetName()}' is a label map, not a {role} image. Choose the {role} image itself.")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        return f"'{node.GetName()}' is not a scalar volume. Choose the {role} image."
    try:
        volumeArray(node)
    except InputError as error:
        return str(error)
    return ""


def _petUnitsProblem(petNode, cheap=False):
    units = voxelUnits(petNode)
    name = petNode.GetName()
    if units == SUV_BW_UNITS:
        return ""
    if units in OTHER_SUV_UNITS:
        return (f"'{name}' is in {units}, but the model expects SUV normalised by body weight (SUVbw). "
                "Load the SUVbw series of this PET (DICOM module, PET plugin).")
    if units:
        return f"'{name}' is in {units}, not in SUV. {HOW_TO_GET_SUV}"
    if cheap:
        valueMax = petNode.GetImageData().GetScalarRange()[1]
        if valueMax > MAX_PLAUSIBLE_SUV:
            return (f"'{name}' does not look like SUV: its values reach {valueMax:.0f}, far above any SUV "
                    f"(raw counts or Bq/ml?). {HOW_TO_GET_SUV}")
        return ""
    p995 = _robustMax(volumeArray(petNode))
    if not np.isfinite(p995) or p995 <= 0:
        return f"'{name}' holds no positive values, so it cannot be a PET in SUV. {HOW_TO_GET_SUV}"
    if p995 > MAX_PLAUSIBLE_SUV_P995:
        return (f"'{name}' does not look like SUV: 99.5 % of its voxels are below {p995:.0f}, far above any "
                f"SUV (raw counts or Bq/ml?). {HOW_TO_GET_SUV}")
    return ""


def _ctProblem(ctNode):
    if dicomModality(ctNode) == "PT" or "suv" in voxelUnits(ctNode).lower():
        return f"'{ctNode.GetName()}' is a PET image. Choose the CT of the study as CT volume."
    valueMin, valueMax = ctNode.GetImageData().GetScalarRange()
    if valueMax - valueMin < MIN_CT_VALUE_SPREAD or (valueMin >= 0 and valueMax < 200):
        return (f"'{ctNode.GetName()}' does not look like a CT in Hounsfield units (values {valueMin:.0f} to "
                f"{valueMax:.0f}). Choose the CT of the study as CT volume.")
    return ""


def overlapFraction(ctNode, petNode):
    """Fraction of the PET bounding box (world RAS) that lies inside the CT bounding box."""
    ctMin, ctMax = worldBounds(ctNode)
    petMin, petMax = worldBounds(petNode)
    inter = np.clip(np.minimum(ctMax, petMax) - np.maximum(ctMin, petMin), 0.0, None)
    petExtent = np.maximum(petMax - petMin, 1e-6)
    return float(np.prod(inter / petExtent))


def checkInputs(ctNode, petNode, cheap=False):
    """'' when the pair can be segmented, else the first problem as a sentence.

    ``cheap`` skips the checks that read all voxels (for GUI tooltips, which run on every change).
    """
    for node, role in ((ctNode, "CT"), (petNode, "PET")):
        problem = _checkVolume(node, role)
        if problem:
            return problem
    if ctNode is petNode or ctNode.GetID() == petNode.GetID():
        return "The same volume is selected as CT and as PET. Choose the CT and the PET of the study."
    problem = _ctProblem(ctNode)
    if problem:
        return problem
    problem = _petUnitsProblem(petNode, cheap)
    if problem:
        return problem
    try:
        fraction = overlapFraction(ctNode, petNode)
    except InputError as error:
        return str(error)
    if fraction < MIN_OVERLAP_FRACTION:
        return (f"CT '{ctNode.GetName()}' and PET '{petNode.GetName()}' do not overlap in space "
                f"({100 * fraction:.0f} % of the PET lies inside the CT). Choose a CT and PET of the same "
                "study, or register them first.")
    return ""


def validateInputs(ctNode, petNode):
    """Raise InputError with the first problem of the pair, if any."""
    problem = checkInputs(ctNode, petNode)
    if problem:
        raise InputError(problem)
