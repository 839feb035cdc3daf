"""svi-demo (`make demo`): the whole SVI story at toy scale, measured, on a laptop CPU.

1. From the shipped toy base, fine-tune two LoRAs per seed for the same steps: ERFT (`train_experiment`)
   and plain (`ablation=no_erft`), each a real `svi-train` run (one process per run, two at a time).
2. Roll out `num_clips` clips from held-out toy-world starts with base, plain LoRA and ERFT; every model
   sees the same worlds and the same noise per seed.
3. Measure drift against the world's ground truth and invariants; print the drift table with paired
   intervals; write `summary.json`, `table.md/.csv/.tex` (mean ± std over seeds), per-clip curves
   (`drift_vs_time.png`) and side-by-side mp4s.

    svi-demo                                   # the default (conf/toy/demo.yaml): 3 seeds x (plain, ERFT)
    svi-demo seeds=[0] eval.num_videos=4       # a quick look
    svi-demo "models.erft=['ablation=none','injection.p_clean=0.5']"   # any svi-train override per model
    svi-demo adapters='outputs/x/train/*'      # score finished svi-train runs (a sweep) instead
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import svi.config  # noqa: F401  (registers the typed schemas before composition)
from svi.paths import CONF_DIR

BASE = "base"


def _log(msg: str) -> None:
    tqdm.write(f"[svi-demo] {msg}")


# ------------------------------------------------------------------------------------------------
# 1. fine-tunes
# ------------------------------------------------------------------------------------------------
def model_overrides(cfg: DictConfig) -> dict[str, list[str]]:
    """Each fine-tuned model's `svi-train` overrides, the seed and run folder aside (summary.json records them)."""
    shared = [f"experiment={cfg.train_experiment}", f"trainer.max_steps={cfg.steps}", *cfg.train_overrides]
    base = [f"backbone.path={cfg.base}"] if cfg.base else []
    return {name: [*shared, *overrides, *base] for name, overrides in cfg.models.items()}


def finetune_jobs(cfg: DictConfig, out: Path) -> list[tuple[str, int, list[str], Path]]:
    jobs = []
    per_model = model_overrides(cfg)
    for seed in cfg.seeds:
        for name, overrides in per_model.items():
            run_dir = out / "train" / f"{name}_seed{seed}"
            jobs.append((name, int(seed), [f"seed={seed}", f"hydra.run.dir={run_dir}", *overrides], run_dir))
    return jobs


