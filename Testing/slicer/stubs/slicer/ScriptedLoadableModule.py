"""Test stand-in for Slicer's slicer/ScriptedLoadableModule.py, which slicer-core does not ship.

This folder (Testing/slicer/stubs/slicer, no __init__.py) goes on sys.path before ``import slicer``;
slicer-core's namespace package then merges it in, so ``from slicer.ScriptedLoadableModule import
ScriptedLoadableModuleLogic`` works as in the application. Only the Logic base class is provided: the
Module, Widget and Test classes need Qt and run in real Slicer only.
"""

import slicer


class ScriptedLoadableModuleLogic:
    """Like Slicer's: the module name comes from the class name, the parameter node is a scene singleton."""

    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[: -len("Logic")]

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # CreateNodeByClass returns a new reference
        node.SetSingletonTag(self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node
