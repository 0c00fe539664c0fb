"""What the Extensions Index checks, checked here: CMake lists, catalog entry, icon, screenshot, licence,
sample data checksums."""

import hashlib
import json
import re
import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "VeloxSegSlicer"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
RAW_PREFIX = "https://raw.githubusercontent.com/veloxseg/SlicerVeloxSeg/main/"
ACCEPTED_CATEGORIES = {"Segmentation", "Nuclear Medicine", "Quantification"}  # those that fit VeloxSeg


def _cmake_set(text, name):
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.S)
    assert match, f"set({name} ...) missing"
    return match.group(1).strip()


def _cmake_list(text, name):
    return [line.strip() for line in _cmake_set(text, name).splitlines() if line.strip() and
            not line.strip().startswith("#")]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _module_cmake():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    name = _cmake_set(text, "MODULE_NAME")
    expand = lambda items: [i.replace("${MODULE_NAME}", name) for i in items]  # noqa: E731
    return text, name, expand(_cmake_list(text, "MODULE_PYTHON_SCRIPTS")), \
        expand(_cmake_list(text, "MODULE_PYTHON_RESOURCES"))


def test_module_cmake_lists_every_script_and_resource():
    text, name, scripts, resources = _module_cmake()
    assert name == "VeloxSegSlicer"
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and p.name != "CMakeLists.txt"}
    python_files = {p for p in on_disk if p.endswith(".py")}
    assert set(scripts) == python_files, (f"not listed: {sorted(python_files - set(scripts))}; "
                                         f"listed but missing: {sorted(set(scripts) - python_files)}")
    resource_files = on_disk - python_files
    assert resource_files <= set(resources), f"resources not listed: {sorted(resource_files - set(resources))}"
    missing = sorted(set(resources) - on_disk)
    assert not missing, f"listed resources that do not exist: {missing}"
    assert len(scripts) == len(set(scripts)) and len(resources) == len(set(resources))
    for required in ("Resources/Models/veloxseg.onnx", "Resources/Models/veloxseg.json",
                     "Resources/Models/MODEL_CARD.md", "Resources/requirements.txt", f"Resources/UI/{name}.ui",
                     f"Resources/Icons/{name}.png"):
        assert required in resources
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_top_level_cmake():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(VeloxSeg\)", text, re.M)
    assert _cmake_set(text, "EXTENSION_HOMEPAGE") == '"https://github.com/veloxseg/SlicerVeloxSeg"'
    assert _cmake_set(text, "EXTENSION_CATEGORY") == '"Segmentation"'
    assert _cmake_set(text, "EXTENSION_CONTRIBUTORS") == '"VeloxSeg team"'
    assert _cmake_set(text, "EXTENSION_DEPENDS").startswith('"NA"')
    description = _cmake_set(text, "EXTENSION_DESCRIPTION").strip('"')
    assert 1 <= len(re.findall(r"[.!?](\s|$)", description)) <= 2 and len(description) < 300
    assert "add_subdirectory(VeloxSegSlicer)" in text
    assert "Training" not in re.sub(r"#.*", "", text), "Training/ must not be packaged"
    assert not (REPO / "VeloxSegSlicer" / "CMakeLists.txt").read_text().count("Training")


def test_icon_and_screenshot_urls_point_at_repository_pngs():
    text = (REPO / "CMakeLists.txt").read_text()
    icon_url = _cmake_set(text, "EXTENSION_ICONURL").strip('"')
    screenshot_urls = _cmake_set(text, "EXTENSION_SCREENSHOTURLS").strip('"').split()
    assert screenshot_urls
    for url in [icon_url, *screenshot_urls]:
        assert url.startswith(RAW_PREFIX), url
        path = REPO / url[len(RAW_PREFIX):]
        assert path.is_file(), f"{url} -> {path} does not exist"
        width, height = _png_size(path)
        assert width >= 128 and height >= 128
    assert _png_size(REPO / icon_url[len(RAW_PREFIX):]) == (128, 128)
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "VeloxSegSlicer.png") == (128, 128)


