"""Which loaded volume is the CT and which the PET, and whether a CT/PET pair can be segmented.

Every problem comes back as a sentence that says what is wrong and what to do, so the module can show
it in the button tooltip before anything runs, and the Logic can raise it as an InputError.

The voxel checks are the engine's own (``engine.inputs.checks``: scalar 3D, finite, not a label map, CT in HU,
PET in SUV), run on the nodes' arrays, so the module refuses exactly what ``veloxseg segment`` refuses.
Only what Slicer alone knows is checked here besides: the DICOM modality and the voxel value units that
Slicer's DICOM plugins record on a node.
"""

import numpy as np
import slicer

from .engine.errors import InputError
from .engine.inputs import checks
from .mrml_io import volumeArray, worldBounds

# Units Slicer's PET DICOM plugin (PETDICOMExtension) puts on SUV volumes, as UCUM code values.
SUV_BW_UNITS = "{SUVbw}g/ml"
OTHER_SUV_UNITS = ("{SUVlbm}g/ml", "{SUVbsa}cm2/ml", "{SUVibw}g/ml")

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


def _contentProblem(check, node, *args):
    """The engine check's sentence for the node's voxels, or ''."""
    try:
        check(volumeArray(node), *args, source=node.GetName())
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
    if cheap:  # the value range only, against the engine's own limit: the button and the console agree
        valueMax = petNode.GetImageData().GetScalarRange()[1]
        if valueMax > checks.SUV_MAX_LIMIT:
            return (f"'{name}' does not look like SUV: its values reach {valueMax:.0f}, far above any SUV "
                    f"(raw counts or Bq/ml?). {HOW_TO_GET_SUV}")
    return ""


def _petProblem(petNode, cheap=False):
    problem = _petUnitsProblem(petNode, cheap)
    if problem or cheap:
        return problem
    return _contentProblem(checks.check_pet, petNode)


def _ctProblem(ctNode, cheap=False):
    if dicomModality(ctNode) == "PT" or "suv" in voxelUnits(ctNode).lower():
        return f"'{ctNode.GetName()}' is a PET image. Choose the CT of the study as CT volume."
    if cheap:  # the value range only: a CT reaches air and bone
        valueMin, valueMax = ctNode.GetImageData().GetScalarRange()
        if valueMin > checks.CT_AIR_THRESHOLD_HU or valueMax < checks.CT_BONE_HU:
            return (f"'{ctNode.GetName()}' does not look like a CT in Hounsfield units (values {valueMin:.0f} to "
                    f"{valueMax:.0f}, without air or bone). Choose the CT of the study as CT volume.")
        return ""
    return _contentProblem(checks.check_ct, ctNode)


def worldBoxLps(volumeNode):
    """(low, high) of the node's voxel-centre box in world LPS millimetres, as the engine measures images."""
    low, high = (np.asarray(corner, dtype=float) * (-1.0, -1.0, 1.0) for corner in worldBounds(volumeNode))
    return np.minimum(low, high), np.maximum(low, high)


def overlapFraction(ctNode, petNode):
    """Fraction of the PET's world box that lies inside the CT's (the engine's overlap rule)."""
    return checks.pet_in_ct_fraction(worldBoxLps(ctNode), worldBoxLps(petNode))


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
    # the PET first: a CT chosen as PET is then called a CT ("swapped?"), the clearest message
    problem = _petProblem(petNode, cheap) or _ctProblem(ctNode, cheap)
    if problem:
        return problem
    try:
        checks.check_overlap(worldBoxLps(ctNode), worldBoxLps(petNode), ctNode.GetName(), petNode.GetName())
    except InputError as error:
        return str(error)
    return ""


def validateInputs(ctNode, petNode):
    """Raise InputError with the first problem of the pair, if any."""
    problem = checkInputs(ctNode, petNode)
    if problem:
        raise InputError(problem)
