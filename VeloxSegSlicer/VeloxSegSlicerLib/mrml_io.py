"""Volume nodes <-> SimpleITK images with exact geometry.

Slicer nodes live in RAS, SimpleITK (and the engine) in LPS: LPS = diag(-1, -1, 1) * RAS.
A volume under a linear transform is read in world coordinates (the transform is applied to its
geometry, the voxels are not resampled), so a PET registered to the CT with a transform is used as
the user sees it. Non-linear transforms must be hardened first.
"""

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from .engine.errors import InputError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _matrixToArray(matrix):
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(array):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRasArray(volumeNode, world=True):
    """4x4 IJK->RAS matrix of a volume node; with ``world`` the parent transforms are applied."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRas = _matrixToArray(matrix)
    transformNode = volumeNode.GetParentTransformNode()
    if world and transformNode is not None:
        if not transformNode.IsTransformToWorldLinear():
            raise InputError(
                f"'{volumeNode.GetName()}' is under a non-linear transform ('{transformNode.GetName()}'). "
                "Harden the transform (Data module, right-click > Harden transform) and try again.")
        toWorld = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(toWorld)
        ijkToRas = _matrixToArray(toWorld) @ ijkToRas
    return ijkToRas


def geometryFromIjkToRas(ijkToRas):
    """(origin, spacing, direction) in ITK/LPS convention from a 4x4 IJK->RAS matrix."""
    linear = ijkToRas[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    directionRas = linear / spacing
    origin = LPS_FROM_RAS @ ijkToRas[:3, 3]
    direction = LPS_FROM_RAS @ directionRas
    return tuple(float(v) for v in origin), tuple(float(v) for v in spacing), tuple(float(v) for v in direction.ravel())


def ijkToRasFromSitk(image):
    """4x4 IJK->RAS matrix of a SimpleITK image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    ijkToRas[:3, 3] = LPS_FROM_RAS @ np.array(image.GetOrigin())
    return ijkToRas


def volumeArray(volumeNode):
    """The voxels as a (k, j, i) numpy array, read-only view; raises InputError when there are none."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        name = volumeNode.GetName() if volumeNode is not None else "(none)"
        raise InputError(f"The volume '{name}' has no voxels. Load the image again.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"'{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components per voxel "
            "(a colour or vector image). Choose a scalar CT or PET volume.")
    return slicer.util.arrayFromVolume(volumeNode)


def sitkImageFromVolumeNode(volumeNode, world=True):
    """Copy a scalar volume node into a SimpleITK image (own memory, so it is safe to use off the main thread)."""
    array = np.array(volumeArray(volumeNode), copy=True)
    image = sitk.GetImageFromArray(array)
    origin, spacing, direction = geometryFromIjkToRas(ijkToRasArray(volumeNode, world=world))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def updateVolumeNodeFromSitk(volumeNode, image):
    """Set voxels and geometry of a volume node from a SimpleITK image (the node's own frame)."""
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
    volumeNode.SetIJKToRASMatrix(_arrayToMatrix(ijkToRasFromSitk(image)))


def addVolumeNodeFromSitk(image, name, scene=None, labelmap=False):
    """A new scalar (or labelmap) volume node with display node, holding a copy of ``image``."""
    scene = scene or slicer.mrmlScene
    className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(className, name)
    updateVolumeNodeFromSitk(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def worldBounds(volumeNode):
    """(min_xyz, max_xyz) of the voxel-centre bounding box in world RAS millimetres."""
    imageData = volumeNode.GetImageData()
    dims = imageData.GetDimensions()
    ijkToRas = ijkToRasArray(volumeNode)
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)])
    ras = (ijkToRas @ corners.T).T[:, :3]
    return ras.min(axis=0), ras.max(axis=0)


def removeNode(node):
    """Remove a node and its subject hierarchy item (item first: no stale SH cache entry is left)."""
    scene = node.GetScene()
    if scene is None:
        return
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(node) if shNode is not None else 0
    if item:
        shNode.RemoveItem(item, False, False)
    scene.RemoveNode(node)
