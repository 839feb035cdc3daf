"""Peak memory of svi-generate over many clips vs few: the sampler must not grow with the video.

    python benchmarks/generate_memory.py                 # 3 vs 20 clips, tiny backbone, 2 steps
    python benchmarks/generate_memory.py --clips 3 50 --steps 2

Each length runs in a fresh process (peak RSS is per process); the child reports its peak RSS and its
RSS after every committed clip. Prints a table; figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(num_clips: int, steps: int, out: Path) -> None:
    from hydra import compose, initialize_config_dir
    from PIL import Image

    import svi.sampling.config  # noqa: F401
    from svi.generate import generate
    from svi.paths import CONF_DIR

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out / "image.png")
    (out / "prompts.txt").write_text("a red disc drifts to the right\n")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=[
            "backbone=tiny", f"image={out / 'image.png'}", f"prompts={out / 'prompts.txt'}", f"num_clips={num_clips}",
            f"out={out / 'run'}", f"flow.num_inference_steps={steps}", "progress=false"])
    rss = []
    t0 = time.perf_counter()
    generate(cfg, on_commit=lambda chunk, state: rss.append(round(_rss_mb(), 1)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clips": num_clips, "peak_rss_mb": round(peak, 1), "rss_after_clip_mb": rss,
                      "seconds": round(time.perf_counter() - t0, 1),
                      "video_mb": round((out / "run/video.mp4").stat().st_size / 2**20, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child(args.child, args.steps, args.out)

    rows = []
    for n in args.clips:
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run([sys.executable, __file__, "--child", str(n), "--steps", str(args.steps),
                                  "--out", tmp], capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"tiny backbone, 17 frames x 64x64 per clip, {args.steps} Euler steps, cfg 5; one process per run")
    print(f"{'clips':>6} {'peak RSS MB':>12} {'RSS after clip 3':>17} {'RSS after last':>15} {'seconds':>8} {'video MB':>9}")
    for r in rows:
        after = r["rss_after_clip_mb"]
        print(f"{r['clips']:>6} {r['peak_rss_mb']:>12.1f} {after[min(2, len(after) - 1)]:>17.1f} "
              f"{after[-1]:>15.1f} {r['seconds']:>8.1f} {r['video_mb']:>9.3f}")
    a, b = rows[0], rows[-1]
    print(f"peak RSS ratio {b['clips']} vs {a['clips']} clips: {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}; "
          f"RSS growth from clip 3 to clip {b['clips']}: "
          f"{b['rss_after_clip_mb'][-1] - b['rss_after_clip_mb'][min(2, len(b['rss_after_clip_mb']) - 1)]:+.1f} MB")


if __name__ == "__main__":
    main()
