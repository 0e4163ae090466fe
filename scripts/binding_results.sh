#!/usr/bin/env bash
# Attribute binding on the image side: does a CLIP text tower that can tell a caption from its swapped
# version (NegCLIP's hard negatives) condition a better caption-to-image UNet? Regenerates the figures in
# docs/image/results.md ("Binding: hard negatives for the caption encoder"):
#   * train-clip with train.hard_negatives=true (the cpu preset otherwise; every kind but `order`, which came
#     after the documented run), and its binding scores next to the shipped CLIP's (scripts/clip_binding.py);
#   * the same weights with clip.lexical_states=true (the words' own embeddings after the contextual states;
#     training with the flag gives bit-identical weights, so the folder is copied and the flag set);
#   * two latent UNets at the one-budget comparison of scripts/vq_unclip_results.sh (3,500 steps, cpu preset),
#     side by side, one thread each, and evaluate-image at w = 2 on 100 test + 100 held-out captions x 8.
# Usage: bash scripts/binding_results.sh [out_dir] [steps]     (defaults runs/binding, 3500; ~90 minutes here)
set -euo pipefail
OUT=${1:-runs/binding}
STEPS=${2:-3500}
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
[ -s "$OUT/clip-neg/metrics.json" ] || \
  $BIN/diffusion-lm train-clip clip_preset=cpu train.hard_negatives=true \
    "train.negative_kinds=[relation,colour,size,shape,one_shape,one_colour,one_size,one_position]" \
    train.out_dir="$OUT/clip-neg" > "$OUT/clip-neg.log" 2>&1
if [ ! -s "$OUT/clip-neg-lex/config.json" ]; then
  mkdir -p "$OUT/clip-neg-lex"
  cp "$OUT"/clip-neg/{model.safetensors,manifest.json,metrics.json} "$OUT/clip-neg-lex/"
  $BIN/python - "$OUT" <<'EOF'
import json, sys
src, dst = f"{sys.argv[1]}/clip-neg/config.json", f"{sys.argv[1]}/clip-neg-lex/config.json"
cfg = json.load(open(src))
cfg["lexical_states"] = True
json.dump(cfg, open(dst, "w"), indent=2)
EOF
fi
BUDGET="train.steps=$STEPS train.max_minutes=null train.anneal_by_time=false"
for run in neg neg-lex; do
  [ -s "$OUT/unet-$run/summary.json" ] || $BIN/diffusion-lm train-unet unet_preset=cpu train.clip="$OUT/clip-$run" \
    train.out_dir="$OUT/unet-$run" $BUDGET > "$OUT/unet-$run.log" 2>&1 &
done
wait
for run in neg neg-lex; do
  [ -s "$OUT/eval-$run/report.json" ] || $BIN/diffusion-lm evaluate-image unet="$OUT/unet-$run" clip="$OUT/clip-$run" \
    w="[2]" limit=100 n=8 out_dir="$OUT/eval-$run" > "$OUT/eval-$run.log" 2>&1 &
done
wait
$BIN/python scripts/clip_binding.py clips=shipped,"$OUT/clip-neg" out="$OUT/clip_binding.json"
echo "reports: $OUT/eval-neg/report.md $OUT/eval-neg-lex/report.md"
