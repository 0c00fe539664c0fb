#!/usr/bin/env bash
# Set up (idempotently) everything VeloxSeg needs on a fresh Debian/Ubuntu machine:
#   scripts/setup.sh demo   -> inference + headless Slicer core (no torch)
#   scripts/setup.sh all    -> + training (CPU torch), Dask (batch on a cluster), tests and lint tools
# The virtual environment lives in .venv (override with VELOXSEG_VENV).
set -euo pipefail
profile="${1:-all}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VELOXSEG_VENV:-$root/.venv}"

# Debian packages: Mesa EGL for Slicer's offscreen rendering, and what Qt needs for the .ui check.
debs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 fonts-dejavu-core)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "Installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
case "$profile" in
  demo)
    "${pip[@]}" -e "$root[slicer-test]"
    ;;
  all)
    # The CPU wheel first: a looser torch requirement would pull a multi-GB CUDA build.
    "${pip[@]}" torch==2.13.0
    "${pip[@]}" -e "$root[train,slicer-test,dev,cluster]"
    ;;
  *)
    echo "usage: scripts/setup.sh [demo|all]" >&2
    exit 2
    ;;
esac
echo "Environment ready: $venv"
