#!/usr/bin/env bash
# The paper's Table 2 with every system, in one command: Diffusion-LM (shipped model and classifiers),
# FUDGE and PPLM (shipped base LM and attribute models) on the same 200 shipped targets a task, scored by the
# same oracles and teacher, with each system's decoding throughput measured in the same run, and the
# uncontrolled samples of the Diffusion-LM and of the base LM as floors.
#   bash scripts/table2.sh [out_dir]        (default runs/table2)
# A generation file that already exists is kept (delete it to redo it); the full run from nothing takes
# about 1.5 to 2 hours on the 2-core CPU, most of it Diffusion-LM's tree and spans rows.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${1:-runs/table2}
mkdir -p "$OUT"
files=()
gen() {  # gen <file> <command...>: run the command with output=<file> unless the file exists
  local file=$1; shift
  files+=("$file")
  if [ -s "$file" ]; then echo "kept    $file"; return; fi
  local t0=$(date +%s)
  "$@" output="$file" > "$file.log" 2>&1 || { echo "failed: $* (see $file.log)"; exit 2; }
  echo "wrote   $file ($(( $(date +%s) - t0 )) s)"
}
for task in semantic pos tree spans length compose; do
  gen "$OUT/diffusion-lm-$task.jsonl" $BIN/diffusion-lm generate task=$task targets=shipped
  gen "$OUT/fudge-$task.jsonl" $BIN/diffusion-lm baseline method=fudge task=$task targets=shipped
done
gen "$OUT/pplm-semantic.jsonl" $BIN/diffusion-lm baseline method=pplm task=semantic targets=shipped
# the floors: each model's plain samples against the same targets (ctrl by chance, lm of the unsteered model)
gen "$OUT/diffusion-lm-uncontrolled.jsonl" $BIN/python scripts/uncontrolled_rows.py
for task in semantic pos tree spans length compose; do
  gen "$OUT/base-lm-uncontrolled-$task.jsonl" $BIN/diffusion-lm baseline method=fudge fudge.strength=0 task=$task \
    targets=shipped "system='base-lm (no control)'"
done
if [ ! -s "$OUT/throughput.json" ]; then
  $BIN/python scripts/bench_control.py sentences=10 out="$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
fi
list=$(IFS=,; echo "${files[*]}")
$BIN/diffusion-lm evaluate "generations=[$list]" throughput="$OUT/throughput.json" out_dir="$OUT"
