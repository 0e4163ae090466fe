#!/usr/bin/env bash
# Train the control classifiers for the shipped Diffusion-LM and ship them in the package (one command).
# The tree classifier (its oracle parses 20k sentences first) runs beside POS then semantic, one thread each:
# about 35 minutes on the 2-core CPU. Logs and runs land in runs/classifiers/<task>.
#   bash scripts/build_control_assets.sh [checkpoint=shipped]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CK=${1:-checkpoint=shipped}
mkdir -p runs/classifiers
t0=$(date +%s)
$BIN/diffusion-lm train-classifier task=tree "$CK" optim.limit=20000 optim.steps=3000 optim.max_minutes=30 \
  optim.threads=1 > runs/classifiers/tree.log 2>&1 &
tree_pid=$!
for task in pos semantic; do
  $BIN/diffusion-lm train-classifier task=$task "$CK" optim.steps=2200 optim.max_minutes=11 optim.threads=1 \
    > runs/classifiers/$task.log 2>&1
  echo "$task: $(( ($(date +%s) - t0) / 60 )) min"
done
wait $tree_pid
echo "tree: $(( ($(date +%s) - t0) / 60 )) min"
for task in pos tree semantic; do
  $BIN/python scripts/ship_model.py kind=classifier run=runs/classifiers/$task
done
