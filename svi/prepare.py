"""svi-prepare: encode a video dataset once into a latent cache. Composes, instantiates, runs, reports.

    svi-prepare data=folders data.root=VIDEOS backbone=tiny out=CACHE
    svi-prepare data.root=VIDEOS condition=film clips_per_video=8 out=CACHE    # Wan2.1-I2V-14B from env
    svi-prepare data.root=VIDEOS out=CACHE                                     # again: resumes / skips

The cache is then trained on with `svi-train ... data=cache data.root=CACHE` (same backbone,
condition and clip geometry; the cache refuses anything else).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

import svi.config  # noqa: F401  (registers the typed schemas before composition)
from svi.data.cache import prepare_cache
from svi.data.datamodule import VideoFolderDataModule
from svi.paths import CONF_DIR


def prepare(cfg: DictConfig) -> dict:
    """Build the cache described by ``cfg``; returns `prepare_cache`'s summary."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"svi-prepare: required setting(s) {', '.join(missing)} not given, e.g. "
                         f"`svi-prepare data=folders data.root=VIDEOS backbone=tiny out=CACHE`")
    datamodule = instantiate(cfg.data)
    if not isinstance(datamodule, VideoFolderDataModule):
        raise SystemExit(f"svi-prepare encodes raw videos: use data=folders (got {cfg.data._target_})")
    datamodule.setup("fit")
    stack = instantiate(cfg.backbone)
    condition = instantiate(cfg.condition)
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    encoders = ["vae", "text_encoder"] + (["image_encoder"] if stack.uses_clip else [])
    for name in encoders:  # the transformer is not used here: it stays where it was loaded
        stack.require(name, "svi-prepare").to(device)

    summary = prepare_cache(stack, condition, datamodule.dataset, to_absolute_path(str(cfg.out)),
                            clips_per_video=cfg.clips_per_video, videos_per_shard=cfg.videos_per_shard,
                            dtype=cfg.dtype, backbone_name=str(cfg.backbone_name),
                            encode_batch_size=cfg.encode_batch_size, progress=cfg.progress)
    skipped = summary["skipped"]
    text = (f"svi-prepare: {summary['clips']} clips of {summary['videos']} videos in {summary['shards']} "
            f"shards ({summary['shards_written']} written, {summary['shards_reused']} already done), "
            f"{summary['bytes'] / 2**20:.1f} MiB in {summary['out']}; {len(skipped)} video(s) skipped")
    if skipped:
        listed = [f"{Path(p).name}: {r}" for p, r in sorted(skipped.items())]
        more = f"; and {len(listed) - 5} more" if len(listed) > 5 else ""
        text += " (" + "; ".join(listed[:5]) + more + ")"
    print(text)
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
