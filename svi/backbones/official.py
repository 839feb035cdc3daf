"""LoRA files for generation: our adapters and the officially released SVI LoRAs, merged into Wan.

Two layouts are read (`read_lora`), both into diffusers module names (`to_diffusers_name`):

* ours / diffusers: `transformer.blocks.0.attn1.to_q.lora_A.weight` (`save_adapter`, diffusers'
  `save_lora_weights`), scale `lora_alpha / r` from the safetensors header (1 when absent);
* official SVI / DiffSynth: `pipe.dit.blocks.0.self_attn.q.lora_A.default.weight`, with or without
  `pipe.dit.` (also `model.`, `module.`, `_orig_mod.`, `diffusion_model.`), `lora_A/lora_B` or
  `lora_down/lora_up`, optional `.alpha` keys. The file has no alpha keys, and the official loader
  merges `W += 1.0 * B @ A`, so the scale is 1 (= peft's alpha / r with alpha = r = 128).
  Original Wan names map as `self_attn.{q,k,v,o}` -> `attn1.{to_q,to_k,to_v,to_out.0}`,
  `cross_attn.*` -> `attn2.*` (`k_img/v_img` -> `add_k_proj/add_v_proj`), `ffn.{0,2}` ->
  `ffn.net.{0.proj,2}`, plus the few global linears.

Tensors that are not LoRA (SVI-Dance's `dwpose_embedding.*`, `randomref*`, or our `svi_modules.safetensors`
beside an adapter) are returned as `extras` for the condition type that owns them
(`Condition.load_adapter_tensors`).

Generation merges the LoRA into the base weights (`merge_lora`), as the official inference does: the
sampler then costs exactly what the base model costs, and every sampler sees the same network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from svi.backbones.lora import ADAPTER_FILE, MODULES_FILE

_PREFIXES = ("pipe.dit.", "pipe.", "model.", "module.", "_orig_mod.", "diffusion_model.", "transformer.",
             "dit.")
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+?)\.alpha$")
# Original Wan / DiffSynth module names -> diffusers WanTransformer3DModel names.
_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj", "v_img": "add_v_proj"}
_GLOBAL = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}


@dataclass
class LoraWeights:
    """A LoRA in diffusers module names: `W += scale * B @ A` for each module."""

    modules: dict[str, tuple[Tensor, Tensor, float]]  # name -> (A (r, in), B (out, r), alpha / r)
    extras: dict[str, Tensor] = field(default_factory=dict)  # non-LoRA tensors (pose encoder, ...)
    layout: str = "diffusers"  # diffusers | official

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _, _ in self.modules.values())


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def to_diffusers_name(module: str) -> str:
    """An original-Wan module name -> diffusers; diffusers names pass through unchanged."""
    m = re.fullmatch(r"blocks\.(\d+)\.(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)", module)
    if m:
        attn = "attn1" if m.group(2) == "self_attn" else "attn2"
        return f"blocks.{m.group(1)}.{attn}.{_ATTN[m.group(3)]}"
    m = re.fullmatch(r"blocks\.(\d+)\.ffn\.(0|2)", module)
    if m:
        return f"blocks.{m.group(1)}.ffn.net.{'0.proj' if m.group(2) == '0' else '2'}"
    return _GLOBAL.get(module, module)


def convert_lora_state_dict(sd: dict[str, Tensor], metadata: dict[str, str] | None = None) -> LoraWeights:
    """Either layout -> `LoraWeights` (see the module docstring); non-LoRA tensors go to `extras`."""
    scale = _metadata_scale(metadata)
    pairs: dict[str, dict[str, Tensor]] = {}
    alphas: dict[str, float] = {}
    extras: dict[str, Tensor] = {}
    official = False
    for key, value in sd.items():
        plain = strip_prefixes(key)
        official |= ".default." in key or key.startswith("pipe.") or "_attn." in plain  # self_/cross_attn
        m = _LORA_KEY.match(plain)
        if m:
            kind = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
            pairs.setdefault(to_diffusers_name(m.group("module")), {})[kind] = value
            continue
        m = _ALPHA_KEY.match(plain)
        if m and value.numel() == 1:
            alphas[to_diffusers_name(m.group("module"))] = float(value)
            continue
        if "lora" in plain:
            raise ValueError(f"unsupported LoRA tensor {key!r} (lora_A/B, lora_down/up, alpha only)")
        extras[plain] = value
    modules = {}
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA module {name} has only lora_{set(ab).pop()}; the file is incomplete")
        a, b = ab["A"], ab["B"]
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA module {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                             f"disagree on the rank")
        s = alphas[name] / a.shape[0] if name in alphas else scale
        modules[name] = (a, b, s)
    return LoraWeights(modules, extras, "official" if official else "diffusers")


def _metadata_scale(metadata: dict[str, str] | None) -> float:
    """alpha / r from our (diffusers) safetensors header; 1.0 when absent (as diffusers assumes)."""
    if not metadata or "lora_adapter_metadata" not in metadata:
        return 1.0
    header = json.loads(metadata["lora_adapter_metadata"])
    cfg = {k.removeprefix("transformer."): v for k, v in header.items()}
    if "r" in cfg and "lora_alpha" in cfg:
        return float(cfg["lora_alpha"]) / float(cfg["r"])
    return 1.0


def read_lora(path: str | Path) -> LoraWeights:
    """Read a LoRA file (or a directory holding `pytorch_lora_weights.safetensors`) into diffusers names.

    `.safetensors` and torch pickles (`.pt`, `.pth`, `.bin`, `.ckpt`, with or without a `state_dict`
    wrapper) are accepted. A directory's `svi_modules.safetensors` (our condition adapters) joins the extras.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    modules_file = None
    if path.is_dir():
        modules_file = path / MODULES_FILE
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist (lora.path)")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
    else:
        sd, metadata = torch.load(str(path), map_location="cpu", weights_only=True), None
        sd = sd.get("state_dict", sd)
    weights = convert_lora_state_dict(sd, metadata)
    if not weights.modules:
        raise ValueError(f"{path} holds no LoRA tensors (keys like blocks.0.attn1.to_q.lora_A.weight or "
                         f"pipe.dit.blocks.0.self_attn.q.lora_A.default.weight); found e.g. {list(sd)[:3]}")
    if modules_file is not None and modules_file.is_file():
        from safetensors.torch import load_file

        weights.extras.update(load_file(str(modules_file)))
    return weights


