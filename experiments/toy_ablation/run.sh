#!/usr/bin/env bash
# Paper Table 4 at toy scale, on the pretrained toy base: full ERFT, w/o E_img, w/o E_noi, w/o E_vid,
# plain LoRA and the base, same fine-tune budget, 3 seeds. README.md says what and why.
#   bash experiments/toy_ablation/run.sh                    # = make table-toy-ablation: base v1, as make demo-v1 (~35 min)
#   K2=1 bash experiments/toy_ablation/run.sh               # make demo's setting: the K = 2 base, toy_shot_k2, 200 steps
#   SEEDS=0 STEPS=300 bash experiments/toy_ablation/run.sh  # a quicker look
set -euo pipefail
PY=${PY:-python}
if [[ -n "${K2:-}" ]]; then  # the K = 2 base: the toy_shot_k2 recipe, evaluated as make demo
    EXPERIMENT=${EXPERIMENT:-toy_shot_k2}; DEMO=${DEMO:-toy/demo}; STEPS=${STEPS:-200}
    OUT=${OUT:-outputs/experiments/toy_ablation_k2}
fi
EXPERIMENT=${EXPERIMENT:-toy_shot}      # the fine-tune recipe (conf/experiment/)
DEMO=${DEMO:-toy/demo_v1}               # the svi-demo config that rolls out and scores (same base and K)
OUT=${OUT:-outputs/experiments/toy_ablation}
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-600}
ABLATIONS=${ABLATIONS:-none,no_img,no_noi,no_vid,no_erft}
JOBS=${JOBS:-2}
q() { printf "'%s'" "$1"; }   # quote a path for Hydra: sweep job folders contain '=' and ','

# 1. One Hydra multirun: every ablation x seed fine-tunes the same toy base for the same steps
#    (joblib launcher, JOBS runs side by side, one thread each). Each job exports its LoRA to <job>/adapter.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $PY -m svi.train -m experiment="$EXPERIMENT" ablation="$ABLATIONS" seed="$SEEDS" \
    trainer.max_steps="$STEPS" hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$(q "$OUT/train")"

# 2. Roll out every LoRA and the base on each seed's held-out worlds (same worlds and noise for every row),
#    write metrics.json into each run and the table (one row per ablation, mean +- std over seeds):
#    $OUT/eval/table.md (.csv, .tex) and the drift table with paired intervals, $OUT/eval/drift_table.md.
$PY -m svi.toy.demo --config-name "$DEMO" adapters="$(q "$OUT/train/*")" hydra.run.dir="$(q "$OUT/eval")"
