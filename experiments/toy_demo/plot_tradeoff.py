"""Every ERFT row of one svi-demo run on one picture: the drift it bounds against the sprites it keeps.

    python experiments/toy_demo/plot_tradeoff.py outputs/experiments/toy_demo/scaling \
        --out experiments/toy_demo/tradeoff.png

For each model of the run, x = sprites present over all clips (of 2; mean over seeds and videos, with a 95 %
t interval over the videos) and y = its drift over plain LoRA's (the ratio of means over the seeds, bars from
the lowest to the highest seed's ratio). The base and plain LoRA are drawn for reference. The shaded corner
is what the paper's picture asks of ERFT (`experiments/toy_demo`, the checks): drift at most half of plain
LoRA's while keeping at least as many sprites. The colour of a point is its first clip against plain LoRA's
(mean paired world-RMSE difference): the cost a model pays before any chaining.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def _load(run: Path) -> tuple[dict, dict]:
    try:
        summary = json.loads((run / "summary.json").read_text())
        clips = dict(np.load(run / "per_clip.npz"))
    except FileNotFoundError as e:
        raise SystemExit(f"plot_tradeoff.py: {e.filename} is missing; pass a finished svi-demo run folder") from None
    if "plain_lora" not in summary.get("drift", {}):
        raise SystemExit(f"plot_tradeoff.py: {run}/summary.json has no plain_lora row to compare against")
    return summary, clips


def _videos(clips: dict, seeds: list, model: str, metric: str) -> np.ndarray:
    return np.concatenate([clips[f"seed{s}/{model}/{metric}"] for s in seeds])  # (videos, clips)


def points(summary: dict, clips: dict) -> dict[str, dict]:
    """name -> x (sprites over all clips), its interval, y (drift over plain's), seed range, first-clip cost."""
    seeds, drift, per_seed = summary["seeds"], summary["drift"], summary["per_seed"]
    plain_first = _videos(clips, seeds, "plain_lora", "world_rmse")[:, 0]
    out = {}
    for name in drift:
        objects = np.nanmean(_videos(clips, seeds, name, "objects"), axis=1)
        half = stats.t.ppf(0.975, len(objects) - 1) * objects.std(ddof=1) / np.sqrt(len(objects))
        ratios = [a / b for a, b in zip(per_seed[name], per_seed["plain_lora"])]
        first = float(np.mean(_videos(clips, seeds, name, "world_rmse")[:, 0] - plain_first))
        out[name] = {"x": float(objects.mean()), "x_half": float(half), "y": drift[name] / drift["plain_lora"],
                     "y_lo": min(ratios), "y_hi": max(ratios), "first_clip": first}
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished svi-demo run folder (summary.json, per_clip.npz)")
    p.add_argument("--out", type=Path, default=Path("tradeoff.png"))
    p.add_argument("--title", default="every ERFT row against plain LoRA (same worlds and noise)")
    args = p.parse_args(argv)
    pts = points(*_load(args.run))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.0, 6.0))
    plain = pts["plain_lora"]
    x_max = max(1.2, max(v["x"] + v["x_half"] for v in pts.values()) + 0.1)
    ax.fill_between([plain["x"], x_max], 0, 0.5, color="tab:green", alpha=0.12, lw=0,
                    label="the paper's picture: drift <= 0.5x plain, sprites >= plain")
    ax.axhline(1.0, color="0.7", lw=0.8, ls="--")
    ax.axvline(plain["x"], color="0.7", lw=0.8, ls="--")
    fitted = [v for n, v in pts.items() if n != "base"]
    if len(fitted) > 2:  # a least-squares line through the fine-tunes: how far the rows lie from one trade
        xs, ys = np.array([v["x"] for v in fitted]), np.array([v["y"] for v in fitted])
        slope, icept = np.polyfit(xs, ys, 1)
        grid = np.linspace(0, x_max, 2)
        ax.plot(grid, icept + slope * grid, color="0.5", lw=0.8, ls=":",
                label=f"least squares over the fine-tunes: r = {np.corrcoef(xs, ys)[0, 1]:.2f}")
    cost = max(0.5, max(abs(v["first_clip"]) for v in pts.values()))
    norm = matplotlib.colors.Normalize(vmin=0, vmax=cost)
    labels: dict[tuple[float, float], list[str]] = {}  # rows at the same place share a number
    for name, v in pts.items():
        labels.setdefault((round(v["x"], 6), round(v["y"], 6)), []).append(name)
    for k, ((x, y), names) in enumerate(labels.items(), start=1):
        v = pts[names[0]]
        ref = any(n in ("base", "plain_lora") for n in names)
        ax.errorbar(x, y, xerr=v["x_half"], yerr=[[y - v["y_lo"]], [v["y_hi"] - y]], fmt="none", ecolor="0.75",
                    lw=0.8, zorder=1)
        ax.scatter(x, y, s=60, marker="s" if ref else "o", zorder=2, edgecolors="k", linewidths=0.6,
                   c=[plt.cm.viridis(norm(max(v["first_clip"], 0.0)))])
        ax.annotate(str(k), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8)
    key = "\n".join(f"{k}  {' = '.join(n.replace('_', ' ') for n in names)}"
                     for k, names in enumerate(labels.values(), start=1))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=8, family="monospace")
    sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(sm, ax=ax, label="first clip: world RMSE above plain LoRA's", location="left", pad=0.12)
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, max(1.2, max(v["y_hi"] for v in pts.values()) + 0.05))
    ax.set_xlabel("sprites present over all clips (of 2)")
    ax.set_ylabel("drift over plain LoRA's (bars: lowest to highest seed)")
    ax.set_title(args.title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot_tradeoff.py: wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
