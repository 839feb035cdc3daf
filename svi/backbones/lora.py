"""LoRA on the Wan transformer via peft, saved and loaded in the diffusers LoRA format.

The official SVI targets are q,k,v,o,ffn.0,ffn.2 of every block in the original Wan naming, i.e.
diffusers `to_q, to_k, to_v, to_out.0, ffn.net.0.proj, ffn.net.2` (self- and cross-attention; the
CLIP `add_k_proj/add_v_proj` are not wrapped). Only the adapters (and condition adapters) train.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SVI_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights(dir) looks for
MODULES_FILE = "svi_modules.safetensors"  # the condition type's trainable adapters (official tensor names)
# Wan 2.2 A14B: one adapter per expert, each in its own folder of the export (SVI 2.0 Pro ships high/low files).
EXPERT_DIRS = {"transformer": "high_noise", "transformer_2": "low_noise"}


@dataclass
class LoraSpec:
    """LoRA hyperparameters (paper: r = alpha = 128 on the SVI targets)."""

    rank: int = 128  # r; 0 = no LoRA: train the whole transformer (pretraining a base)
    alpha: int = 128  # lora_alpha; scale alpha / r = 1 as in the official release
    targets: list[str] = field(default_factory=lambda: list(SVI_TARGETS))  # module-name suffixes to wrap
    dropout: float = 0.0
    init_path: str | None = None  # start from this LoRA file (any format `read_lora` reads), not from zero

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 1 (or 0 to train the whole transformer), got {self.rank}")
        if not self.targets:
            raise ValueError("lora.targets is empty: name at least one module suffix (e.g. to_q)")


def attach_lora(transformer: nn.Module, spec: LoraSpec, adapter_name: str = "default"):
    """Freeze the base, inject LoRA, keep the adapter weights in fp32 (bf16 base, fp32 LoRA)."""
    from peft import LoraConfig

    if spec.rank == 0:  # full training: every transformer weight, in fp32
        transformer.requires_grad_(True)
        for p in transformer.parameters():
            p.data = p.data.float()
        return None
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.targets), init_lora_weights=True)
    transformer.requires_grad_(False)
    try:
        transformer.add_adapter(config, adapter_name=adapter_name)  # also sets requires_grad on LoRA only
    except ValueError as err:
        if "not found" not in str(err):
            raise
        raise ValueError(f"lora.targets {list(spec.targets)} matched no module of the transformer "
                         f"(diffusers names, e.g. to_q, to_out.0, ffn.net.0.proj)") from err
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return config


def init_lora_from(transformer: nn.Module, path: str | Path, spec: LoraSpec, adapter_name: str = "default"):
    """Set the freshly attached LoRA to the one in `path` (diffusers, DiffSynth or ComfyUI keys): the
    official SVI-Dance run starts from UniAnimate-DiT's LoRA this way. Each module's B is rescaled so that
    (our alpha / r) B A equals the file's; a module the file lacks stays at zero. Returns the file's weights
    (its non-LoRA tensors, e.g. a pose encoder, are in `.extras` for the condition type)."""
    from svi.backbones.official import read_lora

    weights = read_lora(path)
    named = dict(transformer.named_modules())
    scale = spec.alpha / spec.rank
    wrapped = {n for n, m in named.items() if hasattr(m, "lora_A") and adapter_name in getattr(m, "lora_A", {})}
    missing = sorted(set(weights.modules) - wrapped)
    if missing:
        raise ValueError(f"lora.init_path {path}: {len(missing)} LoRA module(s) are not adapted here, e.g. "
                         f"{missing[:3]}: a LoRA for another model ({weights.describe()}), or lora.targets "
                         f"{list(spec.targets)} differ")
    with torch.no_grad():
        for name, (a, b, s) in weights.modules.items():
            layer = named[name]
            lora_a, lora_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            key = weights.keys.get(name, name)
            if a.shape[1] != lora_a.shape[1] or b.shape[0] != lora_b.shape[0]:
                raise ValueError(f"lora.init_path {path}: key {key} has lora_A {tuple(a.shape)} and lora_B "
                                 f"{tuple(b.shape)}, but module {name} here takes ({spec.rank}, "
                                 f"{lora_a.shape[1]}) and ({lora_b.shape[0]}, {spec.rank}): the file seems to "
                                 f"be for {weights.describe()} (a LoRA for a different Wan model)")
            if a.shape != lora_a.shape or b.shape != lora_b.shape:
                raise ValueError(f"lora.init_path {path}: key {key} has rank {a.shape[0]} ({tuple(a.shape)}, "
                                 f"{tuple(b.shape)}) but lora.rank is {spec.rank} ({tuple(lora_a.shape)}, "
                                 f"{tuple(lora_b.shape)}): set lora.rank to the file's rank "
                                 f"(lora.rank={a.shape[0]})")
            lora_a.copy_(a.to(lora_a))
            lora_b.copy_((b.float() * (s / scale)).to(lora_b))
    return weights


def lora_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors with diffusers keys (`blocks.0.attn1.to_q.lora_A.weight`)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors write to a temp file then rename, so a kill never leaves a half-written adapter."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_adapter(directory: str | Path, transformer: nn.Module, spec: LoraSpec,
                 modules: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `directory/pytorch_lora_weights.safetensors` (keys `transformer.*`, LoRA config in the header).

    The file loads with `WanImageToVideoPipeline.load_lora_weights(directory)` and with `load_adapter`.
    Trainable condition-adapter tensors, if any, go to `svi_modules.safetensors` beside it.
    """
    directory = Path(directory)
    tensors = {f"transformer.{k}": v for k, v in lora_state_dict(transformer).items()}
    config = {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": list(spec.targets),
              "lora_dropout": spec.dropout}
    # diffusers reads the adapter config from this header key when loading.
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    path = directory / ADAPTER_FILE
    atomic_save_file(tensors, path, metadata)
    if modules:
        atomic_save_file({k: v.detach().cpu().contiguous() for k, v in modules.items()}, directory / MODULES_FILE)
    return path


def load_adapter(transformer: nn.Module, path: str | Path, adapter_name: str = "default") -> None:
    """Load our adapter file (or a directory holding it) into an already-attached adapter."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    sd = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(transformer, sd, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if unexpected:
        raise ValueError(f"{path} has LoRA tensors that match no adapted module, e.g. {unexpected[:3]}")


def save_stack_adapters(directory: str | Path, stack, spec: LoraSpec,
                        modules: dict[str, torch.Tensor] | None = None) -> Path:
    """The adapter export of a whole backbone: `save_adapter` into `directory` for one DiT; for a two-expert
    backbone (Wan 2.2 A14B) one adapter per expert, `directory/high_noise/` (`transformer`) and
    `directory/low_noise/` (`transformer_2`), each a diffusers LoRA folder (`load_lora_weights(dir)`, the low one
    with `load_into_transformer_2=True`). Condition adapters go beside the high-noise one."""
    experts = getattr(stack, "experts", [("transformer", stack.transformer)])
    if len(experts) == 1:
        return save_adapter(directory, stack.transformer, spec, modules)
    directory = Path(directory)
    for name, dit in experts:
        save_adapter(directory / EXPERT_DIRS[name], dit, spec, modules if name == "transformer" else None)
    return directory


def load_stack_adapters(stack, path: str | Path) -> None:
    """Load `save_stack_adapters`' output into the already-attached adapters of every expert."""
    experts = getattr(stack, "experts", [("transformer", stack.transformer)])
    if len(experts) == 1:
        return load_adapter(stack.transformer, path)
    for name, dit in experts:
        load_adapter(dit, Path(path) / EXPERT_DIRS[name])
