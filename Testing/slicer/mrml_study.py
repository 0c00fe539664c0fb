"""Synthetic PET/CT studies with oblique (non-identity) directions and known hot spheres, plus
independent numpy reference computations of the lesion statistics.

The CT and the PET have different grids and different rotations around the same physical centre, so
any LPS/RAS, direction or spacing mistake in the MRML bridge moves the lesions or changes the numbers.
"""

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
CENTER_LPS = np.array([-31.0, 18.0, -52.0])


def rotation(degrees_z, degrees_x=0.0):
    az, ax = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    return rz @ rx


@dataclass
class Sphere:
    offset_lps: tuple  # from CENTER_LPS, mm
    radius_mm: float
    suv: float

    @property
    def center_lps(self):
        return CENTER_LPS + np.asarray(self.offset_lps, dtype=float)

    @property
    def center_ras(self):
        return LPS_TO_RAS @ self.center_lps


SPHERES = (Sphere((14.0, -9.0, 8.0), 10.0, 10.0), Sphere((-15.0, 11.0, -9.0), 8.0, 7.0))


def make_grid(size_xyz, spacing_xyz, direction, center_lps=CENTER_LPS):
    """Empty float32 image whose centre is ``center_lps``."""
    image = sitk.Image([int(s) for s in size_xyz], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    half = np.asarray(direction) @ (np.asarray(spacing_xyz) * (np.asarray(size_xyz) - 1) / 2.0)
    image.SetOrigin([float(v) for v in center_lps - half])
    return image


def physical_points(image):
    """(z, y, x, 3) LPS coordinates of every voxel centre."""
    size = image.GetSize()
    k, j, i = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def _body(points):
    rel = points - CENTER_LPS
    return (rel[..., 0] / 55.0) ** 2 + (rel[..., 1] / 45.0) ** 2 <= 1.0


def make_ct(size_xyz=(56, 50, 36), spacing_xyz=(2.0, 2.2, 3.0), direction=None):
    image = make_grid(size_xyz, spacing_xyz, rotation(20.0, 10.0) if direction is None else direction)
    points = physical_points(image)
    values = np.full(points.shape[:3], -1000.0, dtype=np.float32)
    values[_body(points)] = 40.0
    rel = points - CENTER_LPS
    values[(np.abs(rel[..., 0]) < 6) & (np.abs(rel[..., 1] + 25) < 6)] = 700.0  # a "spine"
    out = sitk.GetImageFromArray(values.astype(np.int16))
    out.CopyInformation(image)
    return out


def make_pet(size_xyz=(34, 30, 22), spacing_xyz=(4.0, 4.0, 5.0), direction=None, spheres=SPHERES, scale=1.0):
    """PET in SUV (times ``scale``): 1.0 in the body, 0.05 outside, ``sphere.suv`` inside each sphere."""
    image = make_grid(size_xyz, spacing_xyz, rotation(-15.0) if direction is None else direction)
    points = physical_points(image)
    values = np.where(_body(points), 1.0, 0.05).astype(np.float32)
    for sphere in spheres:
        inside = np.linalg.norm(points - sphere.center_lps, axis=-1) <= sphere.radius_mm
        values[inside] = sphere.suv
    out = sitk.GetImageFromArray(values * np.float32(scale))
    out.CopyInformation(image)
    return out


def reference_statistics(label_pet, pet):
    """{lesion id: dict} computed with numpy from the PET-grid label image (independent of the engine)."""
    labels = sitk.GetArrayFromImage(label_pet)
    suv = sitk.GetArrayFromImage(pet).astype(np.float64)
    points = physical_points(pet)
    voxel_ml = float(np.prod(pet.GetSpacing())) / 1000.0
    stats = {}
    for lesion_id in np.unique(labels[labels > 0]):
        mask = labels == lesion_id
        values = suv[mask]
        hottest = np.argwhere(mask & (suv == values.max()))[0]  # first in z, y, x order
        distance = np.linalg.norm(points - points[tuple(hottest)], axis=-1)
        peak = suv[distance <= (3.0 / (4.0 * np.pi)) ** (1 / 3) * 10.0 + 1e-6].mean()
        stats[int(lesion_id)] = {
            "SUVmax": values.max(),
            "SUVmean": values.mean(),
            "SUVpeak": peak,
            "MTV_mL": mask.sum() * voxel_ml,
            "TLG_g": values.mean() * mask.sum() * voxel_ml,
            "centroid_ras": LPS_TO_RAS @ points[mask].mean(axis=0),
            "Voxels": int(mask.sum()),
        }
    return stats


def add_study(mrml_io, ct_image, pet_image, ct_name="Synthetic CT", pet_name="Synthetic PET"):
    """Add the two images as volume nodes; returns (ct_node, pet_node)."""
    ct_node = mrml_io.addVolumeNodeFromSitk(ct_image, ct_name)
    pet_node = mrml_io.addVolumeNodeFromSitk(pet_image, pet_name)
    return ct_node, pet_node


def put_in_study(scene, *nodes):
    """Patient > study items holding the nodes (what DICOM loading creates); returns the study item."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "PET/CT study")
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, study)
        else:
            sh.CreateItem(study, node)
    return study


def scene_snapshot(scene):
    """(ID, class, name) of every node: equal snapshots = no node added, removed or renamed."""
    snapshot = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        snapshot.append((node.GetID(), node.GetClassName(), node.GetName()))
    return snapshot
