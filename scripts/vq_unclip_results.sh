#!/usr/bin/env bash
# The VQ-vs-KL and unCLIP-vs-direct comparisons of docs/image/results.md, trained and measured in one command:
#   * the VQ autoencoder (autoencoder_preset=vq_cpu; the KL one is the shipped model, same sizes and steps);
#   * three latent UNets of the cpu preset with the same budget (3,500 steps each, trained side by side):
#     on the KL latents (the control), on the VQ latents, and unCLIP's decoder on the KL latents;
#   * unCLIP's prior (prior_preset=cpu);
#   * evaluate-image at w = 2 on 100 test + 100 held-out captions x 8 for the two caption UNets, and
#     scripts/unclip_report.py (direct vs unCLIP vs variations, accuracy and diversity) on the same captions.
#   bash scripts/vq_unclip_results.sh [out_dir] [steps]      (defaults runs/vq-unclip, 3500)
# A finished run or report is kept (each trainer resumes; delete a folder to redo it). About 2 hours here.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${1:-runs/vq-unclip}
STEPS=${2:-3500}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
BUDGET="train.steps=$STEPS train.max_minutes=null train.anneal_by_time=false"
[ -s "$OUT/autoencoder-vq/metrics.json" ] || \
  $BIN/diffusion-lm train-autoencoder autoencoder_preset=vq_cpu train.out_dir="$OUT/autoencoder-vq" > "$OUT/autoencoder-vq.log" 2>&1
[ -s "$OUT/prior/metrics.json" ] || \
  $BIN/diffusion-lm train-prior prior_preset=cpu train.out_dir="$OUT/prior" > "$OUT/prior.log" 2>&1
# the three UNets side by side (one thread each), then the evaluations
for run in kl vq decoder; do
  case $run in
    kl) args="unet_preset=cpu" ;;
    vq) args="unet_preset=cpu train.autoencoder=$OUT/autoencoder-vq" ;;
    decoder) args="unet_preset=cpu_decoder" ;;
  esac
  [ -s "$OUT/unet-$run/summary.json" ] || \
    $BIN/diffusion-lm train-unet $args train.out_dir="$OUT/unet-$run" $BUDGET > "$OUT/unet-$run.log" 2>&1 &
done
wait
[ -s "$OUT/eval-kl/report.json" ] || $BIN/diffusion-lm evaluate-image unet="$OUT/unet-kl" w="[2]" limit=100 n=8 \
  out_dir="$OUT/eval-kl" > "$OUT/eval-kl.log" 2>&1 &
[ -s "$OUT/eval-vq/report.json" ] || $BIN/diffusion-lm evaluate-image unet="$OUT/unet-vq" \
  autoencoder="$OUT/autoencoder-vq" w="[2]" limit=100 n=8 out_dir="$OUT/eval-vq" > "$OUT/eval-vq.log" 2>&1 &
wait
[ -s "$OUT/unclip/report.json" ] || $BIN/python scripts/unclip_report.py prior="$OUT/prior" decoder="$OUT/unet-decoder" \
  direct="$OUT/unet-kl" captions=100 n=8 guidance=2 decoder_guidance=2 threads=2 out_dir="$OUT/unclip" > "$OUT/unclip.log" 2>&1
echo "done: $OUT"
