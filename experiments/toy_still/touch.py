"""Are the sprites a rollout loses lost where the world's sprites touch?

    python experiments/toy_still/touch.py outputs/experiments/toy_fixed/fixed_36k

For a finished svi-demo run (its per_clip.npz and .hydra/config.yaml): per model, over every seed's
held-out worlds, the first clip where the sprites present fall below `--below` (a sprite lost), the first
clip where two true sprites come within `--gap` px (one may occlude the other: the count then drops even
for the autoencoder's ceiling), and how often the loss comes within `--window` clips after the touch,
against the same with the touches shuffled across videos (svi/toy/diagnostics.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from svi.toy.clips import ToyWorldSpec
from svi.toy.diagnostics import first_loss_clip, first_touch_clip, loss_at_touch
from svi.toy.rollout import heldout_worlds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished svi-demo run folder")
    p.add_argument("--below", type=float, default=1.5, help="a clip with fewer sprites present than this has lost one")
    p.add_argument("--gap", type=float, default=1.0, help="sprites closer than this (px, edge to edge) touch")
    p.add_argument("--window", type=int, default=1, help="a loss 0..window clips after the touch counts as at it")
    args = p.parse_args(argv)
    cfg_path, npz_path = args.run / ".hydra" / "config.yaml", args.run / "per_clip.npz"
    missing = [str(q) for q in (cfg_path, npz_path) if not q.is_file()]
    if missing:
        raise SystemExit(f"touch.py: {', '.join(missing)} missing; is {args.run} a finished svi-demo run?")
    cfg = OmegaConf.load(cfg_path)
    world = OmegaConf.to_container(cfg.eval.world, resolve=True)
    if world.get("voice") or world.get("dance"):
        raise SystemExit("touch.py: a talk or dance run's sprites follow their signal; use a Shot run")
    spec = ToyWorldSpec(**world)
    K, F = int(cfg.condition.num_motion_frames), int(cfg.eval.num_frames)
    per_clip = np.load(npz_path)
    out = {}
    models = ["base", *cfg.models] + (["ceiling"] if f"seed{cfg.seeds[0]}/ceiling/objects" in per_clip.files else [])
    for model in models:
        lost, touched = [], []
        for seed in cfg.seeds:
            objects = per_clip[f"seed{seed}/{model}/objects"]  # (videos, clips)
            for row, w in zip(objects, heldout_worlds(spec, int(seed), objects.shape[0])):
                lost.append(first_loss_clip(row, args.below))
                touched.append(first_touch_clip(w, objects.shape[1], F - K, K, spec.height, spec.width, args.gap))
        lost, touched = np.array(lost), np.array(touched)
        r = loss_at_touch(lost, touched, args.window)
        out[model] = dict(r, videos=len(lost), lose=int((lost >= 0).sum()),
                          median_loss_clip=float(np.median(lost[lost >= 0])) if (lost >= 0).any() else float("nan"))
        print(f"{model:>12}: {out[model]['lose']}/{len(lost)} videos lose a sprite (median clip "
              f"{out[model]['median_loss_clip']:.0f}); of the {r['n']} whose sprites also touch, "
              f"{r['observed']:.2f} lose it 0-{args.window} clips after the first touch "
              f"(touches shuffled across videos: {r['shuffled']:.2f}, 97.5 % {r['shuffled_q975']:.2f})")
    return out


if __name__ == "__main__":
    main()
