#!/usr/bin/env bash
# The test command: set everything up, lint, and run the whole test suite (CPU only, ~5 minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" all
venv="${VELOXSEG_VENV:-$root/.venv}"
cd "$root"
export VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow QT_QPA_PLATFORM=offscreen
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest -q "$@"