@torch.no_grad()
def merge_lora(transformer: nn.Module, weights: LoraWeights, scale: float = 1.0) -> int:
    """W <- W + scale * (alpha / r) * B @ A for every module, computed in fp32; returns the count.

    Every module must exist and be a Linear of matching shape: a LoRA for another model fails here
    instead of silently doing nothing.
    """
    named = dict(transformer.named_modules())
    missing = [n for n in weights.modules if n not in named]
    if missing:
        raise ValueError(f"{len(missing)} LoRA module(s) match no module of the transformer, e.g. "
                         f"{missing[:3]} (is this a LoRA for a different Wan model?)")
    for name, (a, b, s) in weights.modules.items():
        layer = named[name]
        layer = getattr(layer, "base_layer", layer)  # a peft-wrapped Linear merges into its base
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"LoRA module {name} is a {type(layer).__name__}, not a Linear")
        w = layer.weight
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise ValueError(f"LoRA module {name}: B @ A is {(b.shape[0], a.shape[1])} but the weight is "
                             f"{tuple(w.shape)} (is this a LoRA for a different Wan model?)")
        delta = b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)
        w.copy_((w.float() + (scale * s) * delta).to(w.dtype))
    return len(weights.modules)


def load_lora(transformer: nn.Module, path: str | Path, scale: float = 1.0) -> LoraWeights:
    """`read_lora` + `merge_lora`: the transformer now is base + LoRA. Returns the weights (with extras)."""
    weights = read_lora(path)
    merge_lora(transformer, weights, scale)
    return weights
