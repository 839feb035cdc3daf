"""Full-size ERFT training step on one GPU with random weights: step time, MFU, peak memory, ERFT overhead.

A Wan transformer at its released dimensions is built directly on the GPU in bf16 with random weights (no
checkpoint download), wrapped by `ERFTModule` exactly as `svi-train` does (LoRA r128 on the SVI targets in
fp32, gradient checkpointing), and trained on synthetic latents:

- `1.3b`, `14b`: Wan 2.1 I2V (36 input channels, 512 text + 257 CLIP tokens), an 81-frame 480x832 clip:
  latent (16, 21, 60, 104), 32,760 video tokens;
- `a14b`: Wan2.2-I2V-A14B, two 14B-size experts (`WanStack(transformer, transformer_2, boundary_ratio=0.9)`,
  36 input channels, no CLIP), one LoRA on each; a step trains the expert its sampled timestep picks, so the
  steps are timed per expert (the timestep is drawn from that expert's part of the training grid) with both
  experts resident on the GPU (the peak counts both);
- `5b`: Wan2.2-TI2V-5B (`expand_timesteps`: the first latent frame is the clean image, timestep 0 on its
  tokens, left out of the loss), 48-channel latents of a 121-frame 704x1280 clip (VAE 16x spatial):
  latent (48, 31, 44, 80), 27,280 video tokens, 512 text tokens;
- `smoke`, `smoke_a14b`, `smoke_5b`: the same layouts at toy width, to check the script on a CPU.

Two kinds of step alternate so both see the same GPU state:
- plain: flow-matching LoRA step (ablation no_erft: nothing injected, no memory);
- erft:  errors sampled from the replay memory and injected (paper probabilities), the new errors
         measured and stored (CPU memory, pinned; or --memory-device cuda).
The replay memory is first filled to its capacity with random errors (Z from --budget-gib), so inserts
pay the replacement search of a full bucket as in steady-state training.

    python benchmarks/gpu_full_size.py --model 1.3b                   # ~1 minute on an H100
    python benchmarks/gpu_full_size.py --model 14b --steps 6          # needs ~70 GiB of GPU memory
    python benchmarks/gpu_full_size.py --model 14b --replacement l2   # the exact search (slow at Z=500)
    python benchmarks/gpu_full_size.py --model a14b --steps 4         # both experts resident (~57 GB of bf16 weights)
    python benchmarks/gpu_full_size.py --model 5b --steps 6
    python benchmarks/gpu_full_size.py --model 14b --attention-backend _native_cudnn --compile \
        --selective-checkpointing 2                                   # the MFU options (each off by default)
    python benchmarks/gpu_full_size.py --model smoke_5b --device cpu --frames 17 --height 64 --width 64

Options aimed at MFU, each off by default and printed in the header line:
`--attention-backend NAME` (diffusers' `ModelMixin.set_attention_backend` on every expert, e.g. `flash`,
`_flash_3`, `_native_cudnn`, `_native_flash`, `sage`), `--compile` (`torch.compile` of each transformer
block, diffusers' `compile_repeated_blocks`), `--selective-checkpointing N` (recompute only blocks
0, N, 2N, ... in backward; the others keep their activations: less recompute, more memory; N = 1 is the
default full checkpointing).

Reports the median step time of each kind (and of each expert for `a14b`), the ERFT / plain ratio, the
MFU of each, the time spent in the memory (inserting), the peak GPU memory, and the memory's host bytes.

MFU = 3 x forward FLOPs / step time / peak bf16 FLOP/s (backward = 2 x forward; the recomputed forward of
gradient checkpointing is not counted, so checkpointing shows as lower MFU). The forward FLOPs are the
matmul FLOPs of `wan_forward_flops` (its docstring has the formula); the peak comes from `--peak-tflops`
or a table of dense bf16 peaks by device name (H100 / H200 SXM: 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

WAN21 = {  # diffusers WanTransformer3DModel dims of Wan 2.1 (I2V layout: 36 input channels, CLIP tokens)
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "smoke": dict(num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_layers=2),  # checks the script
}
COMMON = dict(patch_size=(1, 2, 2), in_channels=36, out_channels=16, text_dim=4096, freq_dim=256,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280,
              rope_max_seq_len=1024)
NO_CLIP = dict(image_dim=None, added_kv_proj_dim=None)
# model -> (transformer config, family); families: i2v (Wan 2.1), a14b (two experts), ti2v (expand_timesteps)
MODELS = {
    **{name: ({**COMMON, **dims, "added_kv_proj_dim": dims["num_attention_heads"] * dims["attention_head_dim"]},
              "i2v") for name, dims in WAN21.items()},
    # Wan2.2-I2V-A14B: each expert has the 14B dims, 36 input channels, no CLIP image path
    "a14b": ({**COMMON, **WAN21["14b"], **NO_CLIP}, "a14b"),
    "smoke_a14b": ({**COMMON, **WAN21["smoke"], **NO_CLIP}, "a14b"),
    # Wan2.2-TI2V-5B: 48 latent channels in and out, 24 heads x 128, ffn 14336, 30 layers, no CLIP
    "5b": ({**COMMON, **NO_CLIP, "in_channels": 48, "out_channels": 48, "num_attention_heads": 24,
            "attention_head_dim": 128, "ffn_dim": 14336, "num_layers": 30}, "ti2v"),
    "smoke_5b": ({**COMMON, **WAN21["smoke"], **NO_CLIP, "in_channels": 48, "out_channels": 48}, "ti2v"),
}
CLIPS = {"i2v": (81, 480, 832), "a14b": (81, 480, 832), "ti2v": (121, 704, 1280)}  # frames, height, width
SPATIAL = {"i2v": 8, "a14b": 8, "ti2v": 16}  # VAE spatial compression (Wan 2.1 VAE / Wan 2.2 VAE)
BOUNDARY_RATIO = 0.9  # Wan2.2-I2V-A14B's model_index.json
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "RTX 4090": 165.0}  # dense bf16, tensor cores (SXM parts)


def wan_forward_flops(cfg: dict, latent: tuple[int, int, int, int], text_tokens: int = 512,
                      image_tokens: int = 0, per_token_timesteps: bool = False) -> float:
    """Matmul FLOPs of one forward of a `WanTransformer3DModel` with config `cfg` on one latent (C, T, h, w).

    With d = heads x head_dim, f = ffn_dim, p = patch volume (1x2x2), L = T (h/2)(w/2) video tokens,
    Lt text tokens, Li CLIP image tokens (0 without the image path), one multiply-add = 2 FLOPs:

        per block:  self-attention   q, k, v, o projections   8 L d^2
                                     scores QK^T and AV        4 L^2 d
                    cross-attention  q, o on video tokens      4 L d^2
                                     k, v of text (and image)  4 (Lt + Li) d^2
                                     scores and AV             4 L (Lt + Li) d
                    FFN              two matmuls               4 L d f
        outside:    patch embedding  2 L (C_in p) d;   output projection 2 L d (C_out p)
                    text embedder    2 Lt (text_dim d + d^2);   image embedder 2 Li (image_dim^2 + image_dim d)
                    time embedding   2 n (freq_dim d + d^2 + 6 d^2), n = L with per-token timesteps
                                     (Wan 2.2 TI2V's expand_timesteps), else 1

    Norms, RoPE, softmax, modulation and activations are left out (a few % of the total at these sizes).
    Wan 2.1 14B on an 81x480x832 clip (L = 32,760, Lt = 512, Li = 257): 1.686 PFLOP per forward; Wan2.2-TI2V-5B
    on 121x704x1280 (L = 27,280, per-token timesteps): 0.521 PFLOP; each A14B expert on 81x480x832: 1.678 PFLOP.
    """
    c_in = cfg["in_channels"]
    _, t, h, w = latent
    pt, ph, pw = cfg["patch_size"]
    p = pt * ph * pw
    L = (t // pt) * (h // ph) * (w // pw)
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = cfg["ffn_dim"]
    Lt, Li = text_tokens, (image_tokens if cfg.get("image_dim") else 0)
    block = 8 * L * d * d + 4 * L * L * d + 4 * L * d * d + 4 * (Lt + Li) * d * d + 4 * L * (Lt + Li) * d \
        + 4 * L * d * f
    n_t = L if per_token_timesteps else 1
    outside = 2 * L * c_in * p * d + 2 * L * d * cfg["out_channels"] * p + 2 * Lt * (cfg["text_dim"] * d + d * d) \
        + 2 * n_t * (cfg["freq_dim"] * d + 7 * d * d)
    if Li:
        outside += 2 * Li * (cfg["image_dim"] ** 2 + cfg["image_dim"] * d)
    return float(cfg["num_layers"] * block + outside)


def _flop(n: float) -> str:
    return f"{n / 1e15:.3f} PFLOP" if n >= 1e13 else f"{n / 1e9:.3f} GFLOP"


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def build_transformer(model: str, device: str, seed: int = 0):
    """Random Wan transformer built on the device in bf16 (a 14B model never touches host memory)."""
    from diffusers import WanTransformer3DModel

    cfg = MODELS[model][0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            dit = WanTransformer3DModel(**cfg)
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():  # small weights keep 40 random blocks finite in bf16
        for m in dit.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 0.02, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
    return dit


def build_stack(model: str, device: str):
    """The `WanStack` of `model`: one transformer, two experts (a14b), or the TI2V layout (5b)."""
    from svi.backbones.wan import WanStack

    family = MODELS[model][1]
    if family == "a14b":
        return WanStack(build_transformer(model, device, 0), transformer_2=build_transformer(model, device, 1),
                        boundary_ratio=BOUNDARY_RATIO)
    return WanStack(build_transformer(model, device), expand_timesteps=family == "ti2v")


def latent_shape(model: str, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    cfg, family = MODELS[model]
    s = SPATIAL[family]
    return (cfg["out_channels"], 1 + (frames - 1) // 4, height // s, width // s)


def synthetic_batch(model: str, condition, frames: int, height: int, width: int, device: str) -> dict:
    c, t, h, w = latent_shape(model, frames, height, width)
    mask = condition.mask(1, frames, h, w, device=device)  # (1, 4, T, h, w): latent frame 0 known
    batch = {"latents": torch.randn(1, c, t, h, w, device=device),
             "y": torch.cat([mask, torch.randn(1, c, t, h, w, device=device)], dim=1),
             "text": torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16)}
    if MODELS[model][0].get("image_dim"):
        batch["image"] = torch.randn(1, 257, 1280, device=device, dtype=torch.bfloat16)
    return batch


def fill_memory(memory, shape, generator) -> None:
    """Every bucket of both banks to its capacity with random errors (scaled copies of a few distinct ones)."""
    pool = [torch.randn(shape, generator=generator) * s for s in (0.05, 0.1, 0.2, 0.4)]
    for bucket in range(memory.vid.num_buckets):
        i = 0
        while i == 0 or int(memory.vid.counts[bucket]) < memory.vid.z:  # z is known after the first insert
            e = pool[i % len(pool)] * (1 + 0.01 * i)
            memory.add(torch.tensor([bucket]), e[None], e[None])
            i += 1


def selective_checkpointing(dit, every: int) -> None:
    """Recompute only blocks 0, every, 2 every, ... in backward: diffusers calls
    `_gradient_checkpointing_func(block, ...)` for each block; the others run plainly and keep activations."""
    index = {id(block): i for i, block in enumerate(dit.blocks)}
    full = dit._gradient_checkpointing_func

    def maybe(block, *args, **kwargs):
        if index.get(id(block), 0) % every == 0:
            return full(block, *args, **kwargs)
        return block(*args, **kwargs)

    dit._gradient_checkpointing_func = maybe


def compile_blocks(dit) -> None:
    """torch.compile of each transformer block (one graph reused by all: diffusers' regional compilation)."""
    if hasattr(dit, "compile_repeated_blocks"):
        dit.compile_repeated_blocks()
    else:
        for block in dit.blocks:
            block.compile()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), default="1.3b")
    ap.add_argument("--frames", type=int, default=None, help="default: 81 (Wan 2.1, A14B), 121 (5B)")
    ap.add_argument("--height", type=int, default=None, help="default: 480 (Wan 2.1, A14B), 704 (5B)")
    ap.add_argument("--width", type=int, default=None, help="default: 832 (Wan 2.1, A14B), 1280 (5B)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each kind (of each expert for a14b)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    ap.add_argument("--lora-rank", type=int, default=128)
    ap.add_argument("--no-checkpointing", action="store_true", help="keep all activations (more memory)")
    ap.add_argument("--selective-checkpointing", type=int, default=None, metavar="N",
                    help="recompute only every Nth block (N=1: all, the default behaviour)")
    ap.add_argument("--attention-backend", default=None, metavar="NAME",
                    help="diffusers attention backend for every expert (flash, _flash_3, _native_cudnn, sage, ...)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    ap.add_argument("--replacement", default="l2_sketch", choices=("l2", "l2_sketch", "random", "fifo"))
    ap.add_argument("--memory-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16", "float8"))
    ap.add_argument("--memory-device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--budget-gib", type=float, default=8.0, help="replay memory budget, both banks (sets Z)")
    ap.add_argument("--capacity", type=int, default=500, help="Z before the budget")
    ap.add_argument("--device", default="cuda", help="cpu only to check the script (--model smoke*, small clip)")
    args = ap.parse_args()
    cfg, family = MODELS[args.model]
    frames, height, width = (v if v is not None else d for v, d in
                             zip((args.frames, args.height, args.width), CLIPS[family]))
    if args.selective_checkpointing is not None and (args.selective_checkpointing < 1 or args.no_checkpointing):
        raise SystemExit("--selective-checkpointing N needs N >= 1 and checkpointing on")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_full_size.py needs a CUDA GPU")
    warnings.filterwarnings("ignore")  # `self.log` outside a Trainer
    torch.backends.cuda.matmul.allow_tf32 = True

    from svi.conditions import ShotCondition
    from svi.erft.memory import MemoryConfig, ReplayMemory
    from svi.lit import ERFTModule

    t0 = time.perf_counter()
    stack = build_stack(args.model, args.device)
    experts = [dit for _, dit in stack.experts]
    condition = ShotCondition()
    module = ERFTModule(stack, condition, lora={"rank": args.lora_rank, "alpha": args.lora_rank},
                        injection={"p_noi": 0.01, "p_vid": 0.9, "p_img": 0.9, "p_clean": 0.2},
                        gradient_checkpointing=not args.no_checkpointing).to(args.device)
    for dit in experts:
        if args.selective_checkpointing and args.selective_checkpointing > 1:
            selective_checkpointing(dit, args.selective_checkpointing)
        if args.attention_backend:
            dit.set_attention_backend(args.attention_backend)
        if args.compile:
            compile_blocks(dit)
    module.train()
    params = module.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    n_base = sum(p.numel() for dit in experts for p in dit.parameters() if not p.requires_grad)
    n_lora = sum(p.numel() for p in params)
    batch = synthetic_batch(args.model, condition, frames, height, width, args.device)
    shape = tuple(batch["latents"].shape[1:])
    flops = wan_forward_flops(cfg, shape, text_tokens=batch["text"].shape[1],
                              image_tokens=batch["image"].shape[1] if "image" in batch else 0,
                              per_token_timesteps=family == "ti2v")
    device_name = torch.cuda.get_device_name() if cuda else args.device
    peak = peak_tflops(device_name, args.peak_tflops) if cuda else args.peak_tflops
    name = {"i2v": "Wan 2.1", "a14b": "Wan 2.2 I2V-A14B", "ti2v": "Wan 2.2 TI2V-5B"}[family]
    print(f"{name} {args.model}: {n_base / 1e9:.2f} B frozen + {n_lora / 1e6:.0f} M LoRA params"
          f"{f' ({len(experts)} experts, a LoRA each)' if len(experts) > 1 else ''}; clip {frames}x{height}x{width}, "
          f"latent {shape}; forward {_flop(flops)}; built in {time.perf_counter() - t0:.0f} s on "
          f"{device_name}; attention_backend={args.attention_backend or 'default'} compile={args.compile} "
          f"checkpointing={'off' if args.no_checkpointing else f'every {args.selective_checkpointing or 1}'} "
          f"peak={f'{peak:.0f} TFLOP/s' if peak else 'unknown'}")

    memory = ReplayMemory(MemoryConfig(num_grids=50, capacity=args.capacity, replacement=args.replacement,
                                       dtype=args.memory_dtype, device=args.memory_device, budget_gib=args.budget_gib))
    t0 = time.perf_counter()
    fill_memory(memory, shape, torch.Generator().manual_seed(0))
    print(f"replay memory: Z = {memory.vid.z} per bucket from {args.budget_gib} GiB, {args.memory_dtype} on "
          f"{args.memory_device}, {args.replacement}; filled ({memory.nbytes / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.0f} s")

    coins = torch.Generator().manual_seed(1)
    # a14b: a step trains the expert its timestep picks; each expert is timed on its part of the training grid
    all_sigmas, all_weights = module.train_sigmas.clone(), module.train_weights.clone()
    if family == "a14b":
        high = all_sigmas * 1000.0 >= stack.boundary_timestep
        parts = {"high-noise expert": high, "low-noise expert": ~high}
    else:
        parts = {"": torch.ones_like(all_sigmas, dtype=torch.bool)}
    timings: dict[str, list[float]] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(kind: str, part: str) -> None:
        erft = kind == "erft"
        module.injection.enabled = erft
        module.error_memory = memory.reader() if erft else None
        keep = parts[part]
        module.train_sigmas, module.train_weights = all_sigmas[keep], all_weights[keep]
        sync()
        t = time.perf_counter()
        out = module.training_step(batch, 0)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if erft:  # what ErrorReplayCallback does on one rank after warmup
            t_insert = time.perf_counter()
            e = out["erft"]
            clean = e["clean"].bool().cpu()
            keep = ~clean | (torch.rand(clean.shape[0], generator=coins) < 0.1)
            memory.add(e["grid"].cpu(), e["e_vid"], e["e_noi"], keep=keep)
            timings.setdefault((part, "erft: insert"), []).append(time.perf_counter() - t_insert)
        sync()
        timings.setdefault((part, kind), []).append(time.perf_counter() - t)

    for part in parts:
        for _ in range(args.warmup):
            step("plain", part)
            step("erft", part)
    timings.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.steps):
        for part in parts:
            for kind in (("plain", "erft") if i % 2 == 0 else ("erft", "plain")):
                step(kind, part)

    def mfu(seconds: float) -> str:
        return f"MFU {3 * flops / seconds / (peak * 1e12) * 100:.1f} %" if peak else "MFU n/a: no peak known"

    for part in parts:
        med = {k: statistics.median(timings[(part, k)]) for k in ("plain", "erft", "erft: insert")}
        print(f"step{f' [{part}]' if part else ''} (median of {args.steps}): plain {med['plain']:.3f} s "
              f"({mfu(med['plain'])}), erft {med['erft']:.3f} s ({mfu(med['erft'])}), "
              f"ERFT / plain = {med['erft'] / med['plain']:.3f}; of the erft step, inserting into the memory "
              f"{med['erft: insert'] * 1e3:.1f} ms")
    resident = f" ({len(experts)} experts resident)" if len(experts) > 1 else ""
    peak_mem = (f"peak GPU memory{resident} {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (allocated), "
                f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB (reserved); ") if cuda else ""
    print(f"{peak_mem}replay memory {memory.nbytes / 2**30:.2f} GiB on {args.memory_device}; "
          f"non-finite errors refused: {memory.vid.num_nonfinite}")


if __name__ == "__main__":
    main()
