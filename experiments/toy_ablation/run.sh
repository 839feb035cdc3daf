#!/usr/bin/env bash
# Paper Table 4 at toy scale, on a pretrained toy base: full ERFT, w/o E_img, w/o E_noi, w/o E_vid,
# plain LoRA and the base, same fine-tune budget, 3 seeds. README.md says what and why.
#   bash experiments/toy_ablation/run.sh                    # = make table-toy-ablation: make demo's base and recipe
#   V1=1 bash experiments/toy_ablation/run.sh               # the earlier table: base v1, toy_shot, 600 steps, 30 clips
#   SEEDS=0 STEPS=100 bash experiments/toy_ablation/run.sh  # a quicker look
#   BASE=svi/assets/toy_base_k2_36k DEMO=toy/demo_36k OUT=outputs/experiments/toy_ablation_36k bash experiments/toy_ablation/run.sh
#                                                           # the same table on another base (BASE: the fine-tunes' backbone.path)
set -euo pipefail
PY=${PY:-python}
if [[ -n "${V1:-}" ]]; then  # base v1 (K = 1): the toy_shot recipe, evaluated as make demo-v1
    EXPERIMENT=${EXPERIMENT:-toy_shot}; DEMO=${DEMO:-toy/demo_v1}; STEPS=${STEPS:-600}
    OUT=${OUT:-outputs/experiments/toy_ablation_v1}
fi
EXPERIMENT=${EXPERIMENT:-toy_svi_shot}  # the fine-tune recipe (conf/experiment/): make demo's headline
DEMO=${DEMO:-toy/demo}                  # the svi-demo config that rolls out and scores (same base and K)
OUT=${OUT:-outputs/experiments/toy_ablation}
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-200}
ABLATIONS=${ABLATIONS:-none,no_img,no_noi,no_vid,no_erft}
JOBS=${JOBS:-2}
BASE=${BASE:-}                          # another toy base directory for the fine-tunes and the rollouts (default: the recipe's)
q() { printf "'%s'" "$1"; }   # quote a path for Hydra: sweep job folders contain '=' and ','

# 1. One Hydra multirun: every ablation x seed fine-tunes the same toy base for the same steps
#    (joblib launcher, JOBS runs side by side, one thread each). Each job exports its LoRA to <job>/adapter.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $PY -m svi.train -m experiment="$EXPERIMENT" ablation="$ABLATIONS" seed="$SEEDS" \
    trainer.max_steps="$STEPS" ${BASE:+backbone.path="$(q "$(realpath "$BASE")")"} \
    hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$(q "$OUT/train")"

# 2. Roll out every LoRA and the base on each seed's held-out worlds (same worlds and noise for every row),
#    write metrics.json into each run and the table (one row per ablation, mean +- std over seeds):
#    $OUT/eval/table.md (.csv, .tex) and the drift table with paired intervals, $OUT/eval/drift_table.md.
$PY -m svi.toy.demo --config-name "$DEMO" ${BASE:+base="$(q "$(realpath "$BASE")")"} adapters="$(q "$OUT/train/*")" \
    hydra.run.dir="$(q "$OUT/eval")"
