"""Full-size ERFT training step on one GPU with random weights: step time, peak memory, ERFT overhead.

A Wan 2.1 I2V transformer at 1.3B or 14B dimensions is built directly on the GPU in bf16 with random
weights (no checkpoint download), wrapped by `ERFTModule` exactly as `svi-train` does (LoRA r128 on the
SVI targets in fp32, gradient checkpointing), and trained on synthetic latents of an 81-frame 480x832
clip: latent (16, 21, 60, 104), 32,760 video tokens, 512 text and 257 CLIP tokens.

Two kinds of step alternate so both see the same GPU state:
- plain: flow-matching LoRA step (ablation no_erft: nothing injected, no memory);
- erft:  errors sampled from the replay memory and injected (paper probabilities), the new errors
         measured and stored (CPU memory, pinned; or --memory-device cuda).
The replay memory is first filled to its capacity with random errors (Z from --budget-gib), so inserts
pay the replacement search of a full bucket as in steady-state training.

    python benchmarks/gpu_full_size.py --model 1.3b                   # ~1 minute on an H100
    python benchmarks/gpu_full_size.py --model 14b --steps 6          # needs ~70 GiB of GPU memory
    python benchmarks/gpu_full_size.py --model 14b --replacement l2   # the exact search (slow at Z=500)

Reports the median step time of each kind, the ERFT / plain ratio, the time spent in the memory
(sampling, inserting), the peak GPU memory, and the memory's host bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

WAN21 = {  # diffusers WanTransformer3DModel configs of Wan 2.1 (I2V layout: 36 input channels, CLIP tokens)
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "smoke": dict(num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_layers=2),  # checks the script
}
COMMON = dict(patch_size=(1, 2, 2), in_channels=36, out_channels=16, text_dim=4096, freq_dim=256,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280,
              rope_max_seq_len=1024)


def build_transformer(model: str, device: str):
    """Random Wan 2.1 transformer built on the GPU in bf16 (a 14B model never touches host memory)."""
    from diffusers import WanTransformer3DModel

    dims = WAN21[model]
    cfg = {**COMMON, **dims, "added_kv_proj_dim": dims["num_attention_heads"] * dims["attention_head_dim"]}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            dit = WanTransformer3DModel(**cfg)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # small weights keep 40 random blocks finite in bf16
        for m in dit.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 0.02)
                if m.bias is not None:
                    m.bias.zero_()
    return dit


def synthetic_batch(condition, frames: int, height: int, width: int, device: str) -> dict:
    t, h, w = 1 + (frames - 1) // 4, height // 8, width // 8
    mask = condition.mask(1, frames, h, w, device=device)  # (1, 4, T, h, w)
    return {"latents": torch.randn(1, 16, t, h, w, device=device),
            "y": torch.cat([mask, torch.randn(1, 16, t, h, w, device=device)], dim=1),
            "text": torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16),
            "image": torch.randn(1, 257, 1280, device=device, dtype=torch.bfloat16)}


def fill_memory(memory, shape, generator) -> None:
    """Every bucket of both banks to its capacity with random errors (scaled copies of a few distinct ones)."""
    pool = [torch.randn(shape, generator=generator) * s for s in (0.05, 0.1, 0.2, 0.4)]
    for bucket in range(memory.vid.num_buckets):
        i = 0
        while i == 0 or int(memory.vid.counts[bucket]) < memory.vid.z:  # z is known after the first insert
            e = pool[i % len(pool)] * (1 + 0.01 * i)
            memory.add(torch.tensor([bucket]), e[None], e[None])
            i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(WAN21), default="1.3b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    ap.add_argument("--lora-rank", type=int, default=128)
    ap.add_argument("--no-checkpointing", action="store_true", help="keep all activations (more memory)")
    ap.add_argument("--replacement", default="l2_sketch", choices=("l2", "l2_sketch", "random", "fifo"))
    ap.add_argument("--memory-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16", "float8"))
    ap.add_argument("--memory-device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--budget-gib", type=float, default=8.0, help="replay memory budget, both banks (sets Z)")
    ap.add_argument("--capacity", type=int, default=500, help="Z before the budget")
    ap.add_argument("--device", default="cuda", help="cpu only to check the script (--model smoke, small clip)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_full_size.py needs a CUDA GPU")
    warnings.filterwarnings("ignore")  # `self.log` outside a Trainer
    torch.backends.cuda.matmul.allow_tf32 = True

    from svi.backbones.wan import WanStack
    from svi.conditions import ShotCondition
    from svi.erft.memory import MemoryConfig, ReplayMemory
    from svi.lit import ERFTModule

    t0 = time.perf_counter()
    stack = WanStack(build_transformer(args.model, args.device))
    condition = ShotCondition()
    module = ERFTModule(stack, condition, lora={"rank": args.lora_rank, "alpha": args.lora_rank},
                        injection={"p_noi": 0.01, "p_vid": 0.9, "p_img": 0.9, "p_clean": 0.2},
                        gradient_checkpointing=not args.no_checkpointing).to(args.device)
    module.train()
    params = module.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    n_base = sum(p.numel() for p in stack.transformer.parameters() if not p.requires_grad)
    n_lora = sum(p.numel() for p in params)
    batch = synthetic_batch(condition, args.frames, args.height, args.width, args.device)
    shape = tuple(batch["latents"].shape[1:])
    print(f"Wan 2.1 {args.model}: {n_base / 1e9:.2f} B frozen + {n_lora / 1e6:.0f} M LoRA params; latent {shape}; "
          f"built in {time.perf_counter() - t0:.0f} s on {torch.cuda.get_device_name() if cuda else args.device}")

    memory = ReplayMemory(MemoryConfig(num_grids=50, capacity=args.capacity, replacement=args.replacement,
                                       dtype=args.memory_dtype, device=args.memory_device, budget_gib=args.budget_gib))
    t0 = time.perf_counter()
    fill_memory(memory, shape, torch.Generator().manual_seed(0))
    print(f"replay memory: Z = {memory.vid.z} per bucket from {args.budget_gib} GiB, {args.memory_dtype} on "
          f"{args.memory_device}, {args.replacement}; filled ({memory.nbytes / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.0f} s")

    coins = torch.Generator().manual_seed(1)
    timings: dict[str, list[float]] = {"plain": [], "erft": [], "erft: insert": []}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(kind: str) -> None:
        erft = kind == "erft"
        module.injection.enabled = erft
        module.error_memory = memory.reader() if erft else None
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
            timings["erft: insert"].append(time.perf_counter() - t_insert)
        sync()
        timings[kind].append(time.perf_counter() - t)

    for _ in range(args.warmup):
        step("plain")
        step("erft")
    for v in timings.values():
        v.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.steps):
        for kind in (("plain", "erft") if i % 2 == 0 else ("erft", "plain")):
            step(kind)

    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"step (median of {args.steps}): plain {med['plain']:.3f} s, erft {med['erft']:.3f} s, "
          f"ERFT / plain = {med['erft'] / med['plain']:.3f}; of the erft step, inserting into the memory "
          f"{med['erft: insert'] * 1e3:.1f} ms")
    peak = (f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (allocated), "
            f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB (reserved); ") if cuda else ""
    print(f"{peak}replay memory {memory.nbytes / 2**30:.2f} GiB on {args.memory_device}; "
          f"non-finite errors refused: {memory.vid.num_nonfinite}")


if __name__ == "__main__":
    main()
