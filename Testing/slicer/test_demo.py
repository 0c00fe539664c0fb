"""scripts/demo.py end to end (subprocess, as the README runs it) on the bundled sample study, with the
threshold test model: the segmentation, the CSV and the slice-view overview PNG."""

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

REPO = Path(__file__).resolve().parents[2]


def _read_png(path):
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return pixels.reshape(height, width, -1)


def test_demo_writes_segmentation_table_and_overview(tiny_model, tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    completed = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--model", str(tiny_model),
                                "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(r"STS_002: (1 lesion|[02-9]\d* lesions|1\d+ lesions),", completed.stdout)

    assert (out / "STS_002.seg.nrrd").stat().st_size > 1000
    header = (out / "STS_002.seg.nrrd").read_bytes()[:4000].decode("latin-1")
    assert "Segment0_Name:=Lesion 1" in header and "SCT^108369006^Neoplasm" in header

    with open(out / "STS_002_lesions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["Lesion"] == "Total" and len(rows) >= 2
    # counts and flags are whole numbers (716, 1), not 716.0 and 1.0; the Total row has no flags
    for row in rows[:-1]:
        assert re.fullmatch(r"[1-9]\d*", row["Voxels"]) and row["OnCT"] in ("0", "1"), row
    assert re.fullmatch(r"[1-9]\d*", rows[-1]["Voxels"]) and rows[-1]["OnCT"] == ""
    assert re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", rows[0]["MTV_mL"])  # measurements keep their precision
    # the sarcoma's hottest voxel (SUV 21.7, IBSI summary) is inside the first, largest lesion
    assert float(rows[0]["SUVmax"]) == max(float(r["SUVmax"]) for r in rows[:-1])
    assert abs(float(rows[-1]["SUVmax"]) - 21.68) < 0.01

    pixels = _read_png(out / "STS_002_overview.png")
    assert pixels.shape[:2] == (400, 1200)
    rgb = pixels[..., :3].astype(int)
    # lesion 1 outline colour (0, 0.9, 0.3) and PET-Heat (red > green > blue) are both on screen
    outline = (rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 120)
    heat = (rgb[..., 0] > 150) & (rgb[..., 0] > rgb[..., 1] + 40) & (rgb[..., 1] > rgb[..., 2])
    for third in np.array_split(np.arange(1200), 3):  # in each of the three views
        assert outline[:, third].sum() > 50
        assert heat[:, third].sum() > 200


def _demo_module():
    spec = importlib.util.spec_from_file_location("veloxseg_demo", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_lists_lesions_by_the_cli_rule(tiny_model, tmp_path, monkeypatch):
    """The demo's lesion table follows the rule of `veloxseg segment` (it listed everything from 0 mL before)."""
    from VeloxSegSlicerLib.engine import VeloxSegError
    from VeloxSegSlicerLib.engine.cohort import cli
    from VeloxSegSlicerLib.logic import VeloxSegSlicerLogic

    demo = _demo_module()
    args = demo.parse_args([])
    console = cli.build_parser().parse_args(["segment", "--ct", "c", "--pet", "p", "--out", "o.nii.gz"])
    assert (args.min_lesion_ml, args.min_suv_max) == (console.min_lesion_ml, console.min_suv_max) == (0.1, 2.0)

    used = {}

    def recording_segment(self, ct, pet, **kwargs):  # what the demo asks the Logic for; then stop
        used.update(kwargs)
        raise VeloxSegError("stopped by the test")

    monkeypatch.setattr(VeloxSegSlicerLogic, "segment", recording_segment)
    assert demo.main(["--model", str(tiny_model), "--out", str(tmp_path), "--no-png", "--min-suv-max", "3"]) == 2
    assert (used["minLesionMl"], used["minSuvMax"]) == (0.1, 3.0)


def test_demo_reports_bad_input(tiny_model, tmp_path, capsys):
    """Same script in process (no second interpreter start-up): a CT given as PET is refused with a hint."""
    demo = _demo_module()
    ct = REPO / "VeloxSegSlicer" / "Resources" / "SampleData" / "STS_002_CT.nrrd"
    code = demo.main(["--model", str(tiny_model), "--out", str(tmp_path), "--ct", str(ct), "--pet", str(ct),
                      "--no-png"])
    assert code == 2
    error = capsys.readouterr().err
    assert "looks like a CT" in error and "swapped" in error  # the engine's check, as `veloxseg segment` says
    assert not list(tmp_path.iterdir())  # nothing written
