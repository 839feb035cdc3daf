"""The long-video samplers compared at toy scale (experiments/samplers): clip by clip (base, plain LoRA,
SVI's ERFT LoRA), FIFO-Diffusion, MIGA with its ablation, and FIFO / MIGA with the ERFT LoRA merged.

Every model of a seed sees the same held-out worlds (reference = world frame 0, prompt = its caption)
and the same noise streams, so per-video differences are paired. The clip samplers run exactly as in
`svi-demo` (K = 2 motion frames, pixel hand-off); the queue samplers run through
`DiagonalSampler.generate` with windows of `window` latents (the toy base was trained on 2-latent clips
and generates 6-latent clips as well, experiments/samplers). Everything is scored on the video's frames
after the first K, with the toy world's drift metrics and with svi-evaluate's weight-free metrics
(flicker, the motion-smoothness blend proxy, latent self-similarity); learned metrics are computed only
where their weights are configured, else reported unavailable.

    python experiments/samplers/run.py                      # the study (experiments/samplers/README.md)
    python experiments/samplers/run.py seeds=[0] num_videos=2 num_clips=10 memory_lengths=[1]   # a smoke run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from svi.conditions import Condition
from svi.sampling.diagonal import ClipText, DiagonalSampler
from svi.sampling.fifo import FIFOSampler
from svi.sampling.media import quantize_frames
from svi.sampling.miga import MIGASampler
from svi.sampling.svi_clip import SVIClipSampler

K, CLIP_FRAMES = 2, 5  # the K = 2 toy base: motion frames and frames per clip of the clip samplers

# The queue samplers at toy scale, scaled from the released Wan settings (window 21, L_zig 7, m 4, s 10,
# tau_e 10 of 54 at shift 5, judged at k = 10): window 6 latents = 3 groups of 2, one memory latent per
# 2 groups' worth, Stage 2 from sigma ~ 0.5 (k = 9 of 12 at shift 3), judged at sigma ~ 0.94 (k = 2).
FIFO_KNOBS: dict[str, Any] = {"window": 6, "partitions": 2, "lookahead": True}
MIGA_KNOBS: dict[str, Any] = {"window": 6, "group": 2, "memory": 2, "stride": 2, "stage2_steps": 3,
                              "judge_level": 2, "reference_groups": 2, "candidates": 3,
                              "reflect_threshold": 0.06}

# row -> (sampler, LoRA, extra knobs). The MIGA ablation follows the paper: none = neither TTA nor DCE.
ROWS: dict[str, tuple[str, str | None, dict]] = {
    "base": ("clip", None, {}),
    "plain_lora": ("clip", "plain_lora", {}),
    "svi": ("clip", "erft", {}),
    "fifo": ("fifo", None, {}),
    "miga": ("miga", None, {}),
    "miga_none": ("miga", None, {"tta": False, "guidance": False, "reflection": False}),
    "miga_tta": ("miga", None, {"guidance": False, "reflection": False}),
    "miga_dce": ("miga", None, {"tta": False}),
    "svi_fifo": ("fifo", "erft", {}),
    "svi_miga": ("miga", "erft", {}),
}
PAIRS = [("fifo", "base"), ("miga", "fifo"), ("miga", "base"), ("svi", "base"), ("svi", "plain_lora"),
         ("svi_fifo", "fifo"), ("svi_miga", "miga"), ("svi_miga", "svi"), ("miga_none", "fifo"),
         ("miga_tta", "miga_none"), ("miga_dce", "miga_none"), ("miga", "miga_none")]
VIDEO_METRICS = ("flicker", "motion_smoothness", "motion_smoothness_blend", "latent_consistency",
                 "subject_consistency", "background_consistency")


@dataclass
class ComparisonConfig:
    out: str = "outputs/samplers"
    base: str | None = None  # toy base directory; None = the shipped K = 2 base
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_videos: int = 8  # held-out worlds per seed
    num_clips: int = 60  # length: K + num_clips * (5 - K) frames, what the clip samplers make (182)
    steps: int = 12  # denoising steps per latent for every sampler (FIFO: window x partitions)
    shift: float = 3.0  # the toy base's training shift
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    finetune_steps: int = 200  # svi-train experiment=toy_shot_k2, ERFT and plain LoRA per seed
    train_overrides: list[str] = field(default_factory=list)
    parallel_jobs: int = 2
    window_batch: int = 8
    memory_lengths: list[int] = field(default_factory=lambda: [1, 4, 16])  # x the frame count, one video
    memory_rows: list[str] = field(default_factory=lambda: ["svi", "fifo", "miga"])
    threads: int = 1  # torch threads (1: steady timings when other jobs share the cores)


def toy_base_dir(cfg: ComparisonConfig) -> str:
    from svi.config import asset_dir

    return cfg.base or asset_dir("toy_base_k2")


def num_output_frames(cfg: ComparisonConfig) -> int:
    return K + cfg.num_clips * (CLIP_FRAMES - K)


def make_sampler(kind: str, knobs: dict, steps: int, shift: float, window_batch: int = 8):
    """A clip, FIFO or MIGA sampler with the toy settings (no backbone yet)."""
    condition = Condition("shot", num_motion_frames=K, ref_pad_num=-1)
    if kind == "clip":
        return SVIClipSampler(condition, flow={"num_inference_steps": steps, "shift": shift},
                              quantize="round", progress=False)
    if kind == "fifo":
        params = {**FIFO_KNOBS, **knobs}
        if params["window"] * params["partitions"] != steps:
            raise ValueError(f"FIFO's steps are window x partitions = "
                             f"{params['window'] * params['partitions']}, the comparison uses {steps}: "
                             f"change steps or FIFO_KNOBS")
        return FIFOSampler(condition, flow={"shift": shift}, window_batch=window_batch, quantize="round",
                           progress=False, **params)
    if kind == "miga":
        return MIGASampler(condition, flow={"num_inference_steps": steps, "shift": shift},
                           window_batch=window_batch, quantize="round", progress=False,
                           **{**MIGA_KNOBS, **knobs})
    raise ValueError(f"unknown sampler kind {kind!r}")


# ------------------------------------------------------------------------------------------------
# rollouts
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def queue_rollout(sampler: DiagonalSampler, worlds: list, num_frames: int,
                  seed: int) -> tuple[np.ndarray, dict]:
    """Videos uint8 (B, num_frames, H, W, 3) from a FIFO / MIGA sampler, and its counters."""
    from svi.toy.clips import to_tensor
    from svi.toy.world import caption, render

    stack = sampler.stack
    ref = torch.stack([to_tensor(render(w, 0, 1, 32, 32))[:, 0] for w in worlds])  # (B, 3, H, W)
    text = stack.encode_text([caption(w) for w in worlds])
    latents = 1 + -(-(num_frames - 1) // 4)
    run = sampler.make_run(ref, lambda c: ClipText(text, None, 1.0), seed=seed, num_latents=latents,
                           height=32, width=32, num_frames=CLIP_FRAMES, batch=len(worlds))
    state = None
    pieces = []
    for done, state in sampler.latents(run):
        pieces.append(done)
    z = torch.cat(pieces, dim=1).transpose(1, 2)  # (B, C, N, h, w)
    frames = quantize_frames(stack.decode_latents(z), sampler.quantize).numpy()[:, :num_frames]
    counters = {k: int(state[k]) for k in ("judged", "searches", "accepted") if k in state}
    return frames, counters


def video_metrics(videos: np.ndarray, stack, extractors: dict) -> dict[str, np.ndarray]:
    """svi-evaluate's video-level metrics of each video's frames after the first K, (B,) per metric (NaN
    where unavailable), with one-second segments (16 frames)."""
    from svi.metrics import ArrayVideo, VaeLatents, evaluate_video, fixed_segments, metrics_config

    cfg = metrics_config({"include": list(VIDEO_METRICS), "plots": False})
    out = {m: np.full(len(videos), np.nan) for m in VIDEO_METRICS}
    reasons = {}
    for i, v in enumerate(videos):
        video = ArrayVideo(v[K:], fps=16)
        r = evaluate_video(video, fixed_segments(len(video), 16), cfg, latents=VaeLatents(stack),
                           extractors=extractors)
        for m in VIDEO_METRICS:
            out[m][i] = r.video.get(m, np.nan)
        reasons.update(r.unavailable)
    out["_unavailable"] = reasons
    return out


def rollout_rows(cfg: ComparisonConfig, adapters: dict[tuple[str, int], Path], log=print) -> dict:
    """Every row on every seed's worlds: toy drift metrics, video metrics, timings, videos of seed 0."""
    from svi.backbones.official import merge_lora, read_lora
    from svi.metrics import build_extractors, metrics_config
    from svi.toy.backbone import load_toy_base
    from svi.toy.clips import ToyWorldSpec
    from svi.toy.evaluate import evaluate_videos
    from svi.toy.rollout import autoencoder_round_trip, ground_truth, heldout_worlds, rollout

    stack = load_toy_base(toy_base_dir(cfg))
    base_state = {k: v.clone() for k, v in stack.transformer.state_dict().items()}
    spec = ToyWorldSpec(height=32, width=32, min_sprites=2, max_sprites=2, drift=0.0)
    extractors = build_extractors(metrics_config({"include": list(VIDEO_METRICS)}), VIDEO_METRICS)
    frames = num_output_frames(cfg)
    results: dict = {"per_seed": {}, "timing_s": {r: 0.0 for r in cfg.rows}, "counters": {},
                     "unavailable": {}}
    for seed in cfg.seeds:
        worlds = heldout_worlds(spec, int(seed), cfg.num_videos)
        truth = ground_truth(worlds, frames, 32, 32)
        ceiling = evaluate_videos(autoencoder_round_trip(stack, truth, CLIP_FRAMES, K), worlds,
                                  CLIP_FRAMES - K, start=K)
        seed_out = {"ceiling": ceiling, "rows": {}, "video": {}}
        for row in cfg.rows:
            kind, lora, knobs = ROWS[row]
            stack.transformer.load_state_dict(base_state)
            if lora is not None:
                merge_lora(stack.transformer, read_lora(adapters[(lora, int(seed))]), 1.0)
            sampler = make_sampler(kind, knobs, cfg.steps, cfg.shift, cfg.window_batch).bind(stack)
            t0 = time.perf_counter()
            if kind == "clip":
                videos = rollout(sampler, worlds, cfg.num_clips, CLIP_FRAMES, noise_seed=int(seed), height=32,
                                 width=32, batch_size=cfg.num_videos, progress=False).videos
                counters = {}
            else:
                videos, counters = queue_rollout(sampler, worlds, frames, int(seed))
            results["timing_s"][row] += time.perf_counter() - t0
            seed_out["rows"][row] = evaluate_videos(videos, worlds, CLIP_FRAMES - K, start=K)
            vm = video_metrics(videos, stack, extractors)
            results["unavailable"].update(vm.pop("_unavailable"))
            seed_out["video"][row] = vm
            results["counters"].setdefault(row, []).append(counters)
            if seed == cfg.seeds[0]:
                seed_out.setdefault("examples", {"ground_truth": truth[:2]})[row] = videos[:2]
            log(f"seed {seed} {row}: {time.perf_counter() - t0:.0f} s")
        results["per_seed"][int(seed)] = seed_out
    stack.transformer.load_state_dict(base_state)
    return results


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------
def summarise(cfg: ComparisonConfig, results: dict, memory: list[dict]) -> dict:
    from svi.toy.evaluate import BACKGROUND, PRIMARY, late_clips, paired_interval

    per_video: dict[str, dict[str, list]] = {r: {} for r in cfg.rows}
    for seed, s in results["per_seed"].items():
        for row in cfg.rows:
            ev, c = s["rows"][row], s["ceiling"]
            late = late_clips(ev.per_clip[PRIMARY].shape[1])
            values = {"drift": ev.drift(c), "background_drift": ev.drift(c, BACKGROUND),
                      "first_clip_rmse": ev.per_clip[PRIMARY][:, 0],
                      "objects_late": np.nanmean(ev.per_clip["objects"][:, late], axis=1),
                      "speed": np.nanmean(ev.per_clip["speed"], axis=1),
                      "hf_ratio_late": np.nanmean(ev.per_clip["hf_ratio"][:, late], axis=1)}
            values.update({m: s["video"][row][m] for m in VIDEO_METRICS})
            for k, v in values.items():
                per_video[row].setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    pooled = {row: {k: np.concatenate(v) for k, v in d.items()} for row, d in per_video.items()}
    frames = num_output_frames(cfg) * cfg.num_videos * len(cfg.seeds)
    table = {row: {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in d.items()}
             for row, d in pooled.items()}
    for row in cfg.rows:
        table[row]["s_per_frame"] = results["timing_s"][row] / frames
        table[row]["drift_per_seed"] = [float(np.nanmean(v)) for v in per_video[row]["drift"]]
    paired = {}
    for a, b in PAIRS:
        if a in pooled and b in pooled:
            keys = ("drift", "background_drift", "flicker", "motion_smoothness_blend")
            paired[f"{a} - {b}"] = {k: paired_interval(pooled[a][k] - pooled[b][k]) for k in keys}
    gt_speed = float(np.nanmean(np.concatenate(
        [s["ceiling"].per_clip["speed"].mean(axis=1) for s in results["per_seed"].values()])))
    return {"config": asdict(cfg), "table": table, "paired": paired, "counters": results["counters"],
            "unavailable": results["unavailable"], "memory": memory, "ground_truth_speed": gt_speed,
            "timing_s": results["timing_s"]}


