#!/usr/bin/env bash
# The paper's Table 2 with every system, in one command: Diffusion-LM (shipped model and classifiers),
# FUDGE and PPLM (shipped base LM and attribute models) on the same 200 shipped targets a task, scored by the
# same oracles and teacher, with each system's decoding throughput measured in the same run, and the
# uncontrolled samples of the Diffusion-LM and of the base LM as floors.
#   bash scripts/table2.sh [out_dir] [procs]     (default runs/table2, 1 process)
# With procs > 1 each generation runs under `torchrun --nproc_per_node=procs` (diffusion_lm.sharding): the
# ranks share its batches and rank 0 writes exactly the file one process writes, so the table is the same.
# A run has 4 batches of 50 a task, so up to 4 processes share the work (on this 2-core CPU, 2).
# LIMIT=N and BATCH=B (environment) take only the first N targets of each task in batches of B and skip the
# throughput bench: a quick check of the script itself (e.g. LIMIT=12 BATCH=6 with procs 1 and 2).
# LM_ROWS=1 adds the "Diffusion-LM + base LM" rows (docs/experiments/fluency_guidance.md): under control,
# the best of 4 draws by the classifiers' score less B × the base LM's mean NLL (B = 1 on semantic, whose
# classifier scores one fact; 10 where the classifiers sum over positions or spans); uncontrolled, the best
# of 4 draws by the base LM alone. About four times the Diffusion-LM rows' time again. LM_ROWS=semantic,pos
# (a comma-separated list of tasks) adds them for those tasks only. LM_FAST=1 draws those four with the fast
# sampler and small classifiers instead (`sample=fast classifiers=small`, "Diffusion-LM (fast) + base LM"): about
# the plain Diffusion-LM rows' time instead of four times it (docs/experiments/fast_decoding.md).
# CHECKPOINT=<folder or shipped:name> (environment) runs the Diffusion-LM rows with another model (its
# classifiers stay the shipped ones, so it must share their embeddings: optim.freeze_embeddings) and skips
# the throughput bench, which times the shipped model.
# A generation file that already exists is kept (delete it to redo it); the full run from nothing takes
# about 1.5 to 2 hours on the 2-core CPU in one process, most of it Diffusion-LM's tree and spans rows.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${1:-runs/table2}
PROCS=${2:-1}
case $PROCS in ''|*[!0-9]*|0) echo "error: procs must be a whole number >= 1, got '$PROCS'" >&2; exit 2;; esac
TASKS="semantic pos tree spans length compose"
LM_TASKS=$TASKS
if [ -n "${LM_ROWS:-}" ] && [ "$LM_ROWS" != 1 ]; then
  LM_TASKS=${LM_ROWS//,/ }
  for task in $LM_TASKS; do
    case " $TASKS " in *" $task "*) ;;
      *) echo "error: LM_ROWS must be 1 or a comma-separated list of tasks, got '$LM_ROWS'" >&2; exit 2;; esac
  done
  [ -n "${LM_TASKS// /}" ] || { echo "error: LM_ROWS names no task" >&2; exit 2; }
fi
LM_NAME="Diffusion-LM + base LM" LM_FILE=diffusion-lm-lm LM_SAMPLE=()
case ${LM_FAST:-0} in
  0) ;;
  1) LM_NAME="Diffusion-LM (fast) + base LM" LM_FILE=diffusion-lm-fast-lm LM_SAMPLE=(sample=fast classifiers=small);;
  *) echo "error: LM_FAST must be 0 or 1, got '$LM_FAST'" >&2; exit 2;;
esac
LIMIT_ARG=()
if [ -n "${LIMIT:-}" ]; then LIMIT_ARG=(limit="$LIMIT"); fi
if [ -n "${BATCH:-}" ]; then LIMIT_ARG+=(batch_size="$BATCH"); fi
CKPT=(); if [ -n "${CHECKPOINT:-}" ]; then CKPT=(checkpoint="$CHECKPOINT"); fi
mkdir -p "$OUT"
files=()
gen() {  # gen <file> <diffusion-lm command...>: run it with output=<file> unless the file exists
  local file=$1; shift
  files+=("$file")
  if [ -s "$file" ]; then echo "kept    $file"; return; fi
  local t0=$(date +%s) run=("$BIN/diffusion-lm")
  if [ "$PROCS" -gt 1 ]; then  # one thread a process on the CPU, as torchrun sets it
    run=(env OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$BIN/torchrun" --standalone --nproc_per_node="$PROCS" -m diffusion_lm)
  fi
  "${run[@]}" "$@" "${LIMIT_ARG[@]}" output="$file" > "$file.log" 2>&1 || { echo "failed: $* (see $file.log)"; exit 2; }
  echo "wrote   $file ($(( $(date +%s) - t0 )) s)"
}
for task in $TASKS; do
  gen "$OUT/diffusion-lm-$task.jsonl" generate task=$task targets=shipped "${CKPT[@]}"
  gen "$OUT/fudge-$task.jsonl" baseline method=fudge task=$task targets=shipped
done
gen "$OUT/pplm-semantic.jsonl" baseline method=pplm task=semantic targets=shipped
if [ -n "${LM_ROWS:-}" ]; then
  for task in $LM_TASKS; do
    B=10; if [ $task = semantic ]; then B=1; fi
    gen "$OUT/$LM_FILE-$task.jsonl" generate task=$task targets=shipped select=4 lm_rerank=$B \
      "${LM_SAMPLE[@]}" "${CKPT[@]}" "system='$LM_NAME'"
  done
  files+=("$OUT/diffusion-lm-lm-uncontrolled.jsonl")
  if [ ! -s "$OUT/diffusion-lm-lm-uncontrolled.jsonl" ]; then
    $BIN/python scripts/uncontrolled_rows.py output="$OUT/diffusion-lm-lm-uncontrolled.jsonl" ${LIMIT:+n=$LIMIT} "${CKPT[@]}" \
      select=4 lm_rerank=1 "system=Diffusion-LM + base LM (no control)" \
      > "$OUT/diffusion-lm-lm-uncontrolled.jsonl.log" 2>&1 || { echo "failed: LM-guided uncontrolled rows"; exit 2; }
  fi
fi
# the floors: each model's plain samples against the same targets (ctrl by chance, lm of the unsteered model)
files+=("$OUT/diffusion-lm-uncontrolled.jsonl")  # one process: 200 plain samples in 4 batches, a minute
if [ ! -s "$OUT/diffusion-lm-uncontrolled.jsonl" ]; then
  $BIN/python scripts/uncontrolled_rows.py output="$OUT/diffusion-lm-uncontrolled.jsonl" ${LIMIT:+n=$LIMIT} "${CKPT[@]}" \
    > "$OUT/diffusion-lm-uncontrolled.jsonl.log" 2>&1 || { echo "failed: uncontrolled rows"; exit 2; }
fi
for task in $TASKS; do
  gen "$OUT/base-lm-uncontrolled-$task.jsonl" baseline method=fudge fudge.strength=0 task=$task \
    targets=shipped "system='base-lm (no control)'"
done
SPEED=()
if [ -z "${LIMIT:-}" ] && [ -z "${CHECKPOINT:-}" ]; then
  if [ ! -s "$OUT/throughput.json" ]; then
    $BIN/python scripts/bench_control.py sentences=10 out="$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
  fi
  SPEED=(throughput="$OUT/throughput.json")
fi
list=$(IFS=,; echo "${files[*]}")
$BIN/diffusion-lm evaluate "generations=[$list]" "${SPEED[@]}" out_dir="$OUT"
