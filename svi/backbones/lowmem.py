"""Low-memory generation: fp8 weight storage and CPU offloading of the Wan stack, via diffusers' hooks.

* `fp8`: the transformer's Linear weights are stored in float8_e4m3fn and upcast, layer by layer, to the
  dtype the model was loaded in (bf16 for real weights) just before each layer runs
  (`ModelMixin.enable_layerwise_casting`). diffusers' default skip list keeps the patch embedding, the
  condition embedders, every norm and `proj_out` (and peft LoRA layers) in their own dtype. Call it after
  the LoRA is merged: the merge then happens in full precision and only the sum is rounded to fp8.
* `offload`:
  - `none`: every component on the generation device;
  - `model`: each component (text encoder, CLIP, transformer, VAE) waits on the CPU and moves to the device
    as a whole when it runs, pushing the previous one back (accelerate's `cpu_offload_with_hook` chain);
  - `group`: the transformer stays on the CPU and `blocks_per_group` transformer blocks at a time come to
    the device for their forward (`apply_group_offloading`, block level); the rest of the stack stays on
    the device;
  - `sequential`: the same per leaf module (lowest memory, slowest).

None of these changes the numbers except fp8 (docs/generate.md gives the measured difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OFFLOAD = ("none", "model", "group", "sequential")


@dataclass
class LowMemSpec:
    fp8: bool = False  # store the transformer's weights in float8_e4m3fn, compute in its loaded dtype
    offload: str = "none"  # none | model | group | sequential
    blocks_per_group: int = 1  # offload=group: transformer blocks moved to the device together
    stream: bool = False  # offload=group on CUDA: prefetch the next group on a side stream (pins CPU memory)

    def __post_init__(self) -> None:
        self.offload = getattr(self.offload, "value", self.offload)
        if self.offload not in OFFLOAD:
            raise ValueError(f"lowmem.offload must be one of {OFFLOAD}, got {self.offload!r}")
        if self.blocks_per_group < 1:
            raise ValueError(f"lowmem.blocks_per_group must be >= 1, got {self.blocks_per_group}")


def execution_device(stack) -> torch.device:
    """Where the sampler should put its tensors: the generation device, even while offloaded weights wait
    on the CPU (then `transformer.device` would say cpu)."""
    return getattr(stack, "execution_device", None) or stack.transformer.device


def place_stack(stack, device: str | torch.device, spec: LowMemSpec | None = None):
    """Move `stack` to `device` as `spec` asks (after any LoRA merge). Returns the stack."""
    spec = spec or LowMemSpec()
    device = torch.device(device)
    dits = [stack.transformer] + ([stack.transformer_2] if getattr(stack, "transformer_2", None) is not None else [])
    if spec.offload in ("none", "group", "sequential"):
        for name, child in stack.named_children():  # everything but the transformer(s)
            if not any(child is d for d in dits):
                child.to(device)
        for name, buf in list(stack.named_buffers(recurse=False)):
            setattr(stack, name, buf.to(device))
    for dit in dits:  # Wan2.2-A14B: both experts alike
        if spec.offload == "none":
            dit.to(device)
        if spec.fp8:
            dit.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dit.dtype)
        if spec.offload in ("group", "sequential"):
            from diffusers.hooks import apply_group_offloading

            kind = "block_level" if spec.offload == "group" else "leaf_level"
            apply_group_offloading(dit, onload_device=device, offload_device=torch.device("cpu"), offload_type=kind,
                                   num_blocks_per_group=spec.blocks_per_group if kind == "block_level" else None,
                                   use_stream=spec.stream and device.type == "cuda")
    if spec.offload == "model":
        _chain_model_offload(stack, device)
    stack.execution_device = device
    return stack


def _chain_model_offload(stack, device: torch.device) -> None:
    """Each component on the CPU until it runs; running one sends the previous one back."""
    from accelerate import cpu_offload_with_hook

    hook = None
    for module in (stack.text_encoder, stack.image_encoder, stack.transformer,
                   getattr(stack, "transformer_2", None), stack.vae):
        if isinstance(module, nn.Module):
            module.to("cpu")
            _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
    for name, buf in list(stack.named_buffers(recurse=False)):
        setattr(stack, name, buf.to(device))
