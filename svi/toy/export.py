"""``svi-toyworld``: write the procedural toy world to disk in the official SVI dataset layout.

A thin Hydra wrapper over :func:`svi.toy.world.write_dataset`, so a download-free dataset can be
made with one command, e.g. ``svi-toyworld out=data/toy num_videos=64``.
"""

from __future__ import annotations

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from svi.toy.world import write_dataset
from svi.paths import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="toy/toyworld")
def main(cfg: DictConfig) -> dict:
    """Write the dataset described by ``cfg`` and print a one-line summary."""
    if OmegaConf.is_missing(cfg, "out"):
        raise SystemExit("svi-toyworld: the output folder `out` is required, "
                         "e.g. `svi-toyworld out=data/toyworld num_videos=8`")
    summary = write_dataset(
        to_absolute_path(str(cfg.out)), num_videos=cfg.num_videos, num_frames=cfg.num_frames,
        height=cfg.height, width=cfg.width, fps=cfg.fps, seed=cfg.seed, category=cfg.category,
        film=cfg.film, scene_change_every=cfg.scene_change_every, max_sprites=cfg.max_sprites,
        drift=cfg.drift, voice=cfg.voice, dance=cfg.dance, progress=cfg.progress,
        sprite_size=list(cfg.sprite_size), speed=list(cfg.speed),
    )
    mode = "single-shot"
    if summary["film"]:
        mode = f"film, a new shot every {summary['scene_change_every']} frames"
    print(f"toyworld: wrote {summary['count']} videos ({cfg.num_frames} frames, {cfg.height}x{cfg.width}, "
          f"{mode}) to {summary['dir']} (csv: {summary['csv']})")
    return summary


if __name__ == "__main__":
    main()
