"""One figure for the hand-off study: the same model row of several svi-demo runs, curve by curve.

    python experiments/toy_handoff/plot.py outputs/experiments/toy_handoff/{clean_s3,paper_s3,handoff_s3} \
        --names "clean" "paper's errors" "hand-off errors" --out experiments/toy_handoff/full_ft_drift.png

Each RUN is a finished svi-demo run (here base-only runs, `'~models' '+models={}'`); its `summary.json` holds the
curves (means over seeds and videos). `--model` picks the row drawn from every run (default: base); the first
run's autoencoder ceiling is drawn as a dashed line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PANELS = {"world_rmse": "world RMSE (primary)", "objects": "sprites present (of 2)", "bg_rmse": "background RMSE",
          "pose_err": "sprite lag (px)", "col_shift": "background colour shift"}


def curve(summary: dict, model: str, metric: str, run: Path) -> np.ndarray:
    try:
        return np.asarray(summary["curves"][model][metric], dtype=float)
    except KeyError:
        raise SystemExit(f"plot.py: {run}/summary.json has no {model}/{metric} curve; is it a svi-demo run "
                         f"with that model?") from None


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished svi-demo run folders")
    p.add_argument("--names", nargs="+", help="a label per run (default: the folder names)")
    p.add_argument("--model", default="base", help="the model row drawn from every run (default: %(default)s)")
    p.add_argument("--panels", nargs="+", default=["world_rmse", "objects", "bg_rmse"], choices=list(PANELS))
    p.add_argument("--out", type=Path, default=Path("handoff_drift.png"))
    args = p.parse_args(argv)
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"plot.py: {len(args.runs)} runs but {len(names)} names; give one name per run")
    summaries = []
    for run in args.runs:
        path = run / "summary.json"
        if not path.is_file():
            raise SystemExit(f"plot.py: {path} not found; pass finished svi-demo run folders")
        summaries.append(json.loads(path.read_text()))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.panels), figsize=(4.2 * len(args.panels), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], args.panels):
        for name, summary, run in zip(names, summaries, args.runs):
            y = curve(summary, args.model, metric, run)
            ax.plot(np.arange(len(y)), y, label=name)
        if metric != "pose_err":
            c = curve(summaries[0], "ceiling", metric, args.runs[0])
            ax.plot(np.arange(len(c)), c, "k--", lw=1, label="ceiling (autoencoder)")
        ax.set_title(PANELS[metric])
        ax.set_xlabel("clip")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"[plot] {args.out}")
    return args.out


if __name__ == "__main__":
    main()
