#!/usr/bin/env bash
# Make (or go on making) the bundled weights: one long training run that every session continues, on this
# machine or a fresh one, from the state kept in the repository.
#   scripts/train_bundled.sh                  # data if missing, then train for TRAIN_MINUTES (default 100)
#   TRAIN_MINUTES=30 EXPORT_VERSION=0.4.1 scripts/train_bundled.sh   # ... then export and evaluate
# Environment: IBSI (the IBSI cases, default ../shared/data/ibsi-sts/cases), TRAIN_MINUTES, EXPORT_VERSION.
#
# The data are deterministic by seed (phantoms, lesions in the IBSI backgrounds, splits), so a fresh machine
# rebuilds exactly the volumes the run was trained on. The run's state (weights, optimiser, schedule,
# position, RNG streams: Training/runs/wholebody/state.pt, a compact state of ~4.6 MB replaced at every stop,
# see Training/veloxseg_train/run_state.py) and its logs (Training/runs/wholebody/; copied next to the bundled
# model, VeloxSegSlicer/Resources/Models/training/, only when a model is exported from the run) are in
# the repository: commit them once per session and the next one resumes where this one stopped (optimiser
# moments rebuilt, the LR ramped up again). Between commits the run lives in work-data/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh" all
bin="$root/.venv/bin"
ibsi="${IBSI:-$root/../shared/data/ibsi-sts/cases}"
minutes="${TRAIN_MINUTES:-100}"
state="Training/runs/wholebody/state.pt"
fingerprint="Training/runs/wholebody/data_fingerprint.json"
logs="Training/runs/wholebody"  # the run's logs and curves, beside its state
release_logs="VeloxSegSlicer/Resources/Models/training"  # those of the bundled model, packaged with it
run="work-data/runs/wholebody"

# 1. data (skipped when present)
if [ ! -f work-data/prep2/dataset.json ]; then
  "$bin/veloxseg-train" synth --out work-data/synth2 --count 160 --seed 0 --workers 2 --force
  "$bin/veloxseg-train" synth --out work-data/realbg --count 66 --seed 0 --backgrounds "$ibsi" \
      --background-split 0.1 0.15 0 --force
  keep=()  # a run in progress keeps its normalisation constants (recorded with its fingerprint)
  [ -f "$fingerprint" ] && keep=(--normalization "$fingerprint")
  "$bin/veloxseg-train" prepare --out work-data/prep2 --synthetic work-data/synth2 --synthetic work-data/realbg \
      --cases "$ibsi" --val-fraction 0.1 --test-fraction 0.15 --seed 0 --workers 2 --force "${keep[@]}"
fi
if [ ! -f work-data/heldout/manifest.json ]; then  # validation only: phantoms of the held-out family
  "$bin/veloxseg-train" synth --out work-data/heldout --count 20 --seed 1000 --family held_out \
      --lesion-free-fraction 0.2 --workers 2 --force
fi

# 2. train: continue this machine's run, else the repository's state, else start. A run resumes only on
#    the data it was trained on (the fingerprint recorded with its state).
if [ -f "$fingerprint" ]; then
  "$bin/python" -m veloxseg_train.data.fingerprint work-data/prep2 --check "$fingerprint"
fi
resume=()
if [ -f "$run/checkpoints/last.pt" ]; then
  resume=(--resume "$run/checkpoints/last.pt")
elif [ -f "$state" ]; then
  mkdir -p "$run/checkpoints"
  cp "$state" "$run/checkpoints/last.pt"
  cp "$logs"/log_*.csv "$run/" 2>/dev/null || true
  resume=(--resume "$run/checkpoints/last.pt")
fi
# glibc hands the step's large activation blocks back to the kernel and faults them in again at the next step
# (a fifth of the run's CPU time in the kernel); keeping them in the heap is faster (benchmarks/train_allocator.py)
tunables="${GLIBC_TUNABLES:-glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184}"
status=0  # stopped early (Ctrl-C, SIGTERM) the trainer saves its state and exits 130: keep that state too
mkdir -p "$run" && touch "$run/.session-start"  # a last.pt older than this holds no training of this session
GLIBC_TUNABLES="$tunables" nice "$bin/veloxseg-train" train --config Training/configs/wholebody.toml "${resume[@]}" \
  --time-budget "$minutes" || status=$?
[ "$run/checkpoints/last.pt" -nt "$run/.session-start" ] || exit "$status"

# 3. keep the compact state and the logs in the repository (replace, never add)
mkdir -p "$(dirname "$state")" "$logs"
"$bin/python" -m veloxseg_train.run_state "$run/checkpoints/last.pt" "$state"
[ -f "$fingerprint" ] || "$bin/python" -m veloxseg_train.data.fingerprint work-data/prep2 --write "$fingerprint"
cp "$run"/log_steps.csv "$run"/log_epochs.csv "$logs/"
cp "$run"/plots/*.png "$logs/" 2>/dev/null || true

# 4. optionally export the weights as the bundled model and evaluate it (real held-out, both phantom families)
if [ -n "${EXPORT_VERSION:-}" ] && [ "$status" -eq 0 ]; then
  mkdir -p "$release_logs"
  cp "$logs"/log_steps.csv "$logs"/log_epochs.csv "$release_logs/"
  cp "$logs"/*.png "$release_logs/" 2>/dev/null || true
  "$bin/veloxseg-train" export "$run/checkpoints/last.pt" --out VeloxSegSlicer/Resources/Models/veloxseg.onnx \
      --model-version "$EXPORT_VERSION" \
      --data "160 phantoms of the training family (seed 0) + 66 IBSI train-split studies with inserted synthetic lesions + 29 IBSI STS studies; split train/val/test per source (seed 0); recipe Training/configs/wholebody.toml"
  model=VeloxSegSlicer/Resources/Models/veloxseg.json
  "$bin/veloxseg-train" evaluate --model "$model" --cases work-data/prep2 --split test --out work-data/eval/test \
      --threads 0
  "$bin/veloxseg-train" evaluate --model "$model" --cases work-data/heldout --out work-data/eval/heldout --threads 0
fi
exit "$status"
