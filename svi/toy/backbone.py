"""The toy backbone: a small Wan I2V DiT, a linear patch autoencoder and the offline caption encoder.

`build_toy_wan` makes it at random init (the starting point of `experiment=toy_pretrain`, with the
autoencoder fitted on toy-world clips); `load_toy_base` loads the pretrained base shipped in the
repository through the same `load_wan_dir` that reads real Wan weights: `svi/assets/toy_base_k2_long`
(the K = 2 base of `make demo`, 12000 steps, written by `make toy-base`), `svi/assets/toy_base_film` (the
Film base, `make toy-base-film`), `svi/assets/toy_base_big` (larger sprites, `make toy-base-big`),
`svi/assets/toy_base_k2_f9` (9-frame clips, `make toy-base-f9`), `svi/assets/toy_base_k2` (the 4000-step K = 2 base, `make toy-base-k2`)
and `svi/assets/toy_base` (base v1, `make toy-base-v1`).
"""

from __future__ import annotations

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
    """Random-init toy DiT + text encoder; the autoencoder is PCA-fitted on `fit.num_videos` toy clips."""
    from svi.toy.clips import toy_videos

    stack = build_tiny_wan(transformer=transformer, text_encoder=text_encoder, seed=seed, text_len=text_len,
                           components=[c for c in components if c != "vae"], dtype=dtype)
    if "vae" in components:
        fit = dict(fit)
        videos = toy_videos(fit.pop("num_videos", 64), fit.pop("num_frames", 9), **fit)
        stack.vae = PatchAutoencoder(**dict(vae)).fit(videos).eval()
        stack.vae.requires_grad_(False)
    return _check_dims(stack, dims)


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
                        dims=dims, vae_class=PatchAutoencoder)
