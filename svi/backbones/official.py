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

Three key formats are told apart by their keys (`detect_format`) and written back (`lora_state_dict_as`,
`convert_lora_file`, the `svi-lora` command):

* `diffusers`: `transformer.blocks.0.attn1.to_q.lora_A.weight` (ours); Wan 2.2 A14B pipelines name the
  low-noise expert `transformer_2`, so a file may carry `transformer_2.` keys too (`expert=low` picks them);
* `diffsynth`: `blocks.0.self_attn.q.lora_A.default.weight` (the official SVI releases; no alpha, scale 1);
* `comfyui`: `diffusion_model.blocks.0.self_attn.q.lora_A.weight` + `.alpha` (ComfyUI's Wan LoRA loader and
  diffusers' non-diffusers Wan converter both read it; `lora_down/lora_up` are read too).

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
FORMATS = ("diffusers", "diffsynth", "comfyui")
EXPERTS = ("high", "low")  # Wan 2.2 A14B: high-noise expert (`transformer`), low-noise (`transformer_2`)
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
_ATTN_BACK = {v: k for k, v in _ATTN.items()}
_GLOBAL_BACK = {v: k for k, v in _GLOBAL.items()}


@dataclass
class LoraWeights:
    """A LoRA in diffusers module names: `W += scale * B @ A` for each module."""

    modules: dict[str, tuple[Tensor, Tensor, float]]  # name -> (A (r, in), B (out, r), alpha / r)
    extras: dict[str, Tensor] = field(default_factory=dict)  # non-LoRA tensors (pose encoder, ...)
    layout: str = "diffusers"  # diffusers | official (DiffSynth or ComfyUI names)
    format: str = "diffusers"  # diffusers | diffsynth | comfyui (`detect_format`)
    expert: str | None = None  # Wan 2.2 A14B: high | low, when the keys or the header say so
    keys: dict[str, str] = field(default_factory=dict)  # module -> its lora_A key in the file (for errors)

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _, _ in self.modules.values())

    def describe(self) -> str:
        """What model the file seems to be for, from its shapes: hidden size, blocks, rank."""
        return describe_shapes(self.modules)


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


def detect_format(keys) -> str:
    """`diffusers` | `diffsynth` | `comfyui` from the LoRA keys alone; anything else raises, naming a key."""
    lora = [k for k in keys if _LORA_KEY.match(strip_prefixes(k))]
    if not lora:
        raise ValueError(f"no LoRA tensors (keys like transformer.blocks.0.attn1.to_q.lora_A.weight); "
                         f"found e.g. {list(keys)[:3]}")
    for key in lora:
        module = _LORA_KEY.match(strip_prefixes(key.replace("transformer_2.", "", 1))).group("module")
        if not (module.startswith("blocks.") or module in _GLOBAL or module in _GLOBAL.values()):
            raise ValueError(f"unknown LoRA format: key {key!r} names no Wan module (known formats: "
                             f"diffusers `transformer.blocks.0.attn1.to_q.lora_A.weight`, diffsynth "
                             f"`blocks.0.self_attn.q.lora_A.default.weight`, comfyui "
                             f"`diffusion_model.blocks.0.self_attn.q.lora_A.weight`)")
    if any(k.startswith("diffusion_model.") for k in lora):
        return "comfyui"
    original = re.compile(r"\.(self_attn|cross_attn)\.|\.ffn\.[02]\.")  # original Wan module names
    if any(".default." in k or k.startswith("pipe.") or original.search(k) for k in lora):
        return "diffsynth"
    return "diffusers"