def _validate(instance, schema):
    """The subset of JSON Schema draft-07 the catalog schema uses (type, enum, required,
    additionalProperties, items, minimum, maximum); returns a list of problems."""
    types = {"object": dict, "string": str, "array": list, "boolean": bool, "integer": int}
    problems = []

    def check(value, rule, where):
        expected = rule.get("type")
        if expected and not (isinstance(value, types[expected]) and
                             not (expected == "integer" and isinstance(value, bool))):
            problems.append(f"{where}: expected {expected}")
            return
        if "enum" in rule and value not in rule["enum"]:
            problems.append(f"{where}: {value!r} not in {rule['enum']}")
        if "minimum" in rule and value < rule["minimum"] or "maximum" in rule and value > rule["maximum"]:
            problems.append(f"{where}: {value} out of range")
        if expected == "object":
            for key in rule.get("required", []):
                if key not in value:
                    problems.append(f"{where}: missing {key}")
            properties = rule.get("properties", {})
            for key, item in value.items():
                if key in properties:
                    check(item, properties[key], f"{where}.{key}")
                elif rule.get("additionalProperties") is False:
                    problems.append(f"{where}: unknown property {key}")
        if expected == "array" and "items" in rule:
            for index, item in enumerate(value):
                check(item, rule["items"], f"{where}[{index}]")

    check(instance, schema, "$")
    return problems


def test_catalog_entry_is_valid():
    raw = (REPO / "VeloxSeg.json").read_bytes()
    assert b"\r" not in raw, "the Index requires LF line endings"
    entry = json.loads(raw)
    schema = json.loads(SCHEMA.read_text())
    assert entry["$schema"].rstrip("#") == schema["$id"].rstrip("#")
    assert _validate(entry, schema) == []
    # the hand validator must itself reject what the schema rejects
    assert _validate({**entry, "tier": 9, "colour": "red"}, schema)
    assert _validate({k: v for k, v in entry.items() if k != "scm_url"}, schema)
    try:
        import jsonschema
    except ImportError:  # the hand validator above already covers every keyword of this schema
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(entry, schema)

    assert entry["dicom_support_rule"] == "Modality == 'PT'"
    assert entry["scm_url"].startswith("https://github.com/veloxseg/SlicerVeloxSeg")
    assert entry["scm_revision"] == "main"  # a branch, as the Index asks
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert entry["category"] == _cmake_set(cmake, "EXTENSION_CATEGORY").strip('"')
    assert entry["category"] in ACCEPTED_CATEGORIES
    depends = _cmake_set(cmake, "EXTENSION_DEPENDS").split("#")[0].strip().strip('"')
    assert entry.get("build_dependencies", []) == ([] if depends == "NA" else depends.split())
    # extension name = JSON file name = first project(); it must not start with "Slicer"
    assert re.search(r"project\((\w+)\)", cmake).group(1) == "VeloxSeg" == (REPO / "VeloxSeg.json").stem


def test_license():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000  # the full text


def test_requirements_name_onnxruntime_only():
    text = (MODULE_DIR / "Resources" / "requirements.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    requirements = [line for line in lines if line]
    assert requirements == ["onnxruntime>=1.16"]


@pytest.mark.parametrize("file_name,digest", [(f[0], f[3]) for f in
                                              __import__("VeloxSegSlicerLib.sampledata").sampledata.FILES])
def test_sample_data_checksums(file_name, digest):
    path = MODULE_DIR / "Resources" / "SampleData" / file_name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.stat().st_size < 3_000_000  # keep the repository small


def test_python_versions_agree():
    """pyproject.toml's requires-python is the module's and engine's floor (3D Slicer's Python), ruff checks the
    code against it, and the README states it next to the scripts' higher need."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'^requires-python = ">=3\.(\d+)"', pyproject, re.M).group(1)
    assert re.search(rf'^target-version = "py3{floor}"', pyproject, re.M)
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert f"engine run on Python ≥ 3.{floor}" in readme
