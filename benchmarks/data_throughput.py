"""Clips per second into training: raw videos (decode + VAE/text/CLIP encoding) vs a latent cache.

Writes a small toy-world dataset to a temporary folder, builds the backbone from conf/backbone/<name>.yaml
(tiny by default: random init, no weights needed), and measures side by side in one run:

  raw decode          VideoClipDataset items (decord decode, crop, resize), what data=folders reads
  raw decode+encode   the same plus the frozen encoders, i.e. what training on data=folders costs per clip
                      before the DiT sees it (ERFTModule.prepare_batch)
  svi-prepare         encoding the dataset once into a cache (one-time cost)
  cached read         CachedLatents items (safetensors slices, text padded back), what data=cache reads

    python benchmarks/data_throughput.py                        # tiny backbone, native 17x64x64 clips
    python benchmarks/data_throughput.py --frames 33 --size 128 --videos 4
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def _rate(loader, consume, min_clips: int) -> tuple[float, int]:
    """Clips per second over whole passes of `loader` until at least `min_clips` were seen."""
    clips, start = 0, time.perf_counter()
    while clips < min_clips:
        for batch in loader:
            consume(batch)
            clips += len(batch["caption"])
    return clips / (time.perf_counter() - start), clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny", help="conf/backbone/<name>.yaml")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--video-frames", type=int, default=65, help="frames per toy video")
    p.add_argument("--frames", type=int, default=None, help="clip frames F (default: the backbone's native)")
    p.add_argument("--size", type=int, default=None, help="clip height = width (default: native height)")
    p.add_argument("--clips-per-video", type=int, default=2)
    p.add_argument("--min-clips", type=int, default=16, help="clips measured per path (whole passes)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for both paths")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="where the encoders run (cpu | cuda)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import svi.config  # noqa: F401
    from svi.data.cache import CachedLatents, prepare_cache
    from svi.toy.world import write_dataset
    from svi.data.video import VideoClipDataset, collate_clips
    from svi.paths import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("prepare", overrides=[f"backbone={args.backbone}", "out=unused", "data.root=unused",
                                            f"backbone_name={args.backbone}"])
    stack, condition = instantiate(cfg.backbone), instantiate(cfg.condition)
    for encoder in (stack.vae, stack.text_encoder, stack.image_encoder):
        if encoder is not None:
            encoder.to(args.device)
    frames = args.frames or cfg.backbone.native.num_frames
    height = width = args.size or cfg.backbone.native.height

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "videos", Path(tmp) / "cache"
        write_dataset(root, num_videos=args.videos, num_frames=args.video_frames, height=max(64, height),
                      width=max(64, width), progress=False)
        dataset = VideoClipDataset(str(root), num_frames=frames, height=height, width=width, seed=0)
        loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=args.workers,
                            collate_fn=collate_clips)

        def encode(batch):
            condition.encode_clip(stack, batch["video"], batch["ref_image"], batch["caption"])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        encode(next(iter(loader)))  # first calls initialise kernels: keep them out of the timing
        decode_rate, n_decode = _rate(loader, lambda b: None, args.min_clips)
        raw_rate, n_raw = _rate(loader, encode, args.min_clips)

        start = time.perf_counter()
        summary = prepare_cache(stack, condition, dataset, cache, clips_per_video=args.clips_per_video,
                                backbone_name=args.backbone, progress=False)
        prepare_s = time.perf_counter() - start

        cached = DataLoader(CachedLatents(cache, sample="all"), batch_size=1, shuffle=True,
                            num_workers=args.workers, collate_fn=collate_clips)
        next(iter(cached))
        cached_rate, n_cached = _rate(cached, lambda b: None, max(args.min_clips, 4 * summary["clips"]))

    machine = platform.processor() or platform.machine()
    print(f"data throughput: backbone={args.backbone}, clips {frames}x{height}x{width}, "
          f"{args.videos} toy videos of {args.video_frames} frames, batch 1, workers {args.workers}, "
          f"encoders on {args.device}, torch threads {torch.get_num_threads()}, {machine}")
    print(f"  {'path':<22}{'clips/s':>10}{'clips':>8}")
    print(f"  {'raw decode':<22}{decode_rate:>10.2f}{n_decode:>8}")
    print(f"  {'raw decode+encode':<22}{raw_rate:>10.2f}{n_raw:>8}")
    print(f"  {'cached read':<22}{cached_rate:>10.2f}{n_cached:>8}")
    n = summary["clips"]
    print(f"  cached / raw decode+encode: {cached_rate / raw_rate:.0f}x; svi-prepare: {n} clips in "
          f"{prepare_s:.1f} s ({n / prepare_s:.2f} clips/s), {summary['bytes'] / max(n, 1) / 2**10:.0f} KiB "
          f"per cached clip")


if __name__ == "__main__":
    main()