def _run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides a finished svi-train run was started with (its .hydra/overrides.yaml)."""
    f = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(f)] if f.exists() else []


def adapters_from_runs(pattern: str) -> tuple[dict[tuple[str, int], Path], dict[tuple[str, int], Path]]:
    """Adapters of finished `svi-train` runs (e.g. a multirun): keyed (ablation_name, seed) -> adapter dir,
    plus the run dirs (where each run's metrics.json goes)."""
    import glob

    from svi.metrics.table import _configs_above, _lookup

    adapters, dirs = {}, {}
    for d in sorted(Path(p) for p in glob.glob(pattern)):
        if not (d / "adapter" / "pytorch_lora_weights.safetensors").exists():
            continue
        configs = _configs_above(d)
        key = (str(_lookup(configs, "ablation_name")), int(_lookup(configs, "seed")))
        adapters[key], dirs[key] = d / "adapter", d
    if not adapters:
        raise FileNotFoundError(f"no finished svi-train runs (with adapter/) match {pattern!r}")
    return adapters, dirs


def run_summaries(results: dict, signal_metrics=()) -> dict[tuple[str, int], dict[str, float]]:
    """Per (model, seed): the drift numbers a table row shows (the same as each run's metrics.json), and the
    signal-following metrics (`eval.signal_metrics`, mean over videos)."""
    from svi.toy.evaluate import BACKGROUND, PRIMARY, late_clips

    out = {}
    for seed, r in results.items():
        for name, ev in r.items():
            if name == "ceiling":
                continue
            late = late_clips(ev.per_clip[PRIMARY].shape[1])
            out[(name, int(seed))] = {
                "drift": float(np.nanmean(ev.drift(r["ceiling"]))),
                "background_drift": float(np.nanmean(ev.drift(r["ceiling"], BACKGROUND))),
                "world_rmse_first": float(np.nanmean(ev.per_clip[PRIMARY][:, 0])),
                "bg_rmse_first": float(np.nanmean(ev.per_clip[BACKGROUND][:, 0])),
                "bg_rmse_late": float(np.nanmean(ev.per_clip[BACKGROUND][:, late])),
                "col_shift_late": float(np.nanmean(ev.per_clip["col_shift"][:, late])),
                "objects_late": float(np.nanmean(ev.per_clip["objects"][:, late])),
                "hf_ratio_late": float(np.nanmean(ev.per_clip["hf_ratio"][:, late])),
                **{m: float(np.nanmean(ev.video_values(m))) for m in signal_metrics}}
    return out


TABLE_COLUMNS = ("drift", "background_drift", "world_rmse_first", "bg_rmse_first", "objects_late",
                 "col_shift_late", "hf_ratio_late")


def write_tables(cfg: DictConfig, summaries: dict, run_dirs: dict[tuple[str, int], Path], out: Path) -> Path:
    """`table.md/.csv/.tex` (one row per model, mean ± std over seeds, built by `svi.metrics.table`), and a
    `metrics.json` in each scored `svi-train` run (so `svi-table` over the runs gives the same rows)."""
    from svi.metrics.table import RunRecord, build_table, write_table

    records = [RunRecord(run_dirs.get(key, out), str(cfg.train_experiment), key[0], key[1], values)
               for key, values in summaries.items()]
    for key, values in summaries.items():
        if key in run_dirs:
            (run_dirs[key] / "metrics.json").write_text(json.dumps({"summary": values}, indent=2))
    order = ["base", *cfg.ablation_order, *cfg.models]
    columns = (*TABLE_COLUMNS, *cfg.eval.signal_metrics)
    write_table(build_table(records, columns, row_order=order), out, name="table")
    return out / "table.md"


def finetune_threads(threads: int | None, n_par: int, cpus: int) -> int | None:
    """Torch threads of each fine-tune process (None: torch's default, every core).

    `threads` (the demo's knob for a machine shared with other jobs) caps the fine-tunes as it caps the
    rollouts; otherwise fine-tunes side by side split the cores (small matmuls: one thread per process
    beats two threads in one process) and a lone fine-tune takes them all. Without the cap, two demos or
    a demo beside a training on 2 cores run 4 threads on 2 cores and crawl.
    """
    if threads:
        return max(1, int(threads))
    if n_par > 1:
        return max(1, cpus // n_par)
    return None


def run_finetunes(cfg: DictConfig, out: Path) -> dict[tuple[str, int], Path]:
    """Run every (model, seed) fine-tune; finished runs (adapter present) are reused, so a killed demo resumes."""
    jobs = finetune_jobs(cfg, out)
    todo = [j for j in jobs if not (j[3] / "adapter" / "pytorch_lora_weights.safetensors").exists()]
    if len(todo) < len(jobs):
        _log(f"{len(jobs) - len(todo)} fine-tune(s) already done in {out / 'train'}, reused")
    n_par = max(1, min(int(cfg.parallel_jobs), len(todo) or 1))
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    per_job = finetune_threads(cfg.get("threads"), n_par, os.cpu_count() or 1)
    if per_job is not None:  # an OMP_NUM_THREADS already set by the user wins
        env.setdefault("OMP_NUM_THREADS", str(per_job))

    def one(job):
        name, seed, args, run_dir = job
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "svi-train.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "svi.train", *args], stdout=log, stderr=subprocess.STDOUT,
                                  env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"fine-tune {name} seed {seed} failed (exit {proc.returncode}); "
                               f"see {run_dir / 'svi-train.log'}")
        return job

    t0 = time.time()
    with ThreadPoolExecutor(n_par) as pool, tqdm(total=len(todo), desc="fine-tunes", unit="run") as bar:
        futures = [pool.submit(one, j) for j in todo]
        for f in as_completed(futures):
            name, seed, _, _ = f.result()
            bar.set_postfix_str(f"{name} seed {seed} done")
            bar.update(1)
    if todo:
        _log(f"{len(todo)} fine-tunes of {cfg.steps} steps in {time.time() - t0:.0f} s")
    return {(name, seed): run_dir / "adapter" for name, seed, _, run_dir in jobs}


# ------------------------------------------------------------------------------------------------
# 2 + 3. rollouts and metrics
# ------------------------------------------------------------------------------------------------
def _sampler(cfg: DictConfig, stack):
    from hydra.utils import instantiate

    from svi.sampling.svi_clip import SVIClipSampler

    condition = instantiate(cfg.condition)
    flow = {"shift": cfg.eval.shift, "num_inference_steps": cfg.eval.num_inference_steps}
    return SVIClipSampler(condition, stack=stack, flow=flow, handoff=cfg.eval.handoff, quantize=cfg.eval.quantize,
                          progress=False)


def _eval_world(cfg: DictConfig, condition):
    """The held-out worlds' spec: `eval.world` with the condition's signals on (talk: a voice, dance: a dance)."""
    from svi.toy.clips import ToyWorldSpec
    from svi.toy.signals import signal_world

    return signal_world(ToyWorldSpec(**OmegaConf.to_container(cfg.eval.world, resolve=True)), condition)


def evaluate_all(cfg: DictConfig, adapters: dict[tuple[str, int], Path], out: Path) -> dict:
    from svi.toy.backbone import load_toy_base
    from svi.toy.evaluate import metric_pool

    stack = load_toy_base(cfg.base)
    sampler = _sampler(cfg, stack)
    sampler.condition.attach(stack.transformer)  # talk / dance adapters: zero on the base, trained by the fine-tunes
    base_state = {k: v.clone() for k, v in stack.transformer.state_dict().items()}
    spec = _eval_world(cfg, sampler.condition)
    ev = cfg.eval
    results: dict[int, dict[str, object]] = {}
    videos: dict[int, dict[str, np.ndarray]] = {}
    names = [BASE, *cfg.models]
    t0 = time.time()
    bar = tqdm(total=len(cfg.seeds) * len(names), desc="rollouts", unit="model")
    pool = metric_pool(cfg.eval.get("metric_workers", 1))
    try:
        _rollouts(cfg, stack, sampler, spec, names, adapters, base_state, pool, results, videos, bar)
    finally:
        if pool is not None:
            pool.shutdown()
    bar.close()
    stack.transformer.load_state_dict(base_state)
    _log(f"rollouts of {len(names)} models x {len(cfg.seeds)} seeds x {ev.num_videos} videos x {ev.num_clips} clips "
         f"in {time.time() - t0:.0f} s")
    return {"results": results, "videos": videos, "world": spec}


def _rollouts(cfg, stack, sampler, spec, names, adapters, base_state, pool, results, videos, bar) -> None:
    """Per seed: the held-out worlds, their ground truth and autoencoder ceiling, then every model rolled
    out from the base weights (plus its merged LoRA) and scored; fills `results` and `videos`."""
    from svi.backbones.official import merge_lora, read_lora
    from svi.toy.evaluate import evaluate_videos
    from svi.toy.rollout import autoencoder_round_trip, ground_truth, heldout_worlds, rollout
    from svi.toy.world import render_pose

    ev, F = cfg.eval, int(cfg.eval.num_frames)
    for seed in cfg.seeds:
        worlds = heldout_worlds(spec, int(seed), int(ev.num_videos))
        K = int(sampler.num_motion_frames)
        n_frames = K + int(ev.num_clips) * (F - K)  # K true input frames, then F - K new frames per clip
        truth = ground_truth(worlds, n_frames, spec.height, spec.width)
        ceiling = autoencoder_round_trip(stack, truth, F, K)
        results[seed] = {"ceiling": evaluate_videos(ceiling, worlds, F - K, start=K, pool=pool)}
        videos[seed] = {"ground_truth": truth}
        if spec.dance:  # what drives the sprites, shown beside the videos
            videos[seed] = {"pose": np.stack([render_pose(w, 0, n_frames, spec.height, spec.width) for w in worlds]),
                            **videos[seed]}
        for name in names:
            stack.transformer.load_state_dict(base_state)
            if name != BASE:
                lora = read_lora(adapters[(name, int(seed))])
                merge_lora(stack.transformer, lora, 1.0)
                sampler.condition.load_adapter_tensors(lora.extras)  # the trained audio adapters / pose encoder
            r = rollout(sampler, worlds, int(ev.num_clips), F, noise_seed=int(seed), height=spec.height,
                        width=spec.width, desc=f"{name} seed {seed}", motion_from=ev.get("motion_from", "generated"))
            results[seed][name] = evaluate_videos(r.videos, worlds, r.frames_per_clip, start=K, pool=pool)
            videos[seed][name] = r.videos
            bar.update(1)


# ------------------------------------------------------------------------------------------------
# summary, table, plots, videos
# ------------------------------------------------------------------------------------------------
CURVES = ("world_rmse", "bg_rmse", "objects", "col_shift", "hf_ratio", "pose_err", "ref_dist")


def summarise(cfg: DictConfig, results: dict, timings: dict) -> dict:
    from svi.toy.evaluate import BACKGROUND, LATE_FRACTION, PRIMARY, paired_interval

    names = [BASE, *cfg.models]
    per_seed = {n: [] for n in names}
    drift_per_video = {n: [] for n in names}
    curves = {n: {k: [] for k in CURVES} for n in [*names, "ceiling"]}
    first_clip = {n: [] for n in names}
    first_clip_bg = {n: [] for n in names}
    background = {n: [] for n in names}
    objects = {n: [] for n in names}
    for seed in cfg.seeds:
        r = results[seed]
        for n in names:
            d = r[n].drift(r["ceiling"])
            per_seed[n].append(float(np.nanmean(d)))
            drift_per_video[n].append(d)
            first_clip[n].append(float(np.nanmean(r[n].per_clip[PRIMARY][:, 0])))
            first_clip_bg[n].append(float(np.nanmean(r[n].per_clip[BACKGROUND][:, 0])))
            background[n].append(r[n].drift(r["ceiling"], BACKGROUND))
            objects[n].append(float(np.nanmean(r[n].per_clip["objects"])))
        for n in [*names, "ceiling"]:
            for k in CURVES:
                if k in r[n].per_clip:  # (evaluations that do not measure a curve leave it out)
                    curves[n][k].append(np.nanmean(r[n].per_clip[k], axis=0))
    summary = {
        "metric": f"{PRIMARY}_late_minus_ceiling",
        "metric_definition": (f"full-frame RMSE (8-bit units) to the nearest valid world frame (the true background "
                              f"with each sprite true to shape and colour where it was generated, on its true path "
                              f"if lost), averaged over the last {LATE_FRACTION:.0%} of the clips, minus the same for "
                              f"the ground truth passed through the autoencoder (0 = no drift beyond the autoencoder; "
                              f"positive = worse). Colour shift, blur and lost identity all count"),
        "drift": {k: float(np.mean(v)) for k, v in per_seed.items()},
        "per_seed": per_seed,
        "seeds": list(cfg.seeds),
        "first_clip_world_rmse": {k: float(np.mean(v)) for k, v in first_clip.items()},
        "first_clip_bg_rmse": {k: float(np.mean(v)) for k, v in first_clip_bg.items()},
        # the background alone (bg_rmse, late minus ceiling): blind to lost sprites
        "background_drift": {k: float(np.mean([np.nanmean(d) for d in v])) for k, v in background.items()},
        "background_drift_per_seed": {k: [float(np.nanmean(d)) for d in v] for k, v in background.items()},
        # identity: sprites still present (colour-matched), averaged over all clips and seeds (GT: the sprite count)
        "objects_present_mean": {k: float(np.mean(v)) for k, v in objects.items()},
    }
    plain = next((n for n in ("plain_lora", "no_erft") if n in names), None)
    erft = next((n for n in ("erft", "none") if n in names), None)
    if plain and erft:
        def vs_plain(n: str) -> dict:
            """Paired per-video drift of model n minus plain LoRA: pooled, per seed, ratio of means."""
            return {"pooled": paired_interval(np.concatenate(drift_per_video[n])
                                              - np.concatenate(drift_per_video[plain])),
                    "per_seed": {str(s): paired_interval(drift_per_video[n][i] - drift_per_video[plain][i])
                                 for i, s in enumerate(cfg.seeds)},
                    "ratio": summary["drift"][n] / summary["drift"][plain] if summary["drift"][plain] else None,
                    "better_on_every_seed": all(e < p for e, p in zip(per_seed[n], per_seed[plain]))}

        main = vs_plain(erft)
        summary["paired"] = {"erft_minus_plain": {"pooled": main["pooled"], "per_seed": main["per_seed"]},
                             "background_erft_minus_plain": paired_interval(np.concatenate(background[erft])
                                                                            - np.concatenate(background[plain])),
                             "erft_minus_base": paired_interval(np.concatenate(drift_per_video[erft])
                                                                - np.concatenate(drift_per_video[BASE])),
                             "plain_minus_base": paired_interval(np.concatenate(drift_per_video[plain])
                                                                 - np.concatenate(drift_per_video[BASE]))}
        summary["ratio_erft_over_plain"] = main["ratio"]
        summary["erft_better_on_every_seed"] = main["better_on_every_seed"]
        # every further variant (models.<name>=[...], e.g. a lever) against plain LoRA, the same way
        summary["variants_vs_plain"] = {n: vs_plain(n) for n in names if n not in (BASE, plain, erft)}
    if cfg.eval.signal_metrics:
        summary["signals"] = signal_summary(cfg, results)
    summary["curves"] = {n: {k: np.mean(v, axis=0).round(4).tolist() for k, v in c.items() if v}
                         for n, c in curves.items()}
    if plain and erft:
        summary["paper_picture"] = paper_picture(cfg, results, summary, plain, erft)
    if all(n in names for n in TABLE4_ROWS):
        summary["table4_orderings"] = table4_orderings({n: np.concatenate(drift_per_video[n]) for n in names})
    summary["timings_s"] = timings
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    return summary


def record_models(summary: dict, cfg: DictConfig, dirs: dict) -> None:
    """summary["models"]: how each row was made. Fine-tuned here: its svi-train overrides; evaluated from
    finished runs (`adapters=`): each run's own overrides, per seed."""
    models = {BASE: {"fine_tune": None, "base": cfg.base}}
    if cfg.adapters:
        for (name, seed), run_dir in sorted(dirs.items()):
            models.setdefault(name, {"runs": {}})["runs"][str(seed)] = {"dir": str(run_dir),
                                                                         "overrides": _run_overrides(run_dir)}
    else:
        models.update({n: {"svi_train_overrides": o} for n, o in model_overrides(cfg).items()})
    summary["models"] = models


def paper_picture(cfg: DictConfig, results: dict, summary: dict, plain: str, erft: str) -> dict:
    """The checks that say whether the demo shows the paper's picture (experiments/toy_demo): a base that is a
    real short-clip generator, and an ERFT model whose video stays intact where plain LoRA's decays. Each entry:
    the value(s), the target, and whether it is met."""
    from svi.toy.evaluate import PRIMARY, paired_interval

    curves, seeds = summary["curves"], list(cfg.seeds)
    base_first = curves[BASE][PRIMARY][0] / curves["ceiling"][PRIMARY][0]
    base_objects = curves[BASE]["objects"][0]
    last_over_first = curves[erft][PRIMARY][-1] / curves[erft][PRIMARY][0]
    ratios = [e / p if p else float("nan") for e, p in zip(summary["per_seed"][erft], summary["per_seed"][plain])]
    per_seed = summary["paired"]["erft_minus_plain"]["per_seed"]
    objects_all = (summary["objects_present_mean"][erft], summary["objects_present_mean"][plain])
    objects_last = (curves[erft]["objects"][-1], curves[plain]["objects"][-1])
    first = paired_interval(np.concatenate([results[s][erft].per_clip[PRIMARY][:, 0]
                                            - results[s][plain].per_clip[PRIMARY][:, 0] for s in seeds]))
    return {
        "base_first_clip_over_ceiling": {"value": base_first, "target": "<= 1.3", "met": base_first <= 1.3},
        "base_objects_first_clip": {"value": base_objects, "target": ">= 1.9 of 2", "met": base_objects >= 1.9},
        "erft_last_clip_over_first_clip": {"value": last_over_first, "target": "<= 1.5",
                                           "met": last_over_first <= 1.5},
        "erft_over_plain_per_seed": {"value": ratios, "target": "<= 0.5 on every seed, paired interval below 0",
                                     "met": all(r <= 0.5 for r in ratios)
                                     and all(per_seed[str(s)]["high"] < 0 for s in seeds)},
        "objects_all_clips_erft_vs_plain": {"value": list(objects_all), "target": "ERFT >= plain",
                                            "met": objects_all[0] >= objects_all[1]},
        "objects_last_clip_erft_vs_plain": {"value": list(objects_last), "target": "ERFT >= plain",
                                            "met": objects_last[0] >= objects_last[1]},
        "first_clip_erft_minus_plain": {"value": first, "target": "not worse: interval reaches 0 or below",
                                        "met": bool(first["low"] <= 0)},
    }


#: the rows of the paper's Table 4 as `ablation=` names (the toy ablation's adapters are named by them)
TABLE4_ROWS = ("none", "no_img", "no_noi", "no_vid", BASE)


def table4_orderings(drift: dict[str, np.ndarray]) -> dict:
    """The paper's four Table 4 orderings, tested on per-video drift (paired over the same worlds and noise;
    lower drift is better). A row's *cost* is its drift minus full ERFT's (`none`)."""
    from svi.toy.evaluate import paired_interval

    def iv(a: str, b: str) -> dict:
        return paired_interval(drift[a] - drift[b])

    cost = {n: iv(n, "none") for n in ("no_img", "no_noi", "no_vid")}
    img_vs = {n: iv("no_img", n) for n in ("no_noi", "no_vid")}
    vs_base = {n: iv(n, BASE) for n in ("none", "no_img", "no_noi", "no_vid")}
    base_drift = float(np.nanmean(drift[BASE]))
    return {
        "full_is_best": {
            "rule": "every ablation drifts more than full ERFT: each cost's interval above 0",
            "intervals": {f"{n} - none": c for n, c in cost.items()},
            "holds": all(c["low"] > 0 for c in cost.values())},
        "dropping_img_costs_most": {
            "rule": "w/o E_img drifts more than w/o E_noi and w/o E_vid: both intervals above 0",
            "intervals": {f"no_img - {n}": c for n, c in img_vs.items()},
            "holds": all(c["low"] > 0 for c in img_vs.values())},
        "dropping_noi_or_vid_costs_little": {
            "rule": "the cost of w/o E_noi and of w/o E_vid is under half the cost of w/o E_img (means), or its "
                    "interval includes 0",
            "intervals": {f"{n} - none": cost[n] for n in ("no_img", "no_noi", "no_vid")},
            "holds": all(cost[n]["mean"] < 0.5 * cost["no_img"]["mean"] or cost[n]["low"] <= 0 <= cost[n]["high"]
                         for n in ("no_noi", "no_vid"))},
        "every_variant_far_above_base": {
            "rule": "every ERFT row drifts less than the base: interval below 0 and the mean gain at least 10 % "
                    "of the base's drift",
            "intervals": {f"{n} - base": v for n, v in vs_base.items()},
            "holds": all(v["high"] < 0 and -v["mean"] >= 0.1 * base_drift for v in vs_base.values())},
    }


def table4_table(orderings: dict) -> str:
    lines = ["| paper ordering | holds | paired drift differences (95 % t interval) |", "|---|---|---|"]
    for name, o in orderings.items():
        ivs = "; ".join(f"{k}: {v['mean']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]" for k, v in o["intervals"].items())
        lines.append(f"| {name.replace('_', ' ')} ({o['rule']}) | {'yes' if o['holds'] else 'no'} | {ivs} |")
    return "\n".join(lines)


def paper_picture_table(checks: dict) -> str:
    def fmt(v):
        if isinstance(v, dict):
            return f"{v['mean']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"
        if isinstance(v, list):
            return " / ".join(f"{x:.2f}" for x in v)
        return f"{v:.2f}"

    lines = ["| check | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {k} | {fmt(c['value'])} | {c['target']} | {'yes' if c['met'] else 'no'} |" for k, c in checks.items()]
    return "\n".join(lines)


#: how to read a signal-following metric (`eval.signal_metrics`)
SIGNAL_METRICS = {
    "toy_sync": ("toy sync: correlation of the generated top-sprite size with the sound's loudness, over all "
                 "generated frames", "higher"),
    "toy_sync_early": ("toy sync over the first third of the clips' frames", "higher"),
    "toy_sync_late": ("toy sync over the last third of the clips' frames", "higher"),
    "pose_err": ("toy pose error: px from the generated sprite centres to the positions the pose video gives "
                 "(present sprites only)", "lower"),
    "objects": ("sprites present (of 2)", "higher"),
    "psnr_gt": ("PSNR (dB) against the ground-truth video", "higher"),
}


def _defined_mean(values) -> float:
    """Mean over the finite values; nan (no warning) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def signal_summary(cfg: DictConfig, results: dict) -> dict:
    """Per signal metric: each model's mean (over seeds of the per-seed video means; the ceiling is the
    ground truth through the autoencoder) and paired per-video intervals between the models."""
    from svi.toy.evaluate import paired_interval

    names = [BASE, *cfg.models, "ceiling"]
    plain = next((n for n in ("plain_lora", "no_erft") if n in names), None)
    erft = next((n for n in ("erft", "none") if n in names), None)
    pairs = [(a, b) for a, b in ((erft, plain), (erft, BASE), (plain, BASE)) if a and b]
    out = {}
    for metric in cfg.eval.signal_metrics:
        if metric not in SIGNAL_METRICS:
            raise ValueError(f"eval.signal_metrics: unknown metric {metric!r}; choose from {list(SIGNAL_METRICS)}")
        values = {n: [results[s][n].video_values(metric) for s in cfg.seeds] for n in names}
        out[metric] = {
            "definition": SIGNAL_METRICS[metric][0], "better": SIGNAL_METRICS[metric][1],
            # pooled over the videos where the metric is defined (a sync needs a sprite that survives);
            # n says how many those are
            "mean": {n: _defined_mean(np.concatenate(vs)) for n, vs in values.items()},
            "n": {n: int(np.isfinite(np.concatenate(vs)).sum()) for n, vs in values.items()},
            "per_seed": {n: [_defined_mean(v) for v in vs] for n, vs in values.items()},
            "paired": {f"{a}_minus_{b}": paired_interval(np.concatenate(values[a]) - np.concatenate(values[b]))
                       for a, b in pairs}}
    return out


def signal_table(signals: dict) -> str:
    """The signal-following metrics: one row per model, then the paired differences."""
    metrics = list(signals)
    names = list(signals[metrics[0]]["mean"])
    lines = ["| model | " + " | ".join(f"{m} ({signals[m]['better']} is better)" for m in metrics) + " |",
             "|" + "---|" * (1 + len(metrics))]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{signals[m]['mean'][n]:.3f} (n = {signals[m]['n'][n]})"
                                              if "n" in signals[m] else f"{signals[m]['mean'][n]:.3f}"
                                              for m in metrics) + " |")
    lines.append("")
    lines.append("paired per video (95% t interval):")
    for m in metrics:
        for pair, iv in signals[m]["paired"].items():
            lines.append(f"  {m} {pair.replace('_minus_', ' - ')}: {iv['mean']:+.3f} [{iv['low']:+.3f}, "
                         f"{iv['high']:+.3f}] (n = {iv['n']})")
    return "\n".join(lines)


def drift_table(summary: dict) -> str:
    names = list(summary["drift"])
    seeds = summary["seeds"]
    objects = summary.get("objects_present_mean", {})
    head = ("| model | drift (mean) | " + " | ".join(f"seed {s}" for s in seeds)
            + " | first-clip world RMSE | background drift | objects present (all clips) |")
    lines = [head, "|" + "---|" * (5 + len(seeds))]
    for n in names:
        lines.append(f"| {n} | {summary['drift'][n]:.2f} | " + " | ".join(f"{v:.2f}" for v in summary["per_seed"][n])
                     + f" | {summary['first_clip_world_rmse'][n]:.2f} | {summary['background_drift'][n]:.2f}"
                     + f" | {objects.get(n, float('nan')):.2f} |")
    if "paired" in summary:
        p = summary["paired"]["erft_minus_plain"]
        lines.append("")
        lines.append("paired ERFT - plain LoRA (per video; 95% t interval; negative = ERFT drifts less):")
        for s, iv in p["per_seed"].items():
            lines.append(f"  seed {s}: {iv['mean']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]  "
                         f"({iv['better']}/{iv['n']} videos better)")
        iv = p["pooled"]
        lines.append(f"  pooled: {iv['mean']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]  "
                     f"({iv['better']}/{iv['n']} videos better)")
        if summary.get("ratio_erft_over_plain") is not None:
            lines.append(f"  ratio ERFT / plain drift: {summary['ratio_erft_over_plain']:.2f} "
                         f"(target <= 0.5); ERFT better on every seed: {summary['erft_better_on_every_seed']}")
    if "paired" in summary:
        iv = summary["paired"]["background_erft_minus_plain"]
        lines.append(f"  background only (bg RMSE drift), ERFT - plain: {iv['mean']:+.2f} [{iv['low']:+.2f}, "
                     f"{iv['high']:+.2f}]")
    for n, v in summary.get("variants_vs_plain", {}).items():
        iv = v["pooled"]
        lines.append(f"  {n} - plain LoRA, pooled: {iv['mean']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]  "
                     f"({iv['better']}/{iv['n']} videos better); ratio {v['ratio']:.2f}; "
                     f"better on every seed: {v['better_on_every_seed']}")
    if summary.get("signals"):
        lines += ["", "Following the signal:", signal_table(summary["signals"])]
    if summary.get("table4_orderings"):
        lines += ["", "Paper Table 4 orderings (intervals: first row minus second, per video):",
                  table4_table(summary["table4_orderings"])]
    if summary.get("paper_picture"):
        lines += ["", "The paper's picture (experiments/toy_demo says what each check means):",
                  paper_picture_table(summary["paper_picture"])]
    return "\n".join(lines)


def plot_curves(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"world_rmse": "RMSE to the nearest valid world frame (primary)",
              "bg_rmse": "background RMSE (8-bit) - lower is better", "col_shift": "background colour shift (8-bit)",
              "objects": "objects present (of 2)", "hf_ratio": "background sharpness (Laplacian ratio, 1 = true)",
              "pose_err": "sprite lag: found sprites' distance to their true path (px)",
              "ref_dist": "found sprites' distance to where the reference frame has them (px)"}
    keys = [k for k in CURVES if all(k in c for c in summary["curves"].values())]  # runs written before a curve existed
    fig, axes = plt.subplots(2, 4, figsize=(19, 7), sharex=True)
    for ax, key in zip(axes.flat, keys):
        for name, c in summary["curves"].items():
            style = dict(color="0.5", ls="--", lw=1) if name == "ceiling" else dict(lw=1.8)
            ax.plot(np.arange(len(c[key])), c[key], label="autoencoder ceiling" if name == "ceiling" else name, **style)
        ax.set_title(labels[key], fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("clip")
    for spare in axes.flat[len(keys):]:
        spare.axis("off")
    axes.flat[-1].legend(*axes[0, 0].get_legend_handles_labels(), loc="center", fontsize=10)  # the last panel
    fig.suptitle(f"drift over time (mean over seeds {summary['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frame_clips(num_clips: int, every: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128)) -> list[int]:
    """The clips a frames strip shows: `every` below `num_clips`, then the last one."""
    return sorted({c for c in every if c < num_clips} | {num_clips - 1})


def strip_frames(videos: dict[str, np.ndarray], num_motion: int, frames_per_clip: int, clips: list[int],
                 num_videos: int = 2) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(rows, len(clips), H, W, 3) uint8: per video (the first `num_videos`) and model (`videos`: name -> uint8
    (B, N, H, W, 3)), the last frame each of `clips` wrote (frame K + (c + 1)(F - K) - 1); and the rows'
    (video, name)."""
    B = next(iter(videos.values())).shape[0]
    rows = [(v, n) for v in range(min(num_videos, B)) for n in videos]
    idx = [num_motion + (c + 1) * frames_per_clip - 1 for c in clips]
    return np.stack([videos[n][v, idx] for v, n in rows]), rows


