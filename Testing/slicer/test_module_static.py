"""Static checks of the Slicer module file and its .ui (the Widget itself runs in real Slicer only).

- every ``self.ui.<name>`` the module uses exists in the .ui;
- every SlicerParameterName in the .ui is a parameter of the @parameterNodeWrapper class, every parameter
  has a widget, and each widget is of a class Slicer's GUI connectors bind to that parameter type;
- the module imports at file scope only what the Extensions Index allows, parses as Python 3.9
  (Slicer 5.8), and has no ``from __future__ import annotations`` (parameterNodeWrapper reads annotations);
- no file of the Lib imports onnxruntime (or torch) at file scope;
- the .ui loads in Qt (PySide6), with the Slicer widget classes replaced by stand-ins.
"""

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO / "VeloxSegSlicer" / "VeloxSegSlicer.py"
UI_FILE = REPO / "VeloxSegSlicer" / "Resources" / "UI" / "VeloxSegSlicer.ui"
LIB_DIR = REPO / "VeloxSegSlicer" / "VeloxSegSlicerLib"

ALLOWED_TOP_LEVEL = {"slicer", "vtk", "qt", "ctk", "numpy", "SimpleITK", "VeloxSegSlicerLib"}
KNOWN_CUSTOM_WIDGETS = {"qMRMLWidget", "qMRMLNodeComboBox", "ctkCollapsibleButton", "ctkSliderWidget",
                        "qMRMLSegmentSelectorWidget", "ctkPathLineEdit", "ctkDirectoryButton"}
# widget class -> parameter kinds Slicer's parameterNodeWrapper GUI connectors bind it to
CONNECTORS = {
    "qMRMLNodeComboBox": {"node"},
    "QComboBox": {"enum"},
    "QCheckBox": {"bool"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float"},
    "QSpinBox": {"int"},
}


def _module_tree():
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE), feature_version=(3, 9))


def _ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    widgets = {}
    for widget in root.iter("widget"):
        params = [p.find("string").text for p in widget.findall("property")
                  if p.get("name") == "SlicerParameterName"]
        node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes"
                      for s in p.iter("string")]
        widgets[widget.get("name")] = {"class": widget.get("class"), "param": params[0] if params else None,
                                       "nodeTypes": node_types}
    return root, widgets


def _wrapper_parameters(tree):
    """{name: annotation source} of the class decorated with @parameterNodeWrapper."""
    enums = {node.name for node in tree.body if isinstance(node, ast.ClassDef)
             and any(isinstance(b, ast.Attribute) and b.attr == "Enum" for b in node.bases)}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            params = {}
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign):
                    params[statement.target.id] = ast.unparse(statement.annotation)
            return params, enums
    raise AssertionError("no @parameterNodeWrapper class in VeloxSegSlicer.py")


def _kind(annotation, enums):
    if annotation.startswith("vtkMRML"):
        return "node"
    if annotation in enums:
        return "enum"
    for kind in ("bool", "float", "int", "str"):
        if annotation == kind or annotation.startswith(f"Annotated[{kind},"):
            return kind
    raise AssertionError(f"unexpected parameter type {annotation}")


def test_every_ui_name_used_by_the_module_exists():
    tree = _module_tree()
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    _, widgets = _ui_widgets()
    assert used, "the module does not use self.ui at all?"
    assert not used - set(widgets), f"used in VeloxSegSlicer.py but missing from the .ui: {used - set(widgets)}"


def test_parameter_names_match_the_wrapper_and_widget_types():
    params, enums = _wrapper_parameters(_module_tree())
    _, widgets = _ui_widgets()
    bound = {w["param"]: (name, w) for name, w in widgets.items() if w["param"]}
    assert set(bound) <= set(params), f"SlicerParameterName without parameter: {set(bound) - set(params)}"
    assert set(params) <= set(bound), f"parameters without widget: {set(params) - set(bound)}"
    for param, (name, widget) in bound.items():
        kind = _kind(params[param], enums)
        assert kind in CONNECTORS.get(widget["class"], set()), \
            f"{name} ({widget['class']}) cannot be bound to {param}: {params[param]}"
        if kind == "node":
            assert widget["nodeTypes"] == [params[param]], f"{name} nodeTypes {widget['nodeTypes']}"


def test_ui_custom_widgets_and_scene_connections():
    root, widgets = _ui_widgets()
    custom = {c.find("class").text for c in root.iter("customwidget")}
    assert custom <= KNOWN_CUSTOM_WIDGETS
    used_classes = {w["class"] for w in widgets.values()}
    assert custom == {c for c in used_classes if not c.startswith("Q")}, "declare exactly the Slicer widgets used"
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {name for name, w in widgets.items()
                    if w["class"].startswith("qMRML") and w["class"] != "qMRMLWidget"}
    assert mrml_widgets == receivers, "every MRML widget needs the scene"


def test_module_file_imports_and_python_version():
    source = MODULE_FILE.read_text()
    tree = _module_tree()  # parses with the Python 3.9 grammar
    assert "from __future__ import annotations" not in source
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in ALLOWED_TOP_LEVEL, f"file-scope import of {name}"
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes["VeloxSegSlicer"] == ["ScriptedLoadableModule"]
    assert classes["VeloxSegSlicerWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["VeloxSegSlicerTest"] == ["ScriptedLoadableModuleTest"]
    assert "VeloxSegSlicerLogic" in source  # re-exported from the Lib


@pytest.mark.parametrize("path", sorted(LIB_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(LIB_DIR)))
def test_lib_has_no_heavy_file_scope_imports(path):
    tree = ast.parse(path.read_text(), feature_version=(3, 9))
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            assert name.split(".")[0] not in {"onnxruntime", "torch", "qt", "ctk", "PySide6"}, \
                f"{path.name} imports {name} at file scope"


def test_ui_loads_in_qt():
    from PySide6 import QtCore, QtUiTools, QtWidgets  # PySide6-Essentials: part of the slicer-test extra

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QtUiTools.QUiLoader()
    stand_ins = {"qMRMLWidget": QtWidgets.QWidget, "qMRMLNodeComboBox": QtWidgets.QComboBox,
                 "ctkCollapsibleButton": QtWidgets.QGroupBox}
    for name, base in stand_ins.items():
        loader.registerCustomWidget(type(name, (base,), {}))
    QtCore.qInstallMessageHandler(lambda *args: None)  # "no such signal mrmlSceneChanged" is expected
    widget = loader.load(str(UI_FILE))
    assert widget is not None, loader.errorString()
    _, widgets = _ui_widgets()
    for name in widgets:
        if name != "VeloxSegSlicer":
            assert widget.findChild(QtCore.QObject, name) is not None, name
    combo = widget.findChild(QtCore.QObject, "petVolumeSelector")
    assert combo.property("SlicerParameterName") == "petVolume"
    del app
