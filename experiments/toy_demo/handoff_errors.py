"""Hand-off errors against recycled errors, for a finished `svi-demo` run (experiments/toy_demo).

For Shot and Film runs (a talk or dance run's signals are not replayed here). Rolls the run's models out
again on seed `--seed`'s held-out worlds for `--clips` clips (the demo's
settings, worlds and noise), measures each clip's condition-latent error against the true motion frames
(`svi.toy.diagnostics.handoff_errors`), and reads the RMS of the video errors each ERFT fine-tune's replay
memory holds, per timestep bucket (what the paper's E_img is drawn from). Prints both and writes
`handoff_errors.png` and `handoff_errors.json` to the run directory.

    python experiments/toy_demo/handoff_errors.py outputs/experiments/toy_demo/paper_recipe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an svi-demo output directory (with .hydra/config.yaml and train/)")
    parser.add_argument("--seed", type=int, default=0, help="which of the run's seeds (its fine-tunes and worlds)")
    parser.add_argument("--clips", type=int, default=12, help="clips per rollout")
    parser.add_argument("--models", nargs="*", default=None, help="models to roll out (default: base and all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()

    run = Path(args.run)
    cfg_path = run / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise SystemExit(f"{cfg_path} not found: give the output directory of an svi-demo run")
    cfg = OmegaConf.load(cfg_path)
    names = args.models or ["base", *cfg.models]
    missing = [n for n in names if n != "base" and not (run / "train" / f"{n}_seed{args.seed}" / "adapter").is_dir()]
    if missing:
        raise SystemExit(f"no fine-tune of {missing} for seed {args.seed} under {run / 'train'}: pick --models or --seed")
    if args.threads:
        torch.set_num_threads(args.threads)

    from svi.backbones.official import merge_lora, read_lora
    from svi.flow import inference_sigmas
    from svi.sampling.media import from_uint8
    from svi.sampling.svi_clip import motion_latent_frames
    from svi.toy.backbone import load_toy_base
    from svi.toy.demo import _eval_world, _sampler
    from svi.toy.diagnostics import bank_error_rms, handoff_errors, pooled_rms, read_checkpoint, replay_memory_state
    from svi.toy.rollout import heldout_worlds, rollout
    from svi.toy.world import render

    stack = load_toy_base(cfg.base)
    base_state = {k: v.clone() for k, v in stack.transformer.state_dict().items()}
    ev = cfg.eval
    sampler = _sampler(cfg, stack)  # the demo's own sampler and held-out worlds
    spec = _eval_world(cfg, sampler.condition)
    worlds = heldout_worlds(spec, args.seed, int(ev.num_videos))
    F = int(ev.num_frames)
    report: dict = {"run": str(run), "seed": args.seed, "clips": args.clips, "handoff": {}, "bank": {}}
    print(f"hand-off error (condition latent RMS against the true motion frames), seed {args.seed}, "
          f"{len(worlds)} videos; clip 0 starts from true frames")
    for name in names:
        stack.transformer.load_state_dict(base_state)
        if name != "base":
            merge_lora(stack.transformer, read_lora(run / "train" / f"{name}_seed{args.seed}" / "adapter"), 1.0)
        r = rollout(sampler, worlds, args.clips, F, noise_seed=args.seed, height=spec.height, width=spec.width,
                    desc=name)
        e = handoff_errors(stack, sampler.condition, r.videos, worlds, F).mean(0)
        report["handoff"][name] = e.tolist()
        print(f"  {name:>14}: " + " ".join(f"{v:.2f}" for v in e))
        ckpt = run / "train" / f"{name}_seed{args.seed}" / "checkpoints" / "last.ckpt"
        if name != "base" and ckpt.is_file():
            state = read_checkpoint(ckpt)
            try:
                rms, counts = bank_error_rms(replay_memory_state(state))
            except ValueError:  # plain LoRA: no replay memory
                continue
            sig = inference_sigmas(len(rms), float(state["hyper_parameters"]["flow"]["shift"])).numpy()
            report["bank"][name] = {"sigma": sig.tolist(), "rms": rms.tolist(), "counts": counts.tolist(),
                                    "pooled": pooled_rms(rms, counts)}
    K = int(sampler.num_motion_frames)
    with torch.no_grad():  # the scale of the signal itself: the true condition latent of clip 0
        true = torch.cat([from_uint8(render(w, 0, K, spec.height, spec.width)) for w in worlds])
        y = sampler.condition.build_y(stack, true, true[:, :, 0], F)[:, 4:, : motion_latent_frames(K)]
    report["clean_condition_rms"] = float(y.pow(2).mean().sqrt())
    print(f"  the true condition latent itself: RMS {report['clean_condition_rms']:.2f}")
    for name, b in report["bank"].items():
        rms, sig = np.array(b["rms"]), np.array(b["sigma"])
        picks = [0, len(rms) // 2, len(rms) - 1]
        print(f"  {name} replay memory: stored video errors, RMS over all buckets {b['pooled']:.2f}; "
              + ", ".join(f"sigma {sig[i]:.2f}: {rms[i]:.2f}" for i in picks))
    (run / "handoff_errors.json").write_text(json.dumps(report, indent=1))
    plot(report, run / "handoff_errors.png")
    print(f"wrote {run / 'handoff_errors.json'} and {run / 'handoff_errors.png'}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, e in report["handoff"].items():
        a.plot(range(1, len(e)), e[1:], marker="o", ms=3, label=name)
    for name, bank in report["bank"].items():
        a.axhline(bank["pooled"], ls="--", lw=1, color="gray")
        a.text(1, bank["pooled"], f" {name}: stored errors (RMS, all buckets)", va="bottom", fontsize=8)
        b.plot(bank["sigma"], bank["rms"], marker=".", label=name)
    if "clean_condition_rms" in report:
        a.axhline(report["clean_condition_rms"], ls=":", lw=1, color="black")
        a.text(1, report["clean_condition_rms"], " the true condition latent itself (RMS)", va="bottom", fontsize=8)
    a.set(xlabel="clip", ylabel="condition latent error (RMS)", title="hand-off error met at inference")
    a.legend(fontsize=8)
    b.set(xlabel="bucket sigma", ylabel="RMS", title="video errors in the replay memory (E_img source)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
