"""A fixed linear patch autoencoder behind the `AutoencoderKLWan` interface (the toy world's "VAE").

Why not a trained `AutoencoderKLWan`: at the toy scale (32x32 frames) Wan's 8x spatial compression
leaves a 4x4 latent, and a causal 3D conv VAE trained from scratch costs minutes of the 2-core budget
before the DiT even starts (`benchmarks/toy_autoencoder.py` compares the two; experiments/toy_base).
This autoencoder keeps everything the rest of the code relies on and fits in a fraction of a second:

* Wan's causal temporal layout: latent frame 0 <- pixel frame 0, latent frame k >= 1 <- pixel frames
  4k-3 .. 4k, so F = 1 + 4k pixel frames give 1 + k latent frames and the I2V mask stays Wan's.
* `encode(x).latent_dist.mode()`, `decode(z, return_dict=False)[0]`, `config.latents_mean/std`,
  `config.z_dim`, `save_pretrained` / `from_pretrained` (a diffusers `ModelMixin`).
* Latents: a patch of 4 frames x p x p pixels x 3 colours projected on its top `z_dim` principal
  components (PCA fitted on toy-world clips). Frame 0 is encoded as 4 copies of itself.

Encoding and decoding are linear maps (decode clamps to [-1, 1]); the pixel round trip between clips
(decode, quantise to 8 bits, re-encode) is real, as in SVI.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

TEMPORAL = 4  # Wan's temporal compression


def _pca(v: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k principal axes (k, d) with deterministic signs, and the mean (d,), of rows v (n, d)."""
    mean = v.mean(dim=0)
    cov = (v - mean).T @ (v - mean) / max(len(v) - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    comps = evecs[:, evals.argsort(descending=True)[:k]].T
    return comps * torch.sign(comps.sum(dim=1, keepdim=True) + 1e-12), mean


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Linear (PCA) patch autoencoder with Wan's latent layout. Fit with `fit(videos)`."""

    @register_to_config
    def __init__(self, z_dim: int = 16, patch_size: int = 2, in_channels: int = 3, frame_separable: bool = False,
                 latents_mean: list[float] | None = None, latents_std: list[float] | None = None):
        super().__init__()
        d = TEMPORAL * patch_size * patch_size * in_channels
        if z_dim > d:
            raise ValueError(f"z_dim={z_dim} exceeds the patch volume {d} (4 frames x {patch_size}^2 x {in_channels})")
        if frame_separable and z_dim % TEMPORAL:
            raise ValueError(f"a frame-separable autoencoder needs z_dim divisible by {TEMPORAL} "
                             f"(z_dim / 4 coefficients per frame), got {z_dim}")
        # Fixed (fitted, never trained) maps, saved with the model.
        self.components = nn.Parameter(torch.zeros(z_dim, d), requires_grad=False)  # rows: principal axes
        self.offset = nn.Parameter(torch.zeros(d), requires_grad=False)  # patch mean
        if latents_mean is None:
            self.register_to_config(latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)

    # -- layout ----------------------------------------------------------------------------
    def _patches(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
        """(B, C, F, H, W), F = 1+4k -> (B, T, h, w, 4*p*p*C) patch vectors, frame 0 repeated 4x."""
        B, C, F, H, W = x.shape
        p = self.config.patch_size
        if (F - 1) % TEMPORAL:
            raise ValueError(f"number of frames must be 1+4k (e.g. 9, 17), got {F}")
        if H % p or W % p:
            raise ValueError(f"height and width must be multiples of the patch size {p}, got {H}x{W}")
        x = torch.cat([x[:, :, :1].expand(B, C, TEMPORAL, H, W), x[:, :, 1:]], dim=2)  # (B, C, 4T, H, W)
        T, h, w = x.shape[2] // TEMPORAL, H // p, W // p
        x = x.reshape(B, C, T, TEMPORAL, h, p, w, p).permute(0, 2, 4, 6, 3, 5, 7, 1)  # B T h w 4 p p C
        return x.reshape(B, T, h, w, -1), (T, h, w, C)

    def _unpatch(self, v: Tensor, T: int, h: int, w: int, C: int) -> Tensor:
        """(B, T, h, w, 4*p*p*C) -> (B, C, 1+4(T-1), H, W); frame 0 = mean of its 4 copies."""
        B, p = v.shape[0], self.config.patch_size
        x = v.reshape(B, T, h, w, TEMPORAL, p, p, C).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(B, C, T * TEMPORAL, h * p, w * p)
        return torch.cat([x[:, :, :TEMPORAL].mean(dim=2, keepdim=True), x[:, :, TEMPORAL:]], dim=2)

    # -- fitting ---------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, videos: Tensor) -> "PatchAutoencoder":
        """PCA on the patches of `videos` (N, C, F, H, W) in [-1, 1]; sets the latent statistics.

        `frame_separable`: one PCA basis of single-frame p x p patches (z_dim / 4 coefficients), applied
        to each of the 4 frames of a latent patch (a block-diagonal map), so a moving object stays a
        translated shape in the latent instead of a temporal pattern.
        """
        v, _ = self._patches(videos.float())
        v = v.reshape(-1, v.shape[-1]).double()
        if self.config.frame_separable:
            per_frame = v.reshape(-1, v.shape[-1] // TEMPORAL)  # (n * 4, p*p*C)
            comps1, mean1 = _pca(per_frame, self.config.z_dim // TEMPORAL)
            comps = torch.block_diag(*[comps1] * TEMPORAL)  # (z, d): frame-major, like the patch vector
            mean = mean1.repeat(TEMPORAL)
        else:
            comps, mean = _pca(v, self.config.z_dim)
        self.components.data.copy_(comps.float())
        self.offset.data.copy_(mean.float())
        z = (v - mean) @ comps.T  # (n, z)
        self.register_to_config(latents_mean=z.mean(0).float().tolist(), latents_std=z.std(0).clamp_min(1e-6).float().tolist())
        return self

    # -- the linear part (for errors: decode(z + e) - decode(z) = linear_decode(e) before clamping) --
    def linear_encode(self, x: Tensor) -> Tensor:
        """A pixel-space difference (B, C, F, H, W) -> its latent difference (B, z, T, h, w), raw units."""
        v, _ = self._patches(x.to(self.components.dtype))
        return (v @ self.components.T).permute(0, 4, 1, 2, 3).contiguous()

    def linear_decode(self, z: Tensor) -> Tensor:
        """A raw latent difference (B, z, T, h, w) -> its pixel difference (B, C, F, H, W), unclamped."""
        B, _, T, h, w = z.shape
        v = z.to(self.components.dtype).permute(0, 2, 3, 4, 1) @ self.components
        return self._unpatch(v, T, h, w, self.config.in_channels)

    # -- the AutoencoderKLWan interface -----------------------------------------------------
    def encode(self, x: Tensor, return_dict: bool = True):
        v, (T, h, w, _) = self._patches(x.to(self.components.dtype))
        z = (v - self.offset) @ self.components.T  # (B, T, h, w, z)
        z = z.permute(0, 4, 1, 2, 3).contiguous()  # (B, z, T, h, w)
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.full_like(z, -30.0)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True):
        B, _, T, h, w = z.shape
        v = z.to(self.components.dtype).permute(0, 2, 3, 4, 1) @ self.components + self.offset
        x = self._unpatch(v, T, h, w, self.config.in_channels).clamp(-1, 1)
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=x)
        return (x,)
