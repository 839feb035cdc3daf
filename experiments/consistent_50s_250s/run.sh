#!/usr/bin/env bash
# SVI's consistent-generation table (docs/method.md): the same rollout scored over its first 50 s and over 250 s,
# for SVI-Shot and the Wan 2.1 autoregressive baseline. README.md says what and why.
#   bash experiments/consistent_50s_250s/run.sh             # toy scale, CPU: 5 s vs 25 s (1 s clips)
#   SCALE=paper IMAGE=... PROMPTS=... LORA=svi-shot.safetensors bash experiments/consistent_50s_250s/run.sh
set -euo pipefail
PY=${PY:-python}
SCALE=${SCALE:-toy}
OUT=${OUT:-outputs/experiments/consistent_50s_250s}

if [ "$SCALE" = toy ]; then
  CLIPS=${CLIPS:-25}                                   # 25 clips x 1 s = 25 s (the toy 250 s)
  $PY experiments/toy_input.py --out "$OUT/input" --size 64
  IMAGE=$OUT/input/image.png PROMPTS=$OUT/input/prompt.txt
  if [ -z "${LORA:-}" ]; then                          # a tiny SVI-Shot LoRA, trained here
    $PY -m svi.train experiment=svi_shot debug=tiny hydra.run.dir="$OUT/train"
    LORA=$OUT/train/adapter
  fi
  GEN=(backbone=tiny flow.num_inference_steps="${STEPS:-3}" cfg=1.0 progress=false)
  EVAL=(metrics=toy gt="$OUT/input/scenes.jsonl")
  T1=5s T2=25s
  COLUMNS=${COLUMNS:-"[psnr/at_$T1,psnr/at_$T2,psnr/delta,ssim/at_$T1,ssim/at_$T2,ssim/delta,fd/at_$T1,fd/at_$T2,fd/delta]"}
elif [ "$SCALE" = paper ]; then
  CLIPS=${CLIPS:-50}                                   # 50 clips x 5 s (81 frames, K = 1, 16 fps) = 250 s
  : "${IMAGE:?set IMAGE=}" "${PROMPTS:?set PROMPTS=}" "${LORA:?set LORA= the SVI-Shot LoRA}"
  GEN=()
  EVAL=(metrics=default)                               # needs SVI_DINO_DIR and SVI_CLIP_B32_DIR
  T1=50s T2=250s
  COLUMNS=${COLUMNS:-"[background_consistency/at_$T1,background_consistency/at_$T2,background_consistency/delta,subject_consistency/at_$T1,subject_consistency/at_$T2,subject_consistency/delta]"}
else
  echo "SCALE must be toy or paper, got $SCALE" >&2; exit 2
fi

# One rollout per method; the 50 s column is the first 50 s of the same 250 s rollout.
$PY -m svi.generate "${GEN[@]}" image="$IMAGE" prompts="$PROMPTS" num_clips="$CLIPS" lora.path="$LORA" \
    out="$OUT/runs/svi" resume=true hydra.run.dir="$OUT/runs/svi"
$PY -m svi.generate "${GEN[@]}" sampler=base image="$IMAGE" prompts="$PROMPTS" num_clips="$CLIPS" \
    out="$OUT/runs/base" resume=true hydra.run.dir="$OUT/runs/base"
$PY -m svi.evaluate runs="$OUT/runs/*" "${EVAL[@]}" out="$OUT/compare" hydra.run.dir="$OUT/compare"
$PY -m svi.table runs="$OUT/runs/*" columns="$COLUMNS" label_keys="[sampler.name]" out="$OUT" name=table \
    hydra.run.dir="$OUT/table_log"
