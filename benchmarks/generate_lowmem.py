"""Peak memory of one transformer forward under each low-memory option (svi-generate lowmem.*), side by side.

    python benchmarks/generate_lowmem.py                          # tiny backbone, CPU
    python benchmarks/generate_lowmem.py --size 14b --latent 21 60 104 --device cuda   # Wan 14B I2V, 81x480x832
    python benchmarks/generate_lowmem.py --size 1.3b --modes none fp8 group fp8+group

Each mode runs in a fresh process on a random-init transformer of the chosen size (bf16 unless --dtype):
peak memory is CUDA `max_memory_allocated` on a GPU, else the process's peak RSS (on the CPU the weights
always live in RAM, so offloading cannot lower RSS there; only fp8 storage can). The output is compared
with mode `none` (max |difference| / max |output|).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # WanTransformer3DModel configs (I2V for 14b, T2V for 1.3b as released)
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=36, out_channels=16,
                 text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", image_dim=24, added_kv_proj_dim=64, rope_max_seq_len=64),
    "1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", image_dim=None, rope_max_seq_len=1024),
    "14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024),
}
MODES = {"none": {}, "fp8": {"fp8": True}, "model": {"offload": "model"}, "group": {"offload": "group"},
         "fp8+group": {"fp8": True, "offload": "group"}, "sequential": {"offload": "sequential"}}


def child(args, out: Path) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    from svi.backbones.lowmem import LowMemSpec, place_stack
    from svi.backbones.wan import WanStack

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    cfg = dict(SIZES[args.size])
    if args.layers:
        cfg["num_layers"] = args.layers
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # random init directly in the storage dtype: no fp32 copy in the peak
    dit = WanTransformer3DModel(**cfg).to(dtype)
    torch.set_default_dtype(torch.float32)
    stack = WanStack(dit)
    spec = LowMemSpec(**MODES[args.child], blocks_per_group=args.blocks_per_group)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    place_stack(stack, device, spec)
    f, h, w = args.latent
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg["in_channels"], f, h, w, generator=g).to(device, dtype)
    text = torch.randn(1, 512, cfg["text_dim"], generator=g).to(device, dtype)
    image = (torch.randn(1, 257, cfg["image_dim"], generator=g).to(device, dtype) if cfg.get("image_dim") else None)
    times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            y = dit(hidden_states=x, timestep=torch.tensor([700.0], device=device), encoder_hidden_states=text,
                    encoder_hidden_states_image=image, return_dict=False)[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    y = y.float().cpu()
    extra = {}
    if device.type == "cuda":
        peak, what = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated_mb"
    else:  # the peak includes building the model in bf16, so also the resident size after the forwards
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_mb"
        with open("/proc/self/statm") as fh:
            extra["rss_after_mb"] = round(int(fh.read().split()[1]) * resource.getpagesize() / 2**20, 1)
    torch.save(y, out / f"{args.child}.pt")
    weights = sum(p.numel() * p.element_size() for p in dit.parameters()) / 2**20
    print(json.dumps({"mode": args.child, what: round(peak, 1), **extra, "weights_mb": round(weights, 1),
                      "seconds_per_forward": round(min(times), 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="override the number of blocks")
    ap.add_argument("--latent", type=int, nargs=3, default=[2, 8, 8], metavar=("F", "H", "W"),
                    help="latent frames, height, width (81 x 480 x 832 frames = 21 60 104)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--blocks-per-group", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child(args, args.out)
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        modes = ["none"] + [m for m in args.modes if m != "none"]
        for mode in modes:
            cmd = [sys.executable, __file__, "--child", mode, "--out", tmp, "--size", args.size, "--dtype", args.dtype,
                   "--device", args.device, "--latent", *map(str, args.latent), "--repeats", str(args.repeats),
                   "--blocks-per-group", str(args.blocks_per_group)] + (["--layers", str(args.layers)] if args.layers else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                rows.append({"mode": mode, "error": res.stderr.strip().splitlines()[-1]})
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            ref, y = torch.load(Path(tmp) / "none.pt"), torch.load(Path(tmp) / f"{mode}.pt")
            row["max_rel_diff_vs_none"] = float(f"{((y - ref).abs().max() / ref.abs().max()).item():.2e}")
            rows.append(row)
    print(f"size={args.size} layers={args.layers or SIZES[args.size]['num_layers']} latent={args.latent} "
          f"dtype={args.dtype} device={args.device}")
    keys = [k for k in rows[0] if k != "mode"] if "error" not in rows[0] else ["error"]
    print(f"{'mode':<12}" + "".join(f"{k:>24}" for k in keys))
    for row in rows:
        print(f"{row['mode']:<12}" + "".join(f"{str(row.get(k, row.get('error', ''))):>24}" for k in keys))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    main()
