"""Streaming decode: a long latent sequence decoded once, causally, with constant memory.

FIFO-Diffusion and MIGA finish latent frames one (or a few) at a time. Decoding each finished piece
on its own would be wrong for Wan's causal VAE: its decoder carries a cache (`feat_cache`, the last
two time steps of every causal convolution's input) from one latent frame to the next, and the first
latent frame of every `decode` call is treated as the video's single-frame latent 0. Re-decoding
overlapping windows would cost more and still differ at the seams.

`StreamingDecoder` keeps the decoder cache of one video between calls, so

    decoder.feed(z[:, :, :a]) ++ decoder.feed(z[:, :, a:b]) ++ ... == vae.decode(z)

frame for frame (the one-shot `AutoencoderKLWan.decode` itself runs the decoder latent by latent with
that cache). Memory is the cache, independent of the video's length; the cache travels in a sampler's
resume `carry` (`state_dict` / `load_state_dict`), so a resumed stream continues exactly.

Only latent 0 of the whole video decodes to one frame; every later latent decodes to four. An
autoencoder without Wan's causal decoder (any `decode(z)` with the same latent layout) is decoded
with `context` latents of left context that are dropped again, which is exact when a latent's frames
depend on at most `context` preceding latents (e.g. an autoencoder that decodes each latent frame on
its own).
"""

from __future__ import annotations

import torch
from torch import Tensor

_NONE, _REP, _TENSOR = 0, 1, 2  # kinds of a Wan decoder cache entry ("Rep" marks the first time-upsample)


def _is_wan_causal(vae) -> bool:
    return all(hasattr(vae, a) for a in ("decoder", "post_quant_conv", "_cached_conv_counts"))


class StreamingDecoder:
    """Decode one batch of videos latent frame by latent frame, keeping the causal decoder's cache.

    Args:
        vae: the backbone's autoencoder (`AutoencoderKLWan`, or any `decode(z)` with Wan's latent layout).
        context: left-context latents for autoencoders without Wan's causal cache (see module docstring).
    """

    def __init__(self, vae, context: int = 1):
        if context < 1:
            raise ValueError(f"StreamingDecoder context must be >= 1, got {context}")
        self.vae = vae
        self.context = context
        self.causal = _is_wan_causal(vae)
        self.reset()

    def reset(self) -> None:
        self.decoded = 0  # latent frames decoded so far (0 = the next one is the video's latent 0)
        self._cache: list = [None] * (self.vae._cached_conv_counts["decoder"] if self.causal else 0)
        self._tail: Tensor | None = None  # the last `context` raw latents (non-causal path)

    def _denormalise(self, z: Tensor) -> Tensor:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return (z.float() * std + mean).to(device=self.vae.device, dtype=self.vae.dtype)

    @torch.no_grad()
    def feed(self, latents: Tensor) -> Tensor:
        """Normalised latents (B, C, n, h, w), the next n of the video -> their pixels (B, 3, m, H, W) in
        [-1, 1]: m = 1 + 4 (n - 1) for the video's first call, 4 n afterwards."""
        if latents.shape[2] == 0:
            raise ValueError("StreamingDecoder.feed needs at least one latent frame")
        z = self._denormalise(latents)
        out = self._feed_causal(z) if self.causal else self._feed_local(z)
        self.decoded += latents.shape[2]
        return out.float()

    def _feed_causal(self, z: Tensor) -> Tensor:
        vae = self.vae
        x = vae.post_quant_conv(z)  # a 1x1x1 convolution: frame by frame
        frames = []
        for i in range(x.shape[2]):
            first = self.decoded + i == 0
            frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0],
                                      first_chunk=first))
        out = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0)

    def _feed_local(self, z: Tensor) -> Tensor:
        if self._tail is None:
            out = self.vae.decode(z, return_dict=False)[0]
        else:
            c = self._tail.shape[2]
            full = self.vae.decode(torch.cat([self._tail, z], dim=2), return_dict=False)[0]
            out = full[:, :, 1 + 4 * (c - 1):]  # drop the context latents' frames (the first gives 1)
        self._tail = torch.cat([self._tail, z], 2)[:, :, -self.context:] if self._tail is not None \
            else z[:, :, -self.context:]
        return out

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self, prefix: str = "decoder.") -> dict[str, Tensor]:
        """The cache as plain tensors (for a sampler's `carry`)."""
        out = {f"{prefix}decoded": torch.tensor(self.decoded)}
        if self.causal:
            kinds = []
            for i, entry in enumerate(self._cache):
                if entry is None:
                    kinds.append(_NONE)
                elif isinstance(entry, str):
                    kinds.append(_REP)
                else:
                    kinds.append(_TENSOR)
                    out[f"{prefix}cache.{i}"] = entry.detach().cpu().clone()
            out[f"{prefix}kinds"] = torch.tensor(kinds, dtype=torch.int8)
        elif self._tail is not None:
            out[f"{prefix}tail"] = self._tail.detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, Tensor], prefix: str = "decoder.") -> None:
        self.reset()
        self.decoded = int(state[f"{prefix}decoded"])
        if self.causal:
            kinds = state[f"{prefix}kinds"].tolist()
            if len(kinds) != len(self._cache):
                raise ValueError(f"decoder cache has {len(kinds)} entries, this VAE needs {len(self._cache)}")
            device = self.vae.device
            self._cache = [None if k == _NONE else "Rep" if k == _REP
                           else state[f"{prefix}cache.{i}"].to(device) for i, k in enumerate(kinds)]
        elif f"{prefix}tail" in state:
            self._tail = state[f"{prefix}tail"].to(device=self.vae.device, dtype=self.vae.dtype)


def frames_for_latents(num_latents: int) -> int:
    """Pixel frames a video of `num_latents` latent frames decodes to (Wan's causal layout): 1 + 4 (n - 1)."""
    return 0 if num_latents <= 0 else 1 + 4 * (num_latents - 1)


def latents_for_frames(num_frames: int) -> int:
    """The fewest latent frames that decode to at least `num_frames` pixel frames."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    return 1 + -(-(num_frames - 1) // 4)
