"""One figure for the sprite-speed study: world RMSE and sprite lag per clip, per world and model.

    python experiments/toy_still/plot.py outputs/experiments/toy_still/{still,slow,moving} \
        --names still slow moving --out experiments/toy_still/speed_drift.png

Each RUN is a finished svi-demo run (its per_clip.npz); curves are means over seeds and videos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODELS = {"base": "base", "plain_lora": "plain LoRA", "erft": "ERFT (the paper's recipe)", "ceiling": "ceiling"}
PANELS = {"world_rmse": "world RMSE (primary)", "pose_err": "sprite lag (px)"}


def curve(per_clip, model: str, metric: str) -> np.ndarray:
    """Mean over every seed's videos of one model's per-clip metric."""
    rows = [per_clip[k] for k in per_clip.files if k.split("/")[1:] == [model, metric]]
    if not rows:
        raise SystemExit(f"plot.py: no {model}/{metric} curves in this per_clip.npz; is it a svi-demo run?")
    return np.nanmean(np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows]), axis=0)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished svi-demo run folders")
    p.add_argument("--names", nargs="+", help="a title per run (default: the folder names)")
    p.add_argument("--out", type=Path, default=Path("speed_drift.png"))
    args = p.parse_args(argv)
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"plot.py: {len(args.runs)} runs but {len(names)} --names; give one name per run")
    missing = [str(r) for r in args.runs if not (r / "per_clip.npz").is_file()]
    if missing:
        raise SystemExit(f"plot.py: no per_clip.npz in {', '.join(missing)}; run svi-demo there first")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), len(args.runs), figsize=(4.2 * len(args.runs), 6.4), squeeze=False,
                             sharey="row")
    for j, (run, name) in enumerate(zip(args.runs, names)):
        per_clip = np.load(run / "per_clip.npz")
        for i, (metric, label) in enumerate(PANELS.items()):
            ax = axes[i, j]
            for model, legend in MODELS.items():
                y = curve(per_clip, model, metric)
                ax.plot(np.arange(len(y)), y, label=legend, ls=":" if model == "ceiling" else "-")
            ax.set_title(f"{name}: {label}" if i == 0 else label, fontsize=10)
            ax.set_xlabel("clip")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