def select_expert(sd: dict[str, Tensor], expert: str | None, metadata: dict | None = None):
    """Keep one Wan 2.2 expert of a diffusers file holding `transformer.` (high) and `transformer_2.` (low)
    keys; returns (state dict with `transformer.` keys, the expert or None)."""
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
    low = any(k.startswith("transformer_2.") for k in sd)
    high = any(k.startswith("transformer.") for k in sd)
    if not low:
        return sd, expert or (metadata or {}).get("svi_expert")
    if high and expert is None:
        raise ValueError("this file holds both Wan 2.2 experts (transformer. = high-noise, transformer_2. = "
                         "low-noise): choose one with expert=high or expert=low")
    if expert == "high" and not high:
        raise ValueError("this file holds only the low-noise expert (transformer_2. keys), not expert=high")
    if expert == "high":
        return {k: v for k, v in sd.items() if not k.startswith("transformer_2.")}, "high"
    return {"transformer." + k[len("transformer_2."):]: v for k, v in sd.items()
            if k.startswith("transformer_2.")}, "low"


def convert_lora_state_dict(sd: dict[str, Tensor], metadata: dict[str, str] | None = None,
                            expert: str | None = None) -> LoraWeights:
    """Any of the three formats -> `LoraWeights` (module docstring); non-LoRA tensors go to `extras`."""
    sd, expert = select_expert(sd, expert, metadata)
    fmt = detect_format(sd)
    scale = _metadata_scale(metadata)
    pairs: dict[str, dict[str, Tensor]] = {}
    alphas: dict[str, float] = {}
    extras: dict[str, Tensor] = {}
    keys: dict[str, str] = {}
    for key, value in sd.items():
        plain = strip_prefixes(key)
        m = _LORA_KEY.match(plain)
        if m:
            kind = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
            name = to_diffusers_name(m.group("module"))
            pairs.setdefault(name, {})[kind] = value
            if kind == "A":
                keys[name] = key
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
    layout = "diffusers" if fmt == "diffusers" else "official"
    return LoraWeights(modules, extras, layout, fmt, expert, keys)


def to_original_name(module: str) -> str:
    """A diffusers module name -> the original Wan / DiffSynth / ComfyUI one (inverse of `to_diffusers_name`)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)",
                     module)
    if m:
        attn = "self_attn" if m.group(2) == "attn1" else "cross_attn"
        return f"blocks.{m.group(1)}.{attn}.{_ATTN_BACK[m.group(3)]}"
    m = re.fullmatch(r"blocks\.(\d+)\.ffn\.net\.(0\.proj|2)", module)
    if m:
        return f"blocks.{m.group(1)}.ffn.{'0' if m.group(2) == '0.proj' else '2'}"
    if module in _GLOBAL_BACK:
        return _GLOBAL_BACK[module]
    raise ValueError(f"LoRA module {module} has no name in the original Wan layout (diffsynth / comfyui)")


def lora_state_dict_as(weights: LoraWeights, fmt: str, expert: str | None = None):
    """`LoraWeights` -> (tensors, safetensors header) in `fmt` (see the module docstring).

    diffusers keeps A and B and writes alpha in the header when every module shares one scale (else the
    scale is folded into B, alpha = r); diffsynth has no alpha, so the scale is folded into B (exact when
    alpha = r, as in SVI); comfyui keeps A and B and writes one `.alpha` per module. Extras (non-LoRA
    tensors) stay in a diffsynth file, as the official SVI-Dance release; for the other two the caller
    writes them beside it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; choose one of {FORMATS}")
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
    sd: dict[str, Tensor] = {}
    meta = {"format": "pt"}
    if expert or weights.expert:
        meta["svi_expert"] = expert or weights.expert
    ranks = {a.shape[0] for a, _, _ in weights.modules.values()}
    scales = {s for _, _, s in weights.modules.values()}
    one = len(ranks) == 1 and len(scales) == 1

    def folded(b: Tensor, s: float) -> Tensor:
        return b if s == 1.0 else (b.float() * s).to(b.dtype)

    if fmt == "diffusers":
        targets = sorted({re.sub(r"^blocks\.\d+\.(attn[12]\.)?", "", n) for n in weights.modules})
        for name, (a, b, s) in weights.modules.items():
            sd[f"transformer.{name}.lora_A.weight"] = a
            sd[f"transformer.{name}.lora_B.weight"] = b if one else folded(b, s)
        r = max(ranks)
        alpha = r * scales.pop() if one else r
        alpha = int(alpha) if float(alpha).is_integer() else alpha
        meta["lora_adapter_metadata"] = json.dumps({"transformer.r": r, "transformer.lora_alpha": alpha,
                                                    "transformer.target_modules": targets})
        return sd, meta
    for name, (a, b, s) in weights.modules.items():
        orig = to_original_name(name)
        if fmt == "diffsynth":
            sd[f"{orig}.lora_A.default.weight"] = a
            sd[f"{orig}.lora_B.default.weight"] = folded(b, s)
        else:
            sd[f"diffusion_model.{orig}.lora_A.weight"] = a
            sd[f"diffusion_model.{orig}.lora_B.weight"] = b
            sd[f"diffusion_model.{orig}.alpha"] = torch.tensor(s * a.shape[0], dtype=torch.float32)
    if fmt == "diffsynth":
        sd.update(weights.extras)
    return sd, meta