def plot_frames(videos: dict[str, np.ndarray], num_motion: int, frames_per_clip: int, path: Path,
                num_videos: int = 2, seed: int = 0) -> Path | None:
    """A still of what the drift curves measure: for the first `num_videos` videos, one row per model
    (`videos`: name -> uint8 (B, N, H, W, 3), the ground truth first), one column per clip (`frame_clips`),
    each the last frame that clip wrote. None when there is nothing to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not videos:
        return None
    N = next(iter(videos.values())).shape[1]
    clips = frame_clips((N - num_motion) // frames_per_clip)
    strip, rows = strip_frames(videos, num_motion, frames_per_clip, clips, num_videos)
    first = next(iter(videos))
    fig, axes = plt.subplots(len(rows), len(clips), figsize=(1.1 * len(clips) + 1.2, 1.1 * len(rows)), squeeze=False)
    for r, (v, name) in enumerate(rows):
        for j, c in enumerate(clips):
            ax = axes[r, j]
            ax.imshow(strip[r, j], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"clip {c}", fontsize=9)
            if j == 0:
                label = name.replace("_", " ")
                ax.set_ylabel(f"video {v}\n{label}" if name == first else label, fontsize=8, rotation=0,
                              ha="right", va="center")
    fig.suptitle(f"the last frame of each clip (seed {seed}'s first videos)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_signals(cfg: DictConfig, results: dict, path: Path) -> Path | None:
    """How well each model follows the signal over time: per clip, the pose error and PSNR (mean over seeds and
    videos), and in a voiced world the top sprite's size against the true size in the video of the first seed
    where it survives longest. None: nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [BASE, *cfg.models, "ceiling"]
    first = results[cfg.seeds[0]]
    panels = [m for m in ("pose_err", "psnr_gt") if m in cfg.eval.signal_metrics]
    voiced = bool(np.isfinite(first[BASE].per_clip["size_true"]).any())
    if not panels and not voiced:
        return None
    fig, axes = plt.subplots(1, len(panels) + voiced, figsize=(5.5 * (len(panels) + voiced), 4), squeeze=False)
    for ax, m in zip(axes[0], panels):
        for n in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                curve = np.nanmean([np.nanmean(results[s][n].per_clip[m], axis=0) for s in cfg.seeds], axis=0)
            style = dict(color="0.5", ls="--", lw=1) if n == "ceiling" else dict(lw=1.8)
            ax.plot(curve, label="autoencoder ceiling" if n == "ceiling" else n, **style)
        ax.set_title(SIGNAL_METRICS[m][0].split(":")[0] + f" ({SIGNAL_METRICS[m][1]} is better)", fontsize=10)
        ax.set_xlabel("clip")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if voiced:  # the video whose top sprite survives longest across the models
        ax = axes[0, -1]
        v = int(np.argmax(sum(np.isfinite(first[n].per_clip["size"]).sum(axis=1) for n in names[:-1])))
        ax.plot(first[BASE].per_clip["size_true"][v], color="k", lw=2.5, label="true (follows the sound)")
        for n in names[:-1]:
            ax.plot(first[n].per_clip["size"][v], lw=1.5, marker=".", label=n)
        ax.set_title(f"top sprite half-extent (px), video {v} of seed {cfg.seeds[0]}, per clip\n"
                     f"(gaps: the sprite is lost)", fontsize=10)
        ax.set_xlabel("clip")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fps(cfg: DictConfig) -> float:
    """The frame rate the side-by-side videos play at: the condition's (talk / dance), else the toy world's 16."""
    return float(cfg.condition.get("frame_rate") or 16)


