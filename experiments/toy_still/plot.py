"""One figure for the sprite-speed study: world RMSE and sprite lag per clip, per world and model.

    python experiments/toy_still/plot.py outputs/experiments/toy_still/{still,slow,moving} \
        --names still slow moving --out experiments/toy_still/speed_drift.png

`--panels` picks other per-clip curves (a row each), e.g. `--panels world_rmse objects ref_dist`.

Each RUN is a finished svi-demo run; its `summary.json` holds the curves (means over seeds and videos).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = {"base": "base", "plain_lora": "plain LoRA", "erft": "ERFT (the paper's recipe)", "ceiling": "ceiling"}
PANELS = {"world_rmse": "world RMSE (primary)", "pose_err": "sprite lag (px)", "objects": "sprites present (of 2)",
          "ref_dist": "sprites' distance from the reference's (px)", "bg_rmse": "background RMSE",
          "col_shift": "background colour shift"}
DEFAULT_PANELS = ("world_rmse", "pose_err")


def curve(summary: dict, model: str, metric: str) -> np.ndarray:
    """One model's per-clip curve of `metric` from a run's summary.json (mean over seeds and videos)."""
    try:
        return np.asarray(summary["curves"][model][metric], dtype=float)
    except KeyError:
        raise SystemExit(f"plot.py: no {model}/{metric} curve in this summary.json; is it a svi-demo run?") from None


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished svi-demo run folders")
    p.add_argument("--names", nargs="+", help="a title per run (default: the folder names)")
    p.add_argument("--out", type=Path, default=Path("speed_drift.png"))
    p.add_argument("--panels", nargs="+", default=list(DEFAULT_PANELS), choices=list(PANELS),
                   help="per-clip curves, a row each (default: %(default)s)")
    args = p.parse_args(argv)
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"plot.py: {len(args.runs)} runs but {len(names)} --names; give one name per run")
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        raise SystemExit(f"plot.py: no summary.json in {', '.join(missing)}; run svi-demo there first")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {m: PANELS[m] for m in args.panels}
    fig, axes = plt.subplots(len(panels), len(args.runs), figsize=(4.2 * len(args.runs), 3.2 * len(panels)), squeeze=False,
                             sharey="row")
    for j, (run, name) in enumerate(zip(args.runs, names)):
        summary = json.loads((run / "summary.json").read_text())
        for i, (metric, label) in enumerate(panels.items()):
            ax = axes[i, j]
            for model, legend in MODELS.items():
                y = curve(summary, model, metric)
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