def describe_shapes(modules: dict[str, tuple[Tensor, Tensor, float]]) -> str:
    """Hidden size, blocks and rank of a LoRA, and the Wan model of that size (messages, `svi-lora info`)."""
    blocks = {int(m.group(1)) for n in modules if (m := re.match(r"blocks\.(\d+)\.", n))}
    hidden = next((a.shape[1] for n, (a, _, _) in modules.items() if n.endswith("attn1.to_q")), None)
    if hidden is None:
        hidden = next(iter(modules.values()))[0].shape[1]
    ranks = sorted({a.shape[0] for a, _, _ in modules.values()})
    known = {5120: "a Wan 14B model (Wan2.1-I2V/T2V-14B, Wan2.2-A14B)", 1536: "Wan2.1-T2V-1.3B",
             3072: "Wan2.2-TI2V-5B"}
    i2v = " with the CLIP image path (Wan 2.1 I2V)" if any("add_k_proj" in n for n in modules) else ""
    rank = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks}"
    return (f"hidden size {hidden}, {len(blocks)} blocks, {rank}: "
            f"{known.get(hidden, 'a Wan model of another size')}{i2v}")


def _metadata_scale(metadata: dict[str, str] | None) -> float:
    """alpha / r from our (diffusers) safetensors header; 1.0 when absent (as diffusers assumes)."""
    if not metadata or "lora_adapter_metadata" not in metadata:
        return 1.0
    header = json.loads(metadata["lora_adapter_metadata"])
    cfg = {k.removeprefix("transformer."): v for k, v in header.items()}
    if "r" in cfg and "lora_alpha" in cfg:
        return float(cfg["lora_alpha"]) / float(cfg["r"])
    return 1.0


def _read_tensors(path: str | Path):
    """(state dict, safetensors header or None, the file, our condition-adapter file beside it or None)."""
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
    return sd, metadata, path, modules_file


def read_lora(path: str | Path, expert: str | None = None) -> LoraWeights:
    """Read a LoRA file (or a directory holding `pytorch_lora_weights.safetensors`) into diffusers names.

    Any of the three formats (`detect_format`). `.safetensors` and torch pickles (`.pt`, `.pth`, `.bin`,
    `.ckpt`, with or without a `state_dict` wrapper) are accepted. A directory's `svi_modules.safetensors`
    (our condition adapters) joins the extras. `expert` (high | low) picks one Wan 2.2 expert of a diffusers
    file that holds both.
    """
    sd, metadata, path, modules_file = _read_tensors(path)
    if not any(_LORA_KEY.match(strip_prefixes(k)) for k in sd):
        raise ValueError(f"{path} holds no LoRA tensors (keys like blocks.0.attn1.to_q.lora_A.weight or "
                         f"pipe.dit.blocks.0.self_attn.q.lora_A.default.weight); found e.g. {list(sd)[:3]}")
    try:
        weights = convert_lora_state_dict(sd, metadata, expert)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if modules_file is not None and modules_file.is_file():
        from safetensors.torch import load_file

        weights.extras.update(load_file(str(modules_file)))
    return weights