def add_soundtracks(cfg: DictConfig, spec, mp4s: list[Path]) -> None:
    """Side-by-side videos of a voiced world carry the world's sound (muxed, the video stream copied)."""
    import soundfile

    from svi.sampling.media import mux_audio
    from svi.toy.rollout import heldout_worlds
    from svi.toy.world import SAMPLE_RATE, voice_samples

    worlds = heldout_worlds(spec, int(cfg.seeds[0]), len(mp4s))
    for world, mp4 in zip(worlds, mp4s):
        wav = mp4.with_suffix(".wav")
        frames = cfg.condition.num_motion_frames + cfg.eval.num_clips * (cfg.eval.num_frames
                                                                          - cfg.condition.num_motion_frames)
        soundfile.write(wav, voice_samples(world, 0, frames, _fps(cfg)), SAMPLE_RATE, subtype="PCM_16")
        mux_audio(mp4, wav)
        wav.unlink()


def write_side_by_side(videos: dict[str, np.ndarray], folder: Path, num: int, scale: int = 4, fps: float = 16) -> list[Path]:
    """One mp4 per video: ground truth | base | plain | ERFT, upscaled (nearest) for viewing."""
    from svi.sampling.media import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    names = list(videos)
    paths = []
    for i in range(min(num, len(videos[names[0]]))):
        tiles = []
        for n in names:
            v = videos[n][i]
            v = v.repeat(scale, axis=1).repeat(scale, axis=2)
            v[:, :, -2:] = 255  # a thin separator
            tiles.append(v)
        path = folder / f"video{i:02d}_{'_'.join(names)}.mp4"
        write_mp4(path, np.concatenate(tiles, axis=2), fps=fps)
        paths.append(path)
    return paths


