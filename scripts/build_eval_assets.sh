#!/usr/bin/env bash
# Build the evaluation harness from scratch and ship it in the package:
# the parser oracle (≤ 45 min), the teacher LM, then the control targets (which need the parser).
# Prints the wall time of each step; results land in runs/{parser,teacher,targets}.
#   bash scripts/build_eval_assets.sh            # both models side by side, one thread each
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
t0=$(date +%s)
$BIN/diffusion-lm build-parser parser.threads=1 > runs/build_parser.log 2>&1 &
parser_pid=$!
$BIN/diffusion-lm train-lm train.threads=1 > runs/train_lm.log 2>&1
echo "teacher LM: $(( ($(date +%s) - t0) / 60 )) min"; tail -n 8 runs/train_lm.log
wait $parser_pid
echo "parser: $(( ($(date +%s) - t0) / 60 )) min"; tail -n 8 runs/build_parser.log
$BIN/python scripts/ship_model.py kind=parser
$BIN/python scripts/ship_model.py kind=teacher
t1=$(date +%s)
$BIN/diffusion-lm build-targets out_dir=diffusion_lm/assets/targets
echo "targets: $(( $(date +%s) - t1 )) s"
