#!/usr/bin/env bash
# SVI paper Table 4 (ERFT ablation): train the full method and one run without each error type, generate
# a long video with each LoRA and with the base model, evaluate, tabulate. README.md says what and why.
#   bash experiments/ablation_table4/run.sh                 # toy scale, CPU, minutes
#   SCALE=paper IMAGE=... PROMPTS=... TRAIN_ARGS="data=folders data.root=..." bash experiments/ablation_table4/run.sh
set -euo pipefail
PY=${PY:-python}
SCALE=${SCALE:-toy}
OUT=${OUT:-outputs/experiments/ablation_table4}
ABLATIONS=${ABLATIONS:-none,no_img,no_noi,no_vid}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"

if [ "$SCALE" = toy ]; then
  CLIPS=${CLIPS:-12}
  $PY experiments/toy_input.py --out "$OUT/input" --size 64
  IMAGE=$OUT/input/image.png PROMPTS=$OUT/input/prompt.txt
  TRAIN=(experiment=svi_shot debug=tiny)
  GEN=(backbone=tiny flow.num_inference_steps="${STEPS:-3}" cfg=1.0 progress=false)
  EVAL=(metrics=toy gt="'$OUT/input/scenes.jsonl'")
  COLUMNS=${COLUMNS:-"[psnr,ssim,colour_de,fd,seam_ratio,psnr/first_last,fd/first_last]"}
elif [ "$SCALE" = paper ]; then
  CLIPS=${CLIPS:-50}                                   # 50 clips x 5 s = 250 s
  : "${IMAGE:?set IMAGE= the first frame of a benchmark video}" "${PROMPTS:?set PROMPTS= its prompt file}"
  TRAIN=(experiment=svi_shot)
  GEN=()
  EVAL=(metrics=default)                               # needs SVI_DINO_DIR, SVI_CLIP_B32_DIR, SVI_CLIP_L14_DIR, SVI_LAION_HEAD
  COLUMNS=${COLUMNS:-"[background_consistency,subject_consistency,aesthetic]"}
else
  echo "SCALE must be toy or paper, got $SCALE" >&2; exit 2
fi

q() { printf "'%s'" "$1"; }   # quote a path for Hydra: sweep job folders contain '=' and ','

# 1. One training run per ablation (a Hydra multirun; every job exports its LoRA to <job>/adapter).
#    Skipped when every ablation already has an adapter (RETRAIN=1 trains again).
n_adapters=$(ls "$OUT"/runs/*/adapter/pytorch_lora_weights.safetensors 2>/dev/null | wc -l)
if [ -n "${RETRAIN:-}" ] || [ "$n_adapters" -lt "$(tr ',' '\n' <<< "$ABLATIONS" | wc -l)" ]; then
  $PY -m svi.train -m "${TRAIN[@]}" ablation="$ABLATIONS" "${TRAIN_ARGS[@]}" hydra.sweep.dir="$(q "$OUT/runs")"
fi

# 2. A long video per LoRA, and the base model's (Wan 2.1 autoregressive, no LoRA, stock condition).
for job in "$OUT"/runs/*/; do
  [ -f "$job/adapter/pytorch_lora_weights.safetensors" ] || continue
  $PY -m svi.generate "${GEN[@]}" image="$(q "$IMAGE")" prompts="$(q "$PROMPTS")" num_clips="$CLIPS" \
      lora.path="$(q "$job/adapter")" out="$(q "$job/generate")" resume=true hydra.run.dir="$(q "$job/generate")"
done
$PY -m svi.generate "${GEN[@]}" sampler=base image="$(q "$IMAGE")" prompts="$(q "$PROMPTS")" num_clips="$CLIPS" \
    out="$(q "$OUT/runs/base/generate")" resume=true hydra.run.dir="$(q "$OUT/runs/base/generate")"

# 3. Metrics of every video (+ one curve per run in $OUT/compare/plots), then the table.
$PY -m svi.evaluate runs="$(q "$OUT/runs/*/generate")" "${EVAL[@]}" out="$(q "$OUT/compare")" \
    hydra.run.dir="$(q "$OUT/compare")"
$PY -m svi.table runs="$(q "$OUT/runs/*/generate")" columns="$COLUMNS" out="$(q "$OUT")" name=table4 \
    hydra.run.dir="$(q "$OUT/table_log")"
