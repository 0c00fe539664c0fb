"""onnxruntime on first use, with consent: Slicer >= 5.12 (pip_ensure), older Slicer (dialog + pip_install),
outside Slicer (an instruction, never an install), GPU builds only when the GPU is chosen, never at import."""

import ast
import types
from pathlib import Path

import pytest
import slicer

from VeloxSegSlicerLib import dependencies
from VeloxSegSlicerLib.engine import ModelError

REPO = Path(__file__).resolve().parents[2]


class FakeSlicer:
    """What the tests let the fake application do, and what was done."""

    def __init__(self, monkeypatch, installed=False, cuda=False, pydeps=True, consent=True):
        self.state = {"installed": installed, "cuda": cuda}
        self.calls = []
        self.consent = consent
        monkeypatch.setattr(slicer, "app", object(), raising=False)
        monkeypatch.setattr(dependencies, "onnxruntimeStatus", self._status)
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", self._confirm, raising=False)
        monkeypatch.setattr(slicer.util, "pip_install", self._pip_install, raising=False)
        monkeypatch.setattr(slicer.util, "pip_uninstall", lambda name: self.calls.append(("uninstall", name)),
                            raising=False)
        module = None
        if pydeps:
            module = types.SimpleNamespace(load_requirements=self._load_requirements, pip_ensure=self._pip_ensure)
        monkeypatch.setattr(dependencies, "_packagingModule", lambda: module)

    def _status(self):
        return self.state["installed"], self.state["cuda"], "1.20.0" if self.state["installed"] else ""

    def _confirm(self, message, title=""):
        self.calls.append(("confirm", message))
        return self.consent

    def _pip_install(self, requirement):
        self.calls.append(("pip_install", requirement))
        self.state["installed"] = True
        self.state["cuda"] = "gpu" in requirement

    def _load_requirements(self, path):
        self.calls.append(("load_requirements", Path(path)))
        return [line.strip() for line in Path(path).read_text().splitlines() if line and not line.startswith("#")]

    def _pip_ensure(self, requirements, requester=None):
        self.calls.append(("pip_ensure", [str(r) for r in requirements], requester))
        if not self.consent:
            raise RuntimeError("User declined package installation")
        self.state["installed"] = True
        self.state["cuda"] = any("gpu" in str(r) for r in requirements)


def test_requirements_from_resources():
    assert dependencies.cpuRequirement() == "onnxruntime>=1.16"
    assert dependencies.gpuRequirement() == "onnxruntime-gpu>=1.16"
    assert Path(dependencies.REQUIREMENTS_FILE) == REPO / "VeloxSegSlicer" / "Resources" / "requirements.txt"


def test_outside_slicer_never_installs(monkeypatch):
    assert not hasattr(slicer, "app")
    dependencies.ensureOnnxRuntime()  # installed in the test environment: nothing to do
    monkeypatch.setattr(dependencies, "onnxruntimeStatus", lambda: (False, False, ""))
    with pytest.raises(ModelError, match=r"pip install 'onnxruntime>=1.16'"):
        dependencies.ensureOnnxRuntime()
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        dependencies.ensureOnnxRuntime(gpu=True)


def test_slicer_with_pip_ensure_installs_the_requirements_file(monkeypatch):
    fake = FakeSlicer(monkeypatch)
    dependencies.ensureOnnxRuntime()
    assert fake.calls == [("load_requirements", Path(dependencies.REQUIREMENTS_FILE)),
                          ("pip_ensure", ["onnxruntime>=1.16"], "VeloxSeg")]
    fake.calls.clear()
    dependencies.ensureOnnxRuntime()  # present now: no second prompt
    assert fake.calls == []


def test_slicer_with_pip_ensure_declined(monkeypatch):
    fake = FakeSlicer(monkeypatch, consent=False)
    with pytest.raises(ModelError, match="not installed"):
        dependencies.ensureOnnxRuntime()
    assert not fake.state["installed"]


def test_gpu_build_only_when_gpu_is_chosen(monkeypatch):
    fake = FakeSlicer(monkeypatch)
    dependencies.ensureOnnxRuntime(gpu=True)
    assert fake.calls == [("pip_ensure", ["onnxruntime-gpu>=1.16"], "VeloxSeg")]


def test_old_slicer_asks_then_pip_installs(monkeypatch):
    fake = FakeSlicer(monkeypatch, pydeps=False)
    dependencies.ensureOnnxRuntime()
    assert [c[0] for c in fake.calls] == ["confirm", "pip_install"]
    assert fake.calls[1] == ("pip_install", "onnxruntime>=1.16")

    declined = FakeSlicer(monkeypatch, pydeps=False, consent=False)
    with pytest.raises(ModelError):
        dependencies.ensureOnnxRuntime()
    assert [c[0] for c in declined.calls] == ["confirm"]


def test_gpu_replaces_cpu_build_and_asks_for_restart(monkeypatch):
    fake = FakeSlicer(monkeypatch, installed=True, cuda=False)
    with pytest.raises(ModelError, match="Restart Slicer"):
        dependencies.ensureOnnxRuntime(gpu=True)
    assert [c[0] for c in fake.calls] == ["confirm", "uninstall", "pip_install"]
    assert fake.calls[2] == ("pip_install", "onnxruntime-gpu>=1.16")

    declined = FakeSlicer(monkeypatch, installed=True, cuda=False, consent=False)
    dependencies.ensureOnnxRuntime(gpu=True)  # keeps the CPU build; the engine falls back and says so
    assert [c[0] for c in declined.calls] == ["confirm"]


def _callers(path, function):
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                name = getattr(inner.func, "attr", getattr(inner.func, "id", "")) if isinstance(inner, ast.Call) else ""
                if name == function:
                    found.add(node.name)
    module_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not any(isinstance(inner, ast.Call) and getattr(inner.func, "attr", "") == function
                   for n in module_level for inner in ast.walk(n)), f"{function} called at import of {path.name}"
    return {name for name in found if not name[0].isupper()}  # methods, not the classes around them


def test_installation_only_when_segmenting():
    module = REPO / "VeloxSegSlicer" / "VeloxSegSlicer.py"
    logic = REPO / "VeloxSegSlicer" / "VeloxSegSlicerLib" / "logic.py"
    assert _callers(module, "ensureOnnxRuntime") == {"onApplyButton"}
    assert _callers(logic, "ensureOnnxRuntime") == {"segment", "segmentFolder"}
    for path in (REPO / "VeloxSegSlicer").rglob("*.py"):
        installs = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") in ("pip_install", "pip_ensure", "pip_uninstall")]
        assert not installs or path.name == "dependencies.py", f"{path} installs packages itself"
