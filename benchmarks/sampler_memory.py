"""Peak memory and time per frame of the samplers at several video lengths: FIFO and MIGA must stay flat.

    python benchmarks/sampler_memory.py                  # svi, fifo, miga at 1x, 4x, 16x of 182 frames
    python benchmarks/sampler_memory.py --rows fifo miga --multiples 1 8 --clips 20

One video on the shipped K = 2 toy base with the toy settings of experiments/samplers (no LoRA: the
`svi` row is the clip sampler on the base weights here). Every (row, length) runs in a fresh process,
which streams the video chunk by chunk and discards the frames; it reports its peak RSS, the largest
resume carry (all a sampler holds between chunks: FIFO's queue and padding, MIGA's queue, Stage-2 block
and context, the pending latents and the decoder cache; SVI's motion frames) and seconds per frame.
The output directory's own cost (segments, concat) is measured by benchmarks/generate_memory.py.
"""

from __future__ import annotations

import argparse

from svi.toy.samplers import ComparisonConfig, measure_lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=["svi", "fifo", "miga"])
    ap.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--clips", type=int, default=60, help="1x = 2 + 3 clips frames (the comparison's length)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    cfg = ComparisonConfig(num_clips=args.clips, memory_lengths=args.multiples, threads=args.threads,
                           memory_rows=["base" if r == "svi" else r for r in args.rows])
    rows = measure_lengths(cfg, adapters=None, log=lambda msg: None)
    print(f"{'row':6s} {'x':>3s} {'frames':>7s} {'peak RSS MiB':>13s} {'carry KiB':>10s} {'s/frame':>8s}")
    for m in rows:
        print(f"{m['row']:6s} {m['multiple']:>3d} {m['frames']:>7d} {m['peak_rss_mb']:>13.1f} "
              f"{m['carry_kib']:>10.1f} {m['s_per_frame']:>8.4f}")


if __name__ == "__main__":
    main()
