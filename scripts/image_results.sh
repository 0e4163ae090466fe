#!/usr/bin/env bash
# Every figure of docs/image/results.md from the shipped image models, in one command: the oracle's
# honesty rows, the latent UNet's guidance sweep and its large run at the chosen w, the pixel UNet's
# thresholds at w = 8, inpainting edits, the ControlNet's maps, classifier-free vs CLIP vs attribute
# guidance, and the UNet's training throughput against the matmul.
#   bash scripts/image_results.sh [out_dir] [best_w]      (defaults runs/image-results, 2)
# A report that already exists is kept (delete its folder to redo it). About 1.5 hours on the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${1:-runs/image-results}
BEST=${2:-2}
mkdir -p "$OUT"
step() {  # step <folder> <command...>: run the command unless <folder>/report.json exists
  local dir=$1; shift
  if [ -s "$dir/report.json" ]; then echo "kept    $dir"; return; fi
  local t0=$(date +%s)
  mkdir -p "$dir"
  "$@" > "$dir.log" 2>&1 || { echo "failed: $* (see $dir.log)"; exit 2; }
  echo "wrote   $dir ($(( $(date +%s) - t0 )) s)"
}
$BIN/python scripts/shapes_report.py out="$OUT/shapes_examples.png" > "$OUT/shapes_report.txt"
# the latent UNet: w swept on 50 test and 50 held-out captions x 8, then 200 + 200 captions x 8 at the chosen w
step "$OUT/latent-sweep" $BIN/diffusion-lm evaluate-image w="[0,1,2,4,8]" limit=50 n=8 out_dir="$OUT/latent-sweep"
step "$OUT/latent-best" $BIN/diffusion-lm evaluate-image w="[$BEST]" limit=200 n=8 out_dir="$OUT/latent-best"
# the pixel UNet: dynamic thresholding swept over w; static clipping and none beside it at w = 8
step "$OUT/pixel" $BIN/diffusion-lm evaluate-image unet=shipped:image-unet-pixel w="[0,1,2,4,8]" compare_at="[8]" \
  limit=25 n=4 out_dir="$OUT/pixel"
step "$OUT/inpaint" $BIN/python scripts/inpaint_report.py edits=200 guidance="$BEST" out_dir="$OUT/inpaint"
for r in 3 5; do  # RePaint's resampling: each step taken r times
  step "$OUT/inpaint-r$r" $BIN/python scripts/inpaint_report.py edits=200 guidance="$BEST" resample=$r out_dir="$OUT/inpaint-r$r"
done
step "$OUT/controlnet" $BIN/python scripts/controlnet_report.py controlnet=shipped maps=200 guidance="$BEST" \
  out_dir="$OUT/controlnet"
step "$OUT/guidance" $BIN/python scripts/guidance_report.py clip_model=shipped attributes=shipped captions=40 n=4 \
  out_dir="$OUT/guidance"
step "$OUT/guidance-large" $BIN/python scripts/guidance_report.py clip_model=shipped attributes=shipped captions=40 n=4 \
  cfg=1 strengths=30,100,300 out_dir="$OUT/guidance-large"
$BIN/python scripts/bench_train.py model=unet unet_preset=cpu train.threads=1 steps=5 rounds=3 > "$OUT/bench_unet.txt"
echo "done: $OUT"