def save_per_clip(results: dict, path: Path) -> Path:
    """Every per-video, per-clip metric as `seed<s>/<model>/<metric>` -> (videos, clips) arrays, so drift
    can be re-read for any prefix of the rollout (clip c's noise does not depend on the rollout length)."""
    arrays = {f"seed{seed}/{name}/{k}": v for seed, r in results.items() for name, ev in r.items()
              for k, v in ev.per_clip.items()}
    np.savez_compressed(path, **arrays)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def run(cfg: DictConfig) -> dict:
    from svi.toy.rollout import check_motion_from

    check_motion_from(cfg.eval.get("motion_from", "generated"), "eval.motion_from")  # before any fine-tune
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every core by default; fewer when the machine is shared (more torch threads than free cores spin and crawl)
    torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else max(1, os.cpu_count() or 1))
    t0 = time.time()
    _log(f"output: {out}")
    dirs = {}
    if cfg.adapters:  # evaluate finished runs (experiments/toy_ablation) instead of fine-tuning here
        adapters, dirs = adapters_from_runs(cfg.adapters)
        names = sorted({k[0] for k in adapters}, key=lambda n: list(cfg.ablation_order).index(n)
                       if n in cfg.ablation_order else 99)
        OmegaConf.set_struct(cfg, False)
        cfg.models = {n: [] for n in names}
        cfg.seeds = sorted({k[1] for k in adapters})
    else:
        adapters = run_finetunes(cfg, out)
        dirs = {key: path.parent for key, path in adapters.items()}
    t_train = time.time() - t0
    evald = evaluate_all(cfg, adapters, out)
    table_file = write_tables(cfg, run_summaries(evald["results"], cfg.eval.signal_metrics), dirs, out)
    t_eval = time.time() - t0 - t_train
    summary = summarise(cfg, evald["results"], {"finetune": round(t_train, 1), "rollout_eval": round(t_eval, 1)})
    record_models(summary, cfg, dirs)
    save_per_clip(evald["results"], out / "per_clip.npz")
    first = cfg.seeds[0]
    vids = {k: evald["videos"][first][k] for k in ["pose", "ground_truth", BASE, *cfg.models]
            if k in evald["videos"][first]}
    mp4s = write_side_by_side(vids, out / "videos", int(cfg.num_side_by_side), fps=_fps(cfg))
    if evald["world"].voice:
        add_soundtracks(cfg, evald["world"], mp4s)
    plot = plot_curves(summary, out / "drift_vs_time.png")
    frames = plot_frames({k: v for k, v in vids.items() if k != "pose"}, int(cfg.condition.num_motion_frames),
                         int(cfg.eval.num_frames) - int(cfg.condition.num_motion_frames), out / "frames.png",
                         seed=int(first))
    signal_plot = plot_signals(cfg, evald["results"], out / "signal_vs_time.png")
    summary["timings_s"]["total"] = round(time.time() - t0, 1)
    summary["files"] = {"plot": str(plot), "frames": str(frames), "videos": [str(p) for p in mp4s], "per_clip": str(out / "per_clip.npz"),
                        "table": str(table_file), **({"signal_plot": str(signal_plot)} if signal_plot else {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    table = drift_table(summary)
    (out / "drift_table.md").write_text(table + "\n")
    print(f"\nDrift ({summary['metric']}; positive = worse):\n{table}\n")
    print(f"[svi-demo] summary: {out / 'summary.json'}; plot: {plot}; videos: {out / 'videos'} "
          f"({len(mp4s)} x [{' | '.join(vids)}]); total {summary['timings_s']['total']:.0f} s")
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="toy/demo")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