def convert_lora_file(src: str | Path, dst: str | Path, fmt: str, expert: str | None = None) -> list[Path]:
    """Write the LoRA in `src` (any format) to `dst` in `fmt`; returns the files written.

    A diffusers `dst` that is a directory (no `.safetensors` suffix) gets our adapter layout
    (`pytorch_lora_weights.safetensors`, extras in `svi_modules.safetensors`); a diffusers or comfyui file
    gets its extras beside it as `<name>.modules.safetensors` (diffsynth keeps them inside, as SVI-Dance).
    """
    from svi.backbones.lora import atomic_save_file

    weights = read_lora(src, expert)
    sd, meta = lora_state_dict_as(weights, fmt, expert)
    dst = Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        if fmt != "diffusers":
            raise ValueError(f"{dst}: a {fmt} LoRA is one .safetensors file; name it <name>.safetensors")
        dst, extras = dst / ADAPTER_FILE, dst / MODULES_FILE
    else:
        extras = dst.with_name(dst.stem + ".modules.safetensors")
    atomic_save_file(sd, dst, meta)
    written = [dst]
    if weights.extras and fmt != "diffsynth":
        atomic_save_file({k: v.contiguous() for k, v in weights.extras.items()}, extras)
        written.append(extras)
    return written


def _backbone_size(transformer: nn.Module) -> str:
    cfg = getattr(transformer, "config", None)
    if cfg is None or not hasattr(cfg, "num_layers"):
        return "another shape"
    return f"hidden size {cfg.num_attention_heads * cfg.attention_head_dim}, {cfg.num_layers} blocks"


def _shape_error(name: str, weights: LoraWeights, got: tuple, want: tuple, transformer: nn.Module):
    key = weights.keys.get(name, name)
    return ValueError(f"LoRA key {key} (module {name}): B @ A has shape {got} but the weight is {want}. "
                      f"The file seems to be for {weights.describe()}; this backbone has "
                      f"{_backbone_size(transformer)} (is this a LoRA for a different Wan model?)")


@torch.no_grad()
def merge_lora(transformer: nn.Module, weights: LoraWeights, scale: float = 1.0,
               device: str | torch.device | None = None) -> int:
    """W <- W + scale * (alpha / r) * B @ A for every module, computed in fp32; returns the count.

    `device`: where B @ A is computed (default: beside the weight), e.g. the GPU for a transformer kept on
    the CPU by offloading.

    Every module must exist and be a Linear of matching shape: a LoRA for another model fails here
    instead of silently doing nothing.
    """
    named = dict(transformer.named_modules())
    missing = [n for n in weights.modules if n not in named]
    if missing:
        raise ValueError(f"{len(missing)} LoRA module(s) match no module of the transformer, e.g. "
                         f"{missing[:3]}: is this a LoRA for a different Wan model? It seems to be for "
                         f"{weights.describe()}")
    for name, (a, b, s) in weights.modules.items():
        layer = named[name]
        layer = getattr(layer, "base_layer", layer)  # a peft-wrapped Linear merges into its base
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"LoRA module {name} is a {type(layer).__name__}, not a Linear")
        w = layer.weight
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise _shape_error(name, weights, (b.shape[0], a.shape[1]), tuple(w.shape), transformer)
        on = torch.device(device) if device is not None else w.device
        delta = (b.to(on, torch.float32) @ a.to(on, torch.float32)).to(w.device)
        w.copy_((w.float() + (scale * s) * delta).to(w.dtype))
    return len(weights.modules)


def load_lora(transformer: nn.Module, path: str | Path, scale: float = 1.0,
              expert: str | None = None) -> LoraWeights:
    """`read_lora` + `merge_lora`: the transformer now is base + LoRA. Returns the weights (with extras)."""
    weights = read_lora(path, expert)
    merge_lora(transformer, weights, scale)
    return weights