COLUMNS = [("drift", "drift", ".2f"), ("background_drift", "bg drift", ".2f"),
           ("first_clip_rmse", "first clip", ".2f"), ("objects_late", "objects late", ".2f"),
           ("speed", "speed px/f", ".2f"), ("flicker", "flicker", ".4f"),
           ("motion_smoothness_blend", "smooth (blend)", ".4f"),
           ("latent_consistency", "latent cons.", ".4f"),
           ("s_per_frame", "s/frame", ".3f")]


def format_table(summary: dict) -> str:
    rows = summary["table"]
    head = "| row | " + " | ".join(c[1] for c in COLUMNS) + " | drift per seed |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for row, v in rows.items():
        cells = [("–" if v.get(k) is None else format(v[k], f)) for k, _, f in COLUMNS]
        per_seed = ", ".join(f"{d:.2f}" for d in v["drift_per_seed"])
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {per_seed} |")
    lines.append("")
    lines.append("paired differences over all videos (mean [95% t interval]; "
                 "negative drift = the first drifts less):")
    for name, p in summary["paired"].items():
        d, f, m = p["drift"], p["flicker"], p["motion_smoothness_blend"]
        lines.append(f"  {name:22s} drift {d['mean']:+7.2f} [{d['low']:+7.2f}, {d['high']:+7.2f}] "
                     f"({d['better']}/{d['n']} better)  "
                     f"flicker {f['mean']:+.4f} [{f['low']:+.4f}, {f['high']:+.4f}]  "
                     f"smooth(blend) {m['mean']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]")
    for row, cs in summary["counters"].items():
        j, s, a = (sum(c.get(k, 0) for c in cs) for k in ("judged", "searches", "accepted"))
        if j:
            lines.append(f"  {row}: self-reflection fired on {s} of {j} judgements "
                         f"({100 * s / max(j, 1):.0f} %), {a} candidates accepted")
    lines.append(f"  ground-truth sprite speed {summary['ground_truth_speed']:.2f} px/frame")
    for name, why in summary["unavailable"].items():
        lines.append(f"  {name}: unavailable ({why})")
    if summary["memory"]:
        lines.append("")
        lines.append("one video, x the frame count: "
                     "peak RSS (MiB) / largest resume carry (KiB) / s per frame")
        lengths = sorted({m["multiple"] for m in summary["memory"]})
        lines.append("| row | " + " | ".join(f"{n}x" for n in lengths) + " |")
        lines.append("|" + "---|" * (len(lengths) + 1))
        for row in dict.fromkeys(m["row"] for m in summary["memory"]):
            cells = []
            for n in lengths:
                m = next(x for x in summary["memory"] if x["row"] == row and x["multiple"] == n)
                cells.append(f"{m['peak_rss_mb']:.0f} / {m['carry_kib']:.1f} / {m['s_per_frame']:.3f}")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# memory and speed at several lengths (one video per fresh process)
