"""A headless Slicer application on the PyPI package slicer-core, for scripts, the demo and tests.

Real Slicer provides ``slicer.mrmlScene``, ``slicer.modules.<name>.logic()`` and an application logic
with colour tables. slicer-core has the same MRML and module-logic classes but no application, so this
module builds that wiring once and installs the same names, so code written for real Slicer (the
VeloxSeg Logic) runs unchanged. Never used inside real Slicer.
"""

import shutil
import tempfile
import types

import slicer
import vtk

# Module logics the VeloxSeg Logic, slicer.util and the slice-view rendering rely on.
# The terminology logic is left out: slicer-core ships no *.term.json files, and segments store
# their terminology strings without it.
_MODULE_LOGICS = (
    ("Volumes", "volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Data", "data", "vtkSlicerDataModuleLogic"),
    ("Tables", "tables", "vtkSlicerTablesLogic"),
)


class HeadlessSlicer:
    """Scene + application logic + module logics, published as ``slicer.mrmlScene``/``slicer.modules``.

    Use as a context manager, or call :meth:`close` to clear the scene and restore the previous names.
    """

    def __init__(self):
        if hasattr(slicer, "app"):
            raise RuntimeError("HeadlessSlicer is for slicer-core only; real Slicer already has an application.")
        self.scene = slicer.vtkMRMLScene()
        # reading .mrb files needs a cache folder, as in the application
        self.cacheDirectory = tempfile.mkdtemp(prefix="veloxseg-slicer-cache-")
        self._cacheManager = slicer.vtkCacheManager()
        self._cacheManager.SetRemoteCacheDirectory(self.cacheDirectory)
        self._dataIOManager = slicer.vtkDataIOManager()
        self._dataIOManager.SetCacheManager(self._cacheManager)
        self.scene.SetCacheManager(self._cacheManager)
        self.scene.SetDataIOManager(self._dataIOManager)
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)

        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        colorLogic = self.appLogic.GetColorLogic()
        colorLogic.SetMRMLScene(self.scene)
        colorLogic.AddDefaultColorNodes()  # PET-Heat and the other procedural colour tables
        self.appLogic.SetModuleLogic("Colors", colorLogic)  # the volumes logic looks it up by this name
        self.appLogic.SetSliceLogics(vtk.vtkCollection())
        self.appLogic.SetViewLogics(vtk.vtkCollection())
        slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.appLogic)
        slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.appLogic)

        self.logics = {}
        modules = {}
        for moduleName, attributeName, className in _MODULE_LOGICS:
            logic = getattr(slicer, className)()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.appLogic)
            self.appLogic.SetModuleLogic(moduleName, logic)
            self.logics[moduleName] = logic
            modules[attributeName] = types.SimpleNamespace(logic=(lambda lg=logic: lg))
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)

        # Publish the names real Slicer has; remember what was there to restore it on close().
        self._previous = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**modules)

    def close(self):
        """Clear the scene and restore ``slicer.mrmlScene``/``slicer.modules`` as they were."""
        if self.scene is None:
            return
        self.scene.Clear(1)
        shutil.rmtree(self.cacheDirectory, ignore_errors=True)
        for name, value in self._previous.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        self.scene = None

    def __enter__(self):
        return self

    def __exit__(self, *excInfo):
        self.close()
        return False


def loadVolume(path, name=None, labelmap=False):
    """Load an image file as a volume node the way a console user would in Slicer."""
    import os

    if name is None:
        name = os.path.basename(path).split(".")[0]
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
    if node is None:
        raise OSError(f"Could not read a volume from {path}")
    return node
