#!/usr/bin/env bash
# The main job: set up (inference + headless Slicer core, no torch), then segment the bundled sample
# study with the Slicer module's Logic and write out/demo/{STS_002.seg.nrrd, STS_002_lesions.csv,
# STS_002_overview.png}. Extra arguments go to scripts/demo.py (e.g. --ct CT --pet PET --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" demo
venv="${VELOXSEG_VENV:-$root/.venv}"
export VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow
exec "$venv/bin/python" "$root/scripts/demo.py" "$@"
