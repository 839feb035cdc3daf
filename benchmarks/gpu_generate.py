"""One clip's generation time and peak memory: our sampler vs diffusers' WanImageToVideoPipeline, per lowmem mode.

    python benchmarks/gpu_generate.py                              # Wan 2.1 I2V 14B, random bf16 weights, 81x480x832, 50 steps
    python benchmarks/gpu_generate.py --path /models/Wan2.1-I2V-14B-480P-Diffusers   # real weights (local, never fetched)
    python benchmarks/gpu_generate.py --steps 10 --modes none fp8  # shorter
    python benchmarks/gpu_generate.py --smoke                      # tiny random model on the CPU, seconds

Both sides do the same work for one clip on the same weights and inputs: VAE-encode the condition (the
input image + zeros: K = 1, ref_pad_num = 0), CLIP-encode the image, `--steps` Euler steps with two
transformer calls each (CFG 5, shift 5, the same sigmas), VAE-decode to frames. Prompt embeddings are
random tensors given to both (no text encoder is built). Ours is `SVIClipSampler.stream` (what
`svi-generate` runs), placed by `svi.backbones.lowmem.place_stack` as `svi-generate lowmem.*` does; the
pipeline is built on the same modules, so it runs under the same placement and hooks.

Each lowmem mode runs in a fresh process: `none` (all on the GPU), `fp8` (float8 weight storage),
`group` (block-level group offloading), `model` (model offloading), and optionally `fp8+group`,
`sequential`. Per mode: a short warm-up clip of each (`--warmup-steps`), then ours and the pipeline
alternately `--repeats` times; printed are the median seconds per clip, the ratio ours / diffusers, and
the peak CUDA memory of each (`max_memory_allocated`, reset before each call). On the CPU (`--smoke`)
peak memory is the process's peak RSS, which offloading cannot lower.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"none": {}, "fp8": {"fp8": True}, "group": {"offload": "group"}, "model": {"offload": "model"},
         "fp8+group": {"fp8": True, "offload": "group"}, "sequential": {"offload": "sequential"}}
DEFAULT_MODES = ["none", "fp8", "group", "model"]
# Wan 2.1's CLIP image encoder (open-clip ViT-H/14 as transformers' CLIPVisionModel)
CLIP_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)


def build(args, device):
    """The WanStack (transformer, VAE, CLIP; no text encoder) on the CPU, or on `device` when `on_device`."""
    import torch

    from svi.backbones.wan import WanStack

    if args.smoke:
        from omegaconf import OmegaConf

        from svi.backbones import build_tiny_wan
        from svi.paths import CONF_DIR

        cfg = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/backbone/tiny.yaml"), resolve=True)
        cfg["components"] = ["transformer", "vae", "image_encoder"]
        return build_tiny_wan(**{k: v for k, v in cfg.items() if k != "_target_"})
    if args.path:
        from svi.backbones.wan import load_wan_dir

        return load_wan_dir(args.path, components=["transformer", "vae", "image_encoder"], dtype="bfloat16")
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_full_size import build_transformer

    dit = build_transformer("14b", str(device))  # random bf16, built where it will be placed first
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_H14))
    finally:
        torch.set_default_dtype(previous)
    with torch.device(device):
        vae = AutoencoderKLWan()  # diffusers' defaults are the Wan 2.1 VAE; fp32 as the stack runs it
    return WanStack(dit, vae=vae, image_encoder=clip)


def child(args, mode: str) -> None:
    import torch

    from svi.backbones.lowmem import LowMemSpec, place_stack
    from svi.conditions import Condition
    from svi.sampling import SVIClipSampler
    from svi.sampling.svi_clip import clip_noise
    sys.path.insert(0, str(Path(__file__).parent))
    from wan_pipeline import one_clip_request, reference_pipeline

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    F, H, W = args.frames, args.height, args.width
    spec = LowMemSpec(**MODES[mode], blocks_per_group=args.blocks_per_group)
    t0 = time.perf_counter()
    stack = build(args, device if (cuda and spec.offload == "none") else "cpu")
    place_stack(stack, device, spec)
    built = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp())
    request, pil = one_clip_request(H, W, F, tmp)
    schedule = request.schedule
    spec0 = schedule[0]
    dtype = stack.transformer.dtype
    g = torch.Generator().manual_seed(2)
    text_dim = stack.transformer.config.text_dim
    text = torch.randn(1, stack.text_len, text_dim, generator=g).to(device, dtype)
    negative = torch.randn(1, stack.text_len, text_dim, generator=g).to(device, dtype)
    condition = Condition("k1", num_motion_frames=1, ref_pad_num=0)

    def sampler(steps: int):
        s = SVIClipSampler(condition, stack=stack, flow={"num_inference_steps": steps, "shift": 5.0}, progress=False)
        s._text_cache[spec0.prompt], s._text_cache[spec0.negative_prompt] = text, negative  # no text encoder
        return s

    pipe = reference_pipeline(stack, shift=5.0)
    T, s = 1 + (F - 1) // 4, 8

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn) -> tuple[float, float | None]:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)

    def ours(steps: int):
        samp = sampler(steps)
        return lambda: list(samp.stream(request))

    def theirs(steps: int):
        return lambda: pipe(image=pil, prompt_embeds=text, negative_prompt_embeds=negative, height=H, width=W,
                            num_frames=F, num_inference_steps=steps, guidance_scale=5.0,
                            latents=clip_noise(spec0.seed, (1, 16, T, H // s, W // s)).to(device), output_type="np")

    row: dict = {"mode": mode, "build_s": round(built, 1)}
    a, b, peak_a, peak_b = [], [], [], []
    with torch.no_grad():
        if args.warmup_steps:
            timed(ours(args.warmup_steps))
            try:
                timed(theirs(args.warmup_steps))
            except Exception as exc:  # noqa: BLE001 - a placement the pipeline cannot run under is reported
                row["diffusers_error"] = f"{type(exc).__name__}: {exc}"[:200]
        for _ in range(args.repeats):
            ta, pa = timed(ours(args.steps))
            a.append(ta), peak_a.append(pa)
            if "diffusers_error" not in row:
                try:
                    tb, pb = timed(theirs(args.steps))
                    b.append(tb), peak_b.append(pb)
                except Exception as exc:  # noqa: BLE001
                    row["diffusers_error"] = f"{type(exc).__name__}: {exc}"[:200]
    row["ours_s"] = round(statistics.median(a), 3)
    row["diffusers_s"] = round(statistics.median(b), 3) if b else None
    row["ratio"] = round(row["ours_s"] / row["diffusers_s"], 3) if b else None
    if cuda:
        row["ours_peak_gib"] = round(max(peak_a), 2)
        row["diffusers_peak_gib"] = round(max(peak_b), 2) if b else None
    else:
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU (17x64x64, 4 steps)")
    ap.add_argument("--path", default=None, help="a local diffusers-format Wan 2.1 I2V directory (else random 14B)")
    ap.add_argument("--frames", type=int, default=None, help="default 81 (smoke 17)")
    ap.add_argument("--height", type=int, default=None, help="default 480 (smoke 64)")
    ap.add_argument("--width", type=int, default=None, help="default 832 (smoke 64)")
    ap.add_argument("--steps", type=int, default=None, help="Euler steps per clip, default 50 (smoke 4)")
    ap.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up clip (0: none)")
    ap.add_argument("--repeats", type=int, default=1, help="timed clips of each per mode")
    ap.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    ap.add_argument("--blocks-per-group", type=int, default=1)
    ap.add_argument("--device", default=None, help="default cuda (smoke: cpu)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per mode before it is abandoned")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    small = args.smoke
    args.frames = args.frames or (17 if small else 81)
    args.height = args.height or (64 if small else 480)
    args.width = args.width or (64 if small else 832)
    args.steps = args.steps or (4 if small else 50)
    args.device = args.device or ("cpu" if small else "cuda")
    if args.child is not None:
        return child(args, args.child)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_generate.py needs a CUDA GPU (or --smoke for the CPU check)")
    what = "tiny random (smoke)" if small else (f"local weights {Path(args.path).name}" if args.path
                                                 else "Wan 2.1 I2V 14B random bf16")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{what}; one clip {args.frames}x{args.height}x{args.width}, {args.steps} steps, cfg 5, "
          f"warm-up {args.warmup_steps} steps, median of {args.repeats}; {device_name}")
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--frames", str(args.frames), "--height", str(args.height),
               "--width", str(args.width), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
               "--repeats", str(args.repeats), "--blocks-per-group", str(args.blocks_per_group),
               "--device", args.device] + (["--smoke"] if small else []) + (["--path", args.path] if args.path else [])
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"mode": mode, "error": f"timed out after {args.timeout} s"})
            continue
        if res.returncode:
            rows.append({"mode": mode, "error": (res.stderr.strip().splitlines() or ["?"])[-1][:200]})
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"  {mode}: {json.dumps(rows[-1])}", flush=True)
    keys = ["ours_s", "diffusers_s", "ratio"] + (["ours_peak_gib", "diffusers_peak_gib"]
                                                  if args.device.startswith("cuda") else ["peak_rss_gib"])
    print(f"{'lowmem':<12}" + "".join(f"{k:>20}" for k in keys))
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<12}  error: {row['error']}")
            continue
        print(f"{row['mode']:<12}" + "".join(f"{str(row.get(k)):>20}" for k in keys)
              + (f"   diffusers: {row['diffusers_error']}" if "diffusers_error" in row else ""))


if __name__ == "__main__":
    sys.exit(main())
