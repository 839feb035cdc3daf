"""Train the real `AutoencoderKLWan` at toy size on toy-world clips: the learned alternative to the linear
patch autoencoder (`svi.toy.autoencoder`), with the toy latent's shape, so the toy DiT takes it unchanged.

    python -m svi.toy.train_autoencoder --out outputs/toy_vae --minutes 60     # run again to continue

The VAE has Wan's architecture at 4x spatial and 4x temporal compression (`dim_mult` [1, 1, 1]; Wan's own
8x would leave a 4x4 latent at 32x32) and 64 latent channels: a 5-frame clip is (64, 2, 8, 8), Wan's causal
layout (latent 0 = frame 0), the same shape and compression (3x) as the linear autoencoder of the toy bases.
It trains with an L1 reconstruction loss plus a small KL term on 9-frame clips of the toy bases' training
world (2 sprites, the default sizes and speeds), batch 8, AdamW.

Every `--eval-every` steps it scores the held-out clips (PSNR over the full frame; the linear autoencoder's
is printed beside it), appends a row to `log.csv` and writes `checkpoint.pt` (weights, optimizer, step), so a
run stopped by `--minutes` or by hand continues from there, drawing the same clips it would have drawn.
At the end (`--steps` reached or the time budget spent) it writes `vae/` (or `--export`) with
`save_pretrained`, the latent statistics (`latents_mean`, `latents_std`, per channel over training clips) in
its config: the folder a toy backbone reads with `vae: {path: <out>/vae}` (`svi.toy.backbone.build_toy_wan`).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from svi.toy.clips import TEST, ToyClips, toy_videos

WORLD = {"height": 32, "width": 32, "min_sprites": 2, "max_sprites": 2, "sprite_size": [0.07, 0.14],
         "speed": [0.008, 0.03]}  # the toy bases' training world (conf/data/toy.yaml)
LOG_FIELDS = ["step", "seconds", "train_l1", "heldout_psnr_db"]


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of frames in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4 / (x.clamp(-1, 1) - ref).pow(2).mean()))


def build_vae(base_dim: int = 32, z_dim: int = 64):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[True, True])


@torch.no_grad()
def reconstruct(vae, videos: torch.Tensor) -> torch.Tensor:
    return vae.decode(vae.encode(videos).latent_dist.mode(), return_dict=False)[0]


@torch.no_grad()
def latent_stats(vae, videos: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the latents (mode) of `videos`: the config's normalisation."""
    z = vae.encode(videos).latent_dist.mode()
    z = z.transpose(0, 1).reshape(z.shape[1], -1).double()
    return z.mean(1).float().tolist(), z.std(1).clamp_min(1e-6).float().tolist()


def _batch(data: ToyClips, step: int, batch: int) -> torch.Tensor:
    return torch.stack([data[step * batch + i]["video"] for i in range(batch)])


def _save(path: Path, vae, opt, step: int, seconds: float, shape: list[int]) -> None:
    torch.save({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "rng": torch.get_rng_state(), "seconds": round(seconds, 1), "shape": shape}, path)


def _check(args) -> None:
    for name in ("steps", "batch", "eval_every", "base_dim", "z_dim"):
        if getattr(args, name) < 1:
            raise SystemExit(f"train_autoencoder: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0 or not args.minutes > 0:
        raise SystemExit("train_autoencoder: --lr and --minutes must be > 0")


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.csv, vae/)")
    p.add_argument("--export", type=Path, default=None, help="where to write the trained VAE (default: <out>/vae)")
    p.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    p.add_argument("--minutes", type=float, default=600.0, help="wall-clock budget of this call; then checkpoint")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl", type=float, default=1e-6, help="weight of the KL term")
    p.add_argument("--base-dim", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=64, help="latent channels: 64 = the toy DiT's")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="initial weights and the training clips")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = args.out / "checkpoint.pt", args.out / "log.csv"

    torch.manual_seed(args.seed)
    vae = build_vae(args.base_dim, args.z_dim)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr)
    step, elapsed0, shape = 0, 0.0, [args.base_dim, args.z_dim]
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["shape"] != shape:
            raise SystemExit(f"train_autoencoder: {ckpt_path} holds a base_dim/z_dim {state['shape']} VAE, not "
                             f"[{args.base_dim}, {args.z_dim}]; pass the same --base-dim/--z-dim or another --out")
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed0 = int(state["step"]), float(state["seconds"])
        torch.set_rng_state(state["rng"])
        print(f"[train_autoencoder] resumed from {ckpt_path} at step {step}")
    data = ToyClips(num_frames=9, seed=args.seed + 3, world=WORLD)
    heldout = toy_videos(16, 9, seed=7, world=WORLD, split=TEST)
    from svi.toy.autoencoder import PatchAutoencoder

    linear = PatchAutoencoder(z_dim=64, patch_size=4, frame_separable=True).fit(toy_videos(64, 9, seed=0, world=WORLD))
    print(f"[train_autoencoder] the linear autoencoder of the toy bases: {psnr(reconstruct(linear, heldout), heldout):.2f} "
          f"dB on the held-out clips")

    t0, losses = time.time(), []
    new_log = not log_path.exists()
    with log_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
        while step < args.steps and time.time() - t0 < 60 * args.minutes:
            vae.train()
            x = _batch(data, step, args.batch)
            post = vae.encode(x).latent_dist
            out = vae.decode(post.sample(), return_dict=False)[0]
            l1 = (out - x).abs().mean()
            loss = l1 + args.kl * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(l1.item())
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                vae.eval()
                row = {"step": step, "seconds": round(elapsed0 + time.time() - t0, 1),
                       "train_l1": round(sum(losses) / len(losses), 5),
                       "heldout_psnr_db": round(psnr(reconstruct(vae, heldout), heldout), 3)}
                writer.writerow(row)
                f.flush()
                losses = []
                _save(ckpt_path, vae, opt, step, row["seconds"], shape)
                print(f"[train_autoencoder] step {step} ({row['seconds']:.0f} s): train L1 {row['train_l1']:.4f}, "
                      f"held-out {row['heldout_psnr_db']:.2f} dB", flush=True)
    if step < args.steps:
        if step % args.eval_every:  # keep what this call did
            _save(ckpt_path, vae, opt, step, elapsed0 + time.time() - t0, shape)
        print(f"[train_autoencoder] time budget spent at step {step} of {args.steps}; run again to continue")
    vae.eval()
    mean, std = latent_stats(vae, toy_videos(64, 9, seed=0, world=WORLD))
    vae.register_to_config(latents_mean=mean, latents_std=std)
    export = args.export or args.out / "vae"
    vae.save_pretrained(export)
    print(f"[train_autoencoder] step {step}: held-out {psnr(reconstruct(vae, heldout), heldout):.2f} dB; "
          f"wrote {export}")
    return export


if __name__ == "__main__":
    main()
