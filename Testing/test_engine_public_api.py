"""The engine's folder shows its three jobs, and the training package uses only its public API.

- Training/ imports the engine only as the package: `from VeloxSegSlicerLib.engine import NAME` with NAME
  in the package's `__all__`, `from VeloxSegSlicerLib import engine` or `import VeloxSegSlicerLib.engine`
  (then only `engine.NAME` of `__all__`); never a sub-package or sub-module, nor the rest of
  VeloxSegSlicerLib (the Slicer module).
- Inside the engine the order is one way: `inputs` imports only `errors`, `inference` only `inputs` and
  `errors`, `cohort` anything; `errors` nothing.
- Each module has one path: the engine's top level holds only `__init__`, `__main__` and `errors`.

AST scans only (no torch needed), well under a second.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "VeloxSegSlicer" / "VeloxSegSlicerLib" / "engine"
TRAINING = ROOT / "Training"
PACKAGE = "VeloxSegSlicerLib.engine"
SUB_PACKAGES = ("inputs", "inference", "cohort")
# within the engine, what each part may import (besides itself)
ALLOWED = {"errors": set(), "inputs": {"errors"}, "inference": {"inputs", "errors"},
           "cohort": {"inference", "inputs", "errors"}}


def public_names() -> Set[str]:
    """The engine package's `__all__`, read from its source."""
    tree = ast.parse((ENGINE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("engine/__init__.py has no __all__")


def engine_violations(source: str, public: Set[str], where: str = "<source>") -> List[str]:
    """Every use of the engine (or of VeloxSegSlicerLib) in `source` that is not the engine's public API."""
    tree = ast.parse(source, where)
    found, aliases = [], set()  # aliases: local names bound to the engine package
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE:
                    if alias.asname:
                        aliases.add(alias.asname)
                elif alias.name == "VeloxSegSlicerLib" or alias.name.startswith("VeloxSegSlicerLib."):
                    found.append(f"{line}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE:
                for alias in node.names:
                    if alias.name not in public:
                        found.append(f"{line}: from {PACKAGE} import {alias.name} (not in the engine's __all__)")
            elif node.module == "VeloxSegSlicerLib":
                for alias in node.names:
                    if alias.name == "engine":
                        aliases.add(alias.asname or "engine")
                    else:
                        found.append(f"{line}: from VeloxSegSlicerLib import {alias.name}")
            elif node.module.startswith("VeloxSegSlicerLib."):
                found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            name = node.args[0].value
            if called in ("import_module", "__import__") and isinstance(name, str) and \
                    name.startswith("VeloxSegSlicerLib") and name != PACKAGE:
                found.append(f"{line}: {called}({name!r})")
    for node in ast.walk(tree):  # engine.NAME through a module alias; `import VeloxSegSlicerLib.engine` spelt out
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in aliases and node.attr not in public:
            found.append(f"{where}:{node.lineno}: {value.id}.{node.attr} (not in the engine's __all__)")
        elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and \
                value.value.id == "VeloxSegSlicerLib" and value.attr == "engine" and node.attr not in public:
            found.append(f"{where}:{node.lineno}: VeloxSegSlicerLib.engine.{node.attr} (not in the engine's __all__)")
    return found


def test_training_imports_only_the_engine_package():
    public = public_names()
    files = sorted(TRAINING.rglob("*.py"))
    assert len(files) > 30  # the scan sees the training package
    found = []
    for path in files:
        found += engine_violations(path.read_text(encoding="utf-8"), public, str(path.relative_to(ROOT)))
    assert not found, "Training/ must import only VeloxSegSlicerLib.engine (its __all__):\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    "from VeloxSegSlicerLib.engine.inference.preprocess import normalize",
    "from VeloxSegSlicerLib.engine.inference import preprocess",
    "from VeloxSegSlicerLib.engine import inference",
    "from VeloxSegSlicerLib.engine import errors",
    "from VeloxSegSlicerLib.engine import *",
    "import VeloxSegSlicerLib.engine.inputs.imageio",
    "import VeloxSegSlicerLib.engine.cohort.cli as cli",
    "from VeloxSegSlicerLib import logic",
    "from VeloxSegSlicerLib import engine\nengine.inputs.imageio.read_image('x')",
    "import VeloxSegSlicerLib.engine as e\ne.inference",
    "import VeloxSegSlicerLib.engine\nVeloxSegSlicerLib.engine.cohort.batch",
    "def f():\n    from VeloxSegSlicerLib.engine.inputs.checks import check_finite",
    "import importlib\nimportlib.import_module('VeloxSegSlicerLib.engine.inference.manifest')",
])
def test_the_scan_finds_an_engine_sub_module(source):
    assert engine_violations(source, public_names())


@pytest.mark.parametrize("source", [
    "from VeloxSegSlicerLib.engine import normalize, InputError, load_model",
    "def f():\n    from VeloxSegSlicerLib.engine import segment_study",
    "from VeloxSegSlicerLib import engine\nengine.read_image('x')",
    "import VeloxSegSlicerLib.engine\nVeloxSegSlicerLib.engine.read_image('x')",
    "from .engine import anything  # a relative import is the training package's own",
])
def test_the_scan_accepts_the_public_api(source):
    assert engine_violations(source, public_names()) == []


def _part(path: Path) -> str:
    relative = path.relative_to(ENGINE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_engine_parts_import_one_way():
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        part = _part(path)
        if part not in ALLOWED:
            continue  # __init__ and __main__ gather the parts
        inside = len(path.relative_to(ENGINE).parts) - 1  # 1 in a sub-package, 0 at the engine's top level
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0:
                if (node.module or "").startswith(PACKAGE):
                    found.append(f"{where}:{node.lineno}: absolute import of {node.module} inside the engine")
                continue
            above = node.level - inside  # 0: its own sub-package, 1: the engine's folder, 2+: outside the engine
            if above >= 2:
                found.append(f"{where}:{node.lineno}: relative import from outside the engine")
            elif above == 1:
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                found += [f"{where}:{node.lineno}: {part} imports {target}" for target in targets
                          if target != part and target not in ALLOWED[part]]
    assert not found, "the engine's parts import one way (inputs -> inference -> cohort):\n" + "\n".join(found)


def test_each_engine_module_has_one_path():
    top = sorted(p.name for p in ENGINE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py"]
    assert sorted(p.name for p in ENGINE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(SUB_PACKAGES)
    engine = importlib.import_module(PACKAGE)
    missing = [name for name in engine.__all__ if not hasattr(engine, name)]
    assert not missing
