"""Which autoencoder for the toy world: the real `AutoencoderKLWan` trained from scratch vs the fixed
linear patch autoencoder (`svi.toy.autoencoder`), on held-out toy clips at 32x32.

The Wan VAE is built at 4x spatial / 4x temporal compression (dim_mult [1, 1, 1]; Wan's own 8x would leave
a 4x4 latent at 32x32) and trained with an L1 + KL objective for a fixed wall-clock budget; the PCA
autoencoder is fitted once. Prints reconstruction PSNR (full frame) of both, the time each took, and what
encoding one pretraining batch costs with each (the toy base encodes its clips on the fly).
`--z-dim 64` gives the VAE the toy latent's size (64 channels per 4 frames at 8x8, 3x compression, the
shipped autoencoder's), so its latents could feed the toy DiT unchanged.

    python benchmarks/toy_autoencoder.py --seconds 300
"""

from __future__ import annotations

import argparse
import time

import torch

from svi.toy.autoencoder import PatchAutoencoder
from svi.toy.clips import TEST, ToyClips, toy_videos
from svi.toy.train_autoencoder import build_vae, psnr


def _seconds(fn, reps: int = 5) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--base-dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--z-dim", type=int, default=16,
                    help="VAE latent channels: 16 = Wan's (12x compression), 64 = the toy latent's (3x)")
    args = ap.parse_args()
    torch.manual_seed(0)
    test = toy_videos(16, 9, seed=7, split=TEST)

    t0 = time.time()
    pca = PatchAutoencoder(z_dim=16, patch_size=2).fit(toy_videos(64, 9, seed=0))
    t_pca = time.time() - t0
    rec = pca.decode(pca.encode(test).latent_dist.mode(), return_dict=False)[0]
    print(f"linear patch AE (PCA, 2x2x4 -> 16, 3x compression): {psnr(rec, test):.2f} dB, fitted in {t_pca:.2f} s")
    t0 = time.time()
    toy = PatchAutoencoder(z_dim=64, patch_size=4, frame_separable=True).fit(toy_videos(64, 9, seed=0))
    t_toy = time.time() - t0
    rec = toy.decode(toy.encode(test).latent_dist.mode(), return_dict=False)[0]
    print(f"the toy bases' autoencoder (PCA, 4x4 per frame -> 16 x 4 frames = 64, 3x compression): "
          f"{psnr(rec, test):.2f} dB, fitted in {t_toy:.2f} s")

    vae = build_vae(args.base_dim, args.z_dim)
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr)
    data = ToyClips(num_frames=9, seed=3)
    step, t0, last = 0, time.time(), 0.0
    while time.time() - t0 < args.seconds:
        x = torch.stack([data[step * args.batch + i]["video"] for i in range(args.batch)])
        post = vae.encode(x).latent_dist
        out = vae.decode(post.sample(), return_dict=False)[0]
        loss = (out - x).abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if time.time() - last > 60:
            last = time.time()
            with torch.no_grad():
                r = vae.decode(vae.encode(test).latent_dist.mode(), return_dict=False)[0]
            print(f"  AutoencoderKLWan step {step} ({time.time() - t0:.0f} s): held-out {psnr(r, test):.2f} dB")
    with torch.no_grad():
        r = vae.decode(vae.encode(test).latent_dist.mode(), return_dict=False)[0]
        clip = torch.stack([data[i]["video"][:, :5] for i in range(8)])  # a pretraining batch: 8 clips of 5 frames
        cost = {name: _seconds(lambda ae=ae: ae.encode(clip)) for name, ae in (("toy PCA", toy), ("VAE", vae))}
    print("encoding one pretraining batch (8 clips of 5 frames; the toy base's step takes about 0.2 s): "
          + ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in cost.items()))
    print(f"AutoencoderKLWan (base_dim {args.base_dim}, {n_params / 1e6:.2f} M params, 4x4x4 -> {args.z_dim}, "
          f"{192 // args.z_dim}x compression): "
          f"{psnr(r, test):.2f} dB after {step} steps in {time.time() - t0:.0f} s "
          f"({(time.time() - t0) / step:.2f} s/step, batch {args.batch})")


if __name__ == "__main__":
    main()