# ------------------------------------------------------------------------------------------------
def measure_one(row: str, num_frames: int, cfg: ComparisonConfig, adapter: str | None = None) -> dict:
    """Stream one video of `num_frames` frames through `row`'s sampler, discarding the frames; returns the
    peak RSS of this process, the largest resume carry (everything the sampler holds between chunks:
    queue, pending latents, decoder cache; motion frames for the clip sampler) and the time. Run it in a
    fresh process."""
    import resource

    from svi.backbones.official import merge_lora, read_lora
    from svi.sampling.base import GenerationRequest
    from svi.sampling.schedule import ClipSpec
    from svi.toy.backbone import load_toy_base
    from svi.toy.clips import ToyWorldSpec, to_tensor
    from svi.toy.rollout import heldout_worlds
    from svi.toy.world import caption, render

    torch.set_num_threads(cfg.threads)
    kind, lora, knobs = ROWS[row]
    stack = load_toy_base(toy_base_dir(cfg))
    if lora is not None and adapter:
        merge_lora(stack.transformer, read_lora(adapter), 1.0)
    sampler = make_sampler(kind, knobs, cfg.steps, cfg.shift, cfg.window_batch).bind(stack)
    spec = ToyWorldSpec(height=32, width=32, min_sprites=2, max_sprites=2, drift=0.0)
    world = heldout_worlds(spec, 0, 1)[0]
    image = to_tensor(render(world, 0, 1, 32, 32))[:, 0].unsqueeze(0)
    clips = max(1, -(-(num_frames - K) // (CLIP_FRAMES - K)))
    schedule = [ClipSpec(i, caption(world), "", i, 1.0) for i in range(clips)]
    request = GenerationRequest(image, schedule, num_frames=CLIP_FRAMES, height=32, width=32,
                                total_frames=None if kind == "clip" else num_frames)
    largest, t0, written = 0, time.perf_counter(), 0
    for chunk in sampler.stream(request):
        written += len(chunk.frames)
        largest = max(largest, sum(v.numel() * v.element_size() for v in chunk.carry.values()))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"row": row, "frames": written, "peak_rss_mb": peak, "carry_kib": largest / 1024,
            "seconds": seconds, "s_per_frame": seconds / max(written, 1)}


def measure_lengths(cfg: ComparisonConfig, adapters: dict[tuple[str, int], Path] | None = None,
                    log=print) -> list[dict]:
    """`measure_one` for every memory row at every length, each in its own process (peak RSS is per
    process)."""
    out = []
    base = num_output_frames(cfg)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for row in cfg.memory_rows:
        lora = ROWS[row][1]
        adapter = str(adapters[(lora, int(cfg.seeds[0]))]) if lora and adapters else None
        for n in cfg.memory_lengths:
            code = ("import json, sys; from omegaconf import OmegaConf; from svi.toy.samplers import "
                    "ComparisonConfig, measure_one; cfg = OmegaConf.to_object(OmegaConf.merge("
                    "OmegaConf.structured(ComparisonConfig), json.loads(sys.argv[1]))); "
                    "print(json.dumps(measure_one(sys.argv[2], int(sys.argv[3]), cfg, sys.argv[4] or None)))")
            proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg)), row, str(base * n),
                                   adapter or ""], capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"measuring {row} at {n}x failed:\n{proc.stderr[-2000:]}")
            m = {**json.loads(proc.stdout.strip().splitlines()[-1]), "multiple": n}
            log(f"memory {row} {n}x: {m['frames']} frames, peak RSS {m['peak_rss_mb']:.0f} MiB, "
                f"carry {m['carry_kib']:.1f} KiB, {m['s_per_frame']:.3f} s/frame")
            out.append(m)
    return out


