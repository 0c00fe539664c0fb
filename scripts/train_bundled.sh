#!/usr/bin/env bash
# Reproduce the bundled weights end to end on a CPU (or a GPU if present): phantoms, data preparation,
# the training run, the SDKT ablation, evaluation against the threshold baselines, and the ONNX export.
#   IBSI=/path/to/ibsi-sts/cases scripts/train_bundled.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh" all
bin="$root/.venv/bin"
ibsi="${IBSI:-$root/../shared/data/ibsi-sts/cases}"

"$bin/veloxseg-train" synth --out work-data/synth --count 60 --seed 0 --workers 2
"$bin/veloxseg-train" prepare --out work-data/prep --synthetic work-data/synth --cases "$ibsi" \
    --val-fraction 0.1 --test-fraction 0.15 --seed 0 --workers 2
# stage 1 (500 steps from random weights), then stage 2 (from stage 1's weights, hard-negative crops,
# jittered crop centres)
"$bin/veloxseg-train" train --config Training/configs/bundled.toml
"$bin/veloxseg-train" train --config Training/configs/bundled_stage2.toml
# the SDKT ablation: the same short run with and without the Gram term, side by side
"$bin/veloxseg-train" train --config Training/configs/ablation_sdkt.toml &
"$bin/veloxseg-train" train --config Training/configs/ablation_no_sdkt.toml
wait
for run in ablation_sdkt ablation_no_sdkt; do
  "$bin/veloxseg-train" evaluate --model "work-data/runs/$run/checkpoints/last.pt" --cases work-data/prep \
      --split test --out "work-data/eval/$run"
done
"$bin/veloxseg-train" export work-data/runs/bundled_stage2/checkpoints/last.pt \
    --out VeloxSegSlicer/Resources/Models/veloxseg.onnx --model-version 0.3.2 \
    --data "60 synthetic whole-body phantoms (seed 0) + 29 IBSI STS cases; split train/val/test per source (seed 0); stage 1 (bundled.toml, 500 steps) then stage 2 (bundled_stage2.toml, 1000 steps, hard-negative crops, centre jitter 0.9)"
# the shipped model itself (ONNX through the inference engine) on the held-out cases
"$bin/veloxseg-train" evaluate --model VeloxSegSlicer/Resources/Models/veloxseg.json --cases work-data/prep \
    --split test --out work-data/eval/bundled_stage2 --threads 0
