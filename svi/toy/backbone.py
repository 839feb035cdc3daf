"""The toy backbone: a small Wan I2V DiT, a linear patch autoencoder and the offline caption encoder.

`build_toy_wan` makes it at random init (the starting point of `experiment=toy_pretrain`, with the
autoencoder fitted on toy-world clips, or a trained toy `AutoencoderKLWan` given by `backbone.vae.path`,
`svi.toy.train_autoencoder`); `load_toy_base` loads the pretrained base shipped in the
repository through the same `load_wan_dir` that reads real Wan weights: `svi/assets/toy_base_k2_long`
(the K = 2 base of `make demo`, 12000 steps, written by `make toy-base`), `svi/assets/toy_base_film` (the
Film base, `make toy-base-film`), `svi/assets/toy_base_big` (larger sprites, `make toy-base-big`),
`svi/assets/toy_base_k2_f9` (9-frame clips, `make toy-base-f9`), `svi/assets/toy_base_k2` (the 4000-step K = 2 base, `make toy-base-k2`)
and `svi/assets/toy_base` (base v1, `make toy-base-v1`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from svi.toy.autoencoder import PatchAutoencoder
from svi.backbones.wan import WanStack, _check_dims, build_tiny_wan, load_wan_dir

TOY_BASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_base"
TOY_BASE_ENV = "SVI_TOY_BASE_DIR"


def build_toy_wan(transformer: dict, text_encoder: dict, vae: dict, fit: dict, seed: int = 0, text_len: int = 64,
                  components: Sequence[str] = ("transformer", "vae", "text_encoder"), dtype: str = "float32",
                  native: dict | None = None, dims: dict | None = None) -> WanStack:
    """Random-init toy DiT + text encoder; the autoencoder is PCA-fitted on `fit.num_videos` toy clips, or,
    with `vae: {path: DIR}`, the trained `AutoencoderKLWan` in DIR (`python -m svi.toy.train_autoencoder`)."""
    from svi.toy.clips import toy_videos

    stack = build_tiny_wan(transformer=transformer, text_encoder=text_encoder, seed=seed, text_len=text_len,
                           components=[c for c in components if c != "vae"], dtype=dtype)
    if "vae" in components:
        vae = dict(vae)
        if vae.get("path"):
            stack.vae = _trained_vae(Path(vae["path"]), stack.transformer.config.out_channels)
        else:
            fit = dict(fit)
            videos = toy_videos(fit.pop("num_videos", 64), fit.pop("num_frames", 9), **fit)
            stack.vae = PatchAutoencoder(**{k: v for k, v in vae.items() if k != "path"}).fit(videos).eval()
        stack.vae.requires_grad_(False)
    return _check_dims(stack, dims)


def _trained_vae(folder: Path, latent_channels: int):
    """A trained toy `AutoencoderKLWan` from `folder`, refused unless its latent fits the DiT."""
    from diffusers import AutoencoderKLWan

    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"backbone.vae.path: no autoencoder in {folder} (config.json missing); train one with "
                                f"`python -m svi.toy.train_autoencoder --out <dir>` and pass <dir>/vae")
    vae = AutoencoderKLWan.from_pretrained(folder).eval()
    if vae.config.z_dim != latent_channels:
        raise ValueError(f"backbone.vae.path: {folder} has {vae.config.z_dim} latent channels but the toy DiT "
                         f"predicts {latent_channels}; train the autoencoder with --z-dim {latent_channels}")
    return vae


def load_toy_base(path: str | None = None, components: Sequence[str] = ("transformer", "vae", "text_encoder"),
                  dtype: str = "float32", text_len: int = 64, native: dict | None = None,
                  dims: dict | None = None) -> WanStack:
    """The pretrained toy base: `path`, else `$SVI_TOY_BASE_DIR`, else the copy shipped in the package."""
    root = path or os.environ.get(TOY_BASE_ENV) or str(TOY_BASE_DIR)
    if not Path(root, "transformer", "config.json").exists():
        raise FileNotFoundError(f"no toy base model in {root}: run `make toy-base` (make demo's), "
                                f"`make toy-base-film`, `make toy-base-k2` or `make toy-base-v1` (svi-train "
                                f"experiment=toy_pretrain) to train it, or set {TOY_BASE_ENV} to its directory")
    return load_wan_dir(root, env_var=TOY_BASE_ENV, components=components, dtype=dtype, text_len=text_len,
                        dims=dims, vae_class=_saved_vae_class(Path(root)))


def _saved_vae_class(root: Path) -> type | None:
    """The toy base's autoencoder class: the linear `PatchAutoencoder`, or None for a trained
    `AutoencoderKLWan` (the loader's default)."""
    cfg = root / "vae" / "config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("_class_name") == "AutoencoderKLWan":
        return None
    return PatchAutoencoder