# ------------------------------------------------------------------------------------------------
# the whole study
# ------------------------------------------------------------------------------------------------
def finetune(cfg: ComparisonConfig, out: Path) -> dict[tuple[str, int], Path]:
    """ERFT and plain LoRA per seed with svi-train experiment=toy_shot_k2 (svi-demo's runner)."""
    from svi.toy.demo import run_finetunes

    demo = OmegaConf.create({"seeds": list(cfg.seeds), "steps": cfg.finetune_steps,
                             "train_experiment": "toy_shot_k2",
                             "train_overrides": list(cfg.train_overrides), "base": toy_base_dir(cfg),
                             "parallel_jobs": cfg.parallel_jobs,
                             "models": {"plain_lora": ["ablation=no_erft"], "erft": ["ablation=none"]}})
    return run_finetunes(demo, out)


def write_examples(results: dict, out: Path, scale: int = 4) -> list[Path]:
    """Side-by-side mp4s of seed 0's first videos: ground truth | every row, in the order of the table."""
    from svi.sampling.media import write_mp4

    first = next(iter(results["per_seed"].values()))["examples"]
    names = ["ground_truth", *[k for k in first if k != "ground_truth"]]
    paths = []
    for i in range(len(first["ground_truth"])):
        tiles = []
        for n in names:
            v = first[n][i][K:].repeat(scale, axis=1).repeat(scale, axis=2)
            v[:, :, -2:] = 255
            tiles.append(v)
        path = out / "videos" / f"video{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, np.concatenate(tiles, axis=2), fps=16)
        paths.append(path)
    (out / "videos" / "columns.txt").write_text(" | ".join(names) + "\n")
    return paths


def run(cfg: ComparisonConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(cfg.rows) - set(ROWS)) + sorted(set(cfg.memory_rows) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; the rows are {list(ROWS)}")
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[samplers {time.time() - t0:6.0f} s] {msg}", flush=True)

    needs_lora = any(ROWS[r][1] for r in [*cfg.rows, *cfg.memory_rows])
    adapters = finetune(cfg, out) if needs_lora else {}
    t_train = time.time() - t0
    log(f"fine-tunes done ({t_train:.0f} s)")
    results = rollout_rows(cfg, adapters, log)
    memory = measure_lengths(cfg, adapters, log) if cfg.memory_lengths and cfg.memory_rows else []
    summary = summarise(cfg, results, memory)
    summary["seconds"] = {"finetune": round(t_train, 1), "total": round(time.time() - t0, 1)}
    write_examples(results, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json))
    text = format_table(summary)
    (out / "table.md").write_text(text + "\n")
    print(text)
    log(f"summary: {out / 'summary.json'}, table: {out / 'table.md'}, videos: {out / 'videos'}")
    return summary


def _json(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
