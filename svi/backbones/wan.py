"""Wan 2.1 components: built tiny from config, or loaded from a local diffusers-format directory.

The I2V stack (SVI's backbone) takes the condition `y` and CLIP image tokens; the T2V stack
(Wan2.1-T2V-1.3B, the backbone MIGA reports on; usable by the FIFO-Diffusion and MIGA samplers) has
neither: its transformer reads the noisy latents alone.

Both paths return the same `WanStack` (the real diffusers `WanTransformer3DModel` and
`AutoencoderKLWan`, a T5-family text encoder, a CLIP vision encoder), so tests of the tiny stack
exercise the code that runs on real weights. Nothing is ever fetched from a hub: loading uses
`local_files_only=True`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COMPONENTS = ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")  # what a config may list
DEFAULT_COMPONENTS = ("transformer", "vae", "text_encoder", "image_encoder")  # a one-DiT I2V stack (Wan 2.1)
# What each component needs on disk (diffusers pipeline layout, e.g. Wan2.1-I2V-14B-480P-Diffusers).
_REQUIRED_FILES = {
    "transformer": ["transformer/config.json"],
    "transformer_2": ["transformer_2/config.json"],  # Wan2.2-A14B's low-noise expert
    "vae": ["vae/config.json"],
    "text_encoder": ["text_encoder/config.json", "tokenizer"],
    "image_encoder": ["image_encoder/config.json", "image_processor/preprocessor_config.json"],
}
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_RESIZE = ("squash", "crop")
MODEL_INDEX = "model_index.json"  # diffusers' pipeline file: Wan 2.2's boundary_ratio and expand_timesteps
# Why a part is needed and how to get it, for the error a missing part raises.
_WHAT = {
    "transformer": "the DiT (Wan 2.2 A14B: the high-noise expert)",
    "transformer_2": "the low-noise expert of Wan2.2-A14B",
    "vae": "the VAE (Wan2.2-TI2V-5B: the 48-channel Wan 2.2 VAE)",
    "text_encoder": "the UMT5 text encoder and its tokenizer",
    "image_encoder": "the CLIP image encoder (Wan 2.1 I2V)",
}


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(table)}")
    return table[name]


class WanStack(nn.Module):
    """The frozen Wan I2V components plus the encode/decode helpers ERFT and sampling need.

    Latents are normalised as `(mode - latents_mean) / latents_std` (diffusers' convention); the VAE runs in fp32.
    Components not loaded are None (e.g. training from a latent cache needs only the transformer).
    """

    def __init__(self, transformer, vae=None, text_encoder=None, tokenizer=None, image_encoder=None,
                 image_size: int = 224, image_mean=_CLIP_MEAN, image_std=_CLIP_STD, text_len: int = 512,
                 clip_resize: str = "squash", transformer_2=None, boundary_ratio: float | None = None,
                 expand_timesteps: bool = False):
        super().__init__()
        if clip_resize not in CLIP_RESIZE:
            raise ValueError(f"backbone.clip_resize must be one of {CLIP_RESIZE}, got {clip_resize!r}")
        if transformer_2 is not None and not (boundary_ratio is not None and 0.0 < boundary_ratio < 1.0):
            raise ValueError(f"a two-expert backbone (transformer_2) needs backbone.boundary_ratio in (0, 1) "
                             f"(Wan2.2-I2V-A14B: 0.9), got {boundary_ratio}")
        if expand_timesteps and transformer.config.in_channels != transformer.config.out_channels:
            raise ValueError(f"expand_timesteps (Wan2.2-TI2V-5B) needs a transformer that reads the latents alone "
                             f"(in_channels == out_channels), got {transformer.config.in_channels} -> "
                             f"{transformer.config.out_channels}")
        self.clip_resize = clip_resize
        self.transformer = transformer
        self.transformer_2 = transformer_2  # Wan 2.2 A14B: the low-noise expert (None: one network)
        self.boundary_ratio = boundary_ratio if transformer_2 is not None else None
        self.expand_timesteps = bool(expand_timesteps)  # Wan 2.2 TI2V: the condition is clean leading latents
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.image_size = image_size
        self.text_len = text_len
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        for module in (vae, text_encoder, image_encoder, transformer, transformer_2):
            if module is not None:
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> "WanStack":
        """Only the transformer follows train/eval; the frozen encoders always run in eval mode
        (a T5 encoder in train mode would apply dropout to every prompt embedding)."""
        super().train(mode)
        for module in (self.vae, self.text_encoder, self.image_encoder):
            if module is not None:
                module.eval()
        return self

    # -- shapes ---------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.transformer.config.out_channels

    @property
    def is_i2v(self) -> bool:
        """An I2V transformer reads cat[x (C), mask (4), condition latents (C)]; a T2V one reads x alone.
        Wan 2.2 TI2V (`expand_timesteps`) is both: it reads x alone, with clean leading latent frames as the image."""
        cfg = self.transformer.config
        return self.expand_timesteps or cfg.in_channels == 2 * cfg.out_channels + 4

    @property
    def latent_condition(self) -> bool:
        """Whether the condition lives in the latent itself (Wan 2.2 TI2V): the known frames of `y` replace the
        leading latent frames of x, with timestep 0 on their tokens; the transformer never reads `y`'s channels."""
        return self.expand_timesteps

    @property
    def experts(self) -> list[tuple[str, nn.Module]]:
        """The denoisers by attribute name: `transformer` alone, or (Wan 2.2 A14B) the high-noise `transformer`
        and the low-noise `transformer_2`."""
        out = [("transformer", self.transformer)]
        if self.transformer_2 is not None:
            out.append(("transformer_2", self.transformer_2))
        return out

    @property
    def boundary_timestep(self) -> float | None:
        """t >= this runs `transformer` (high noise), below it `transformer_2`; None with one expert."""
        if self.transformer_2 is None:
            return None
        return self.boundary_ratio * 1000.0  # diffusers: boundary_ratio * num_train_timesteps

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel: 8 for the Wan 2.1 VAE, 16 for the Wan 2.2 VAE of TI2V-5B."""
        vae = self.vae
        if vae is not None and getattr(vae.config, "scale_factor_spatial", None):
            return int(vae.config.scale_factor_spatial)
        return 8

    @property
    def uses_clip(self) -> bool:
        """Wan 2.1 I2V attends to CLIP image tokens; Wan 2.2 I2V has no image path."""
        return self.transformer.config.image_dim is not None

    def require(self, name: str, why: str) -> nn.Module:
        module = getattr(self, name)
        if module is None:
            raise ValueError(f"{why} needs the {name}, but the backbone was built without it; "
                             f"add '{name}' to backbone.components")
        return module

    # -- VAE --------------------------------------------------------------------------------
    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Pixels (B, 3, F, H, W) in [-1, 1], F = 1+4k -> normalised latents (B, 16, 1+(F-1)/4, H/8, W/8)."""
        vae = self.require("vae", "encoding video")
        if (video.shape[2] - 1) % 4:
            raise ValueError(f"number of frames must be 1+4k (e.g. 17, 81), got {video.shape[2]}")
        z = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode().float()
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Normalised latents -> pixels (B, 3, F, H, W) in [-1, 1] (the VAE clamps)."""
        vae = self.require("vae", "decoding latents")
        mean, std = self._latent_stats(latents)
        z = latents.float() * std + mean
        return vae.decode(z.to(vae.dtype), return_dict=False)[0].float()

    # -- text -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> (B, text_len, text_dim): encoder states of the real tokens, zero-padded (as diffusers)."""
        encoder = self.require("text_encoder", "encoding prompts")
        prompts = [re.sub(r"\s+", " ", p).strip() for p in prompts]
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.text_len, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(encoder.device), tok.attention_mask.to(encoder.device)
        states = encoder(ids, attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1)
        out = torch.zeros_like(states)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = states[i, :n]
        return out

    # -- CLIP image tokens ------------------------------------------------------------------
    def preprocess_image(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> the normalised CLIP input (B, 3, S, S), S = `image_size`.

        `squash` (official Wan and SVI): the whole frame is resized to S x S (bicubic, no antialias, no
        crop), so CLIP sees all of a 480x832 frame, squeezed. `crop` (diffusers' `CLIPImageProcessor`, what
        `WanImageToVideoPipeline` does): the short side is resized to S and the centre cropped, which drops
        about 42 % of a 480x832 frame's width.
        """
        if self.clip_resize == "squash":
            s = self.image_size
            x = F.interpolate(image.float(), size=(s, s), mode="bicubic", align_corners=False) * 0.5 + 0.5
            return (x - self.image_mean.to(x.device)) / self.image_std.to(x.device)
        x = (image.float() + 1) / 2
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.image_mean.to(x.device)) / self.image_std.to(x.device)

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor | None:
        """(B, 3, H, W) in [-1, 1] -> CLIP penultimate hidden states (B, 257, image_dim), or None (Wan 2.2)."""
        if not self.uses_clip:
            return None
        encoder = self.require("image_encoder", "a CLIP-conditioned transformer")
        pixels = self.preprocess_image(image).to(device=encoder.device, dtype=encoder.dtype)
        return encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]

    # -- the denoiser ----------------------------------------------------------------------
    def velocity(self, x_s: Tensor, y: Tensor | None, timestep: Tensor, text: Tensor, image: Tensor | None) -> Tensor:
        """v̂ = DiT(cat[x_s (16), y (4 + 16)], t, text, clip) in the transformer's dtype; a T2V stack takes
        y = None (and no CLIP tokens). `timestep` is (B,) or per token (B, T h' w').

        Wan 2.2 A14B: each sample runs the expert that owns its timestep (the largest of its tokens with a
        per-token timestep). Wan 2.2 TI2V (`latent_condition`): the frames `y` marks known are substituted
        into x_s and their tokens get timestep 0, as diffusers' `expand_timesteps` does.
        """
        if self.latent_condition:
            if y is not None:
                known = self.known_frames(y)  # (B, T)
                x_s = torch.where(known[:, None, :, None, None], y[:, 4:].to(x_s.dtype), x_s)
                tokens = self._token_grid(x_s)
                per_token = timestep if timestep.ndim == 2 else timestep[:, None].expand(-1, x_s.shape[2] * tokens)
                key = per_token.amax(dim=1)
                timestep = per_token * (~known).repeat_interleave(tokens, dim=1).to(per_token.dtype)
            else:
                key = timestep if timestep.ndim == 1 else timestep.amax(dim=1)
            hidden = x_s
        else:
            if (y is None) == self.is_i2v:
                raise ValueError("an I2V transformer needs the condition y; a T2V transformer takes y=None")
            hidden = x_s if y is None else torch.cat([x_s, y], dim=1)
            key = timestep if timestep.ndim == 1 else timestep.amax(dim=1)
        if self.transformer_2 is None:
            return self._run(self.transformer, hidden, timestep, text, image)
        high = key >= self.boundary_timestep  # (B,) which samples the high-noise expert denoises
        if bool(high.all()):
            return self._run(self.transformer, hidden, timestep, text, image)
        if not bool(high.any()):
            return self._run(self.transformer_2, hidden, timestep, text, image)
        hi, lo = high.nonzero().flatten(), (~high).nonzero().flatten()  # a mixed batch: one call per expert
        pick = lambda v, i: None if v is None else v[i]  # noqa: E731
        v_hi = self._run(self.transformer, hidden[hi], timestep[hi], text[hi], pick(image, hi))
        v_lo = self._run(self.transformer_2, hidden[lo], timestep[lo], text[lo], pick(image, lo))
        return torch.cat([v_hi, v_lo])[torch.argsort(torch.cat([hi, lo]))]

    @staticmethod
    def _run(dit: nn.Module, hidden: Tensor, timestep: Tensor, text: Tensor, image: Tensor | None) -> Tensor:
        dtype = dit.dtype
        image = image.to(dtype) if image is not None else None
        return dit(hidden_states=hidden.to(dtype), timestep=timestep, encoder_hidden_states=text.to(dtype),
                   encoder_hidden_states_image=image, return_dict=False)[0]

    def _token_grid(self, x: Tensor) -> int:
        """Tokens per latent frame: (h / p) (w / p)."""
        p = self.transformer.config.patch_size
        return (x.shape[-2] // p[1]) * (x.shape[-1] // p[2])

    @staticmethod
    def known_frames(y: Tensor) -> Tensor:
        """(B, 4 + C, T, h, w) -> (B, T) bool: latent frames whose 4 mask channels are all 1 (given, clean)."""
        return y[:, :4, :, 0, 0].amin(dim=1) > 0.5

    def keep_condition(self, x: Tensor, y: Tensor | None) -> Tensor:
        """A latent-conditioned stack's sample keeps the given frames of `y` (diffusers re-substitutes them
        after the last step); any other stack returns x unchanged."""
        if not self.latent_condition or y is None:
            return x
        return torch.where(self.known_frames(y)[:, None, :, None, None], y[:, 4:].to(x.dtype), x)

    def loss_frame_mask(self, y: Tensor | None) -> Tensor | None:
        """(B, 1, T, 1, 1) float, 0 on the given frames of a latent-conditioned stack (the loss and the stored
        errors leave them out: the model is not asked to predict them); None for every other stack."""
        if not self.latent_condition or y is None:
            return None
        return (~self.known_frames(y)).float()[:, None, :, None, None]


# ----------------------------------------------------------------------------------------------
# Tiny random-init stack (tests, and the starting point of small bases)
# ----------------------------------------------------------------------------------------------

def byte_tokenizer(model_max_length: int = 512):
    """An offline tokenizer for tiny text encoders: one token per UTF-8 byte, pad=0, eos=1, unk=2.

    Built in code (no vocabulary download) and saved/loaded with the usual `save_pretrained`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


def build_tiny_wan(
    transformer: dict,
    vae: dict | None = None,
    text_encoder: dict | None = None,
    image_encoder: dict | None = None,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    seed: int = 0,
    text_len: int = 512,
    dtype: str = "float32",
    native: dict | None = None,
    dims: dict | None = None,
    clip_resize: str = "squash",
    transformer_2: dict | None = None,
    boundary_ratio: float | None = None,
    expand_timesteps: bool = False,
) -> WanStack:
    """A random-init Wan stack from config dicts, identical for the same seed.

    `native` (default clip geometry) is read by other config groups; `dims` is checked against the
    built model so the data shapes and the model cannot disagree silently. With `transformer_2` in
    `components` a second expert is built (Wan 2.2 A14B twin; `transformer_2` overrides its config, by
    default the same as the first) and `boundary_ratio` picks the expert; `expand_timesteps` makes the
    Wan 2.2 TI2V twin (the image as a clean leading latent frame).
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    _check_components(components)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = WanTransformer3DModel(**_plain(transformer))
        dit_2 = None
        if "transformer_2" in components:
            dit_2 = WanTransformer3DModel(**{**_plain(transformer), **_plain(transformer_2)})
        if _dtype(dtype) != torch.float32:
            dit = dit.to(_dtype(dtype))
            dit_2 = dit_2.to(_dtype(dtype)) if dit_2 is not None else None
        v = AutoencoderKLWan(**_tiny_vae_config(vae)) if "vae" in components else None
        tok = enc = None
        if "text_encoder" in components:
            tok = byte_tokenizer(text_len)
            enc = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), pad_token_id=0, eos_token_id=1,
                                              decoder_start_token_id=0, **_plain(text_encoder)))
        clip = None
        if "image_encoder" in components and dit.config.image_dim is not None:
            clip = CLIPVisionModel(CLIPVisionConfig(**_plain(image_encoder)))
    size = clip.config.image_size if clip is not None else 224
    stack = WanStack(dit, v, enc, tok, clip, image_size=size, text_len=text_len, clip_resize=clip_resize,
                     transformer_2=dit_2, boundary_ratio=boundary_ratio, expand_timesteps=expand_timesteps)
    return _check_dims(stack.eval(), dims)


def _tiny_vae_config(vae: dict | None) -> dict:
    """A tiny VAE's config; a latent width other than Wan 2.1's 16 (the 48-channel Wan 2.2 VAE) gets fixed,
    non-trivial normalisation statistics unless the config gives its own, so normalising is exercised."""
    cfg = _plain(vae)
    z = cfg.get("z_dim", 16)
    if z != 16:
        cfg.setdefault("latents_mean", torch.linspace(-0.5, 0.5, z).tolist())
        cfg.setdefault("latents_std", torch.linspace(0.5, 1.5, z).tolist())
    return cfg


def _drop_source_path(folder: Path) -> None:
    """diffusers records where a loaded model was read from (`_name_or_path`, a local path) and writes it back
    on save; a saved stack is a self-contained directory, so its configs do not name another one."""
    cfg = folder / "config.json"
    d = json.loads(cfg.read_text())
    if d.pop("_name_or_path", None) is not None:
        cfg.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def save_stack(stack: WanStack, path: str | Path) -> None:
    """Write a stack in the diffusers pipeline layout (what `load_wan_dir` reads)."""
    path = Path(path)
    stack.transformer.save_pretrained(path / "transformer")
    _drop_source_path(path / "transformer")
    if stack.transformer_2 is not None:
        stack.transformer_2.save_pretrained(path / "transformer_2")
        _drop_source_path(path / "transformer_2")
    if stack.transformer_2 is not None or stack.expand_timesteps:  # the pipeline settings diffusers keeps here
        index = {"_class_name": "WanImageToVideoPipeline", "boundary_ratio": stack.boundary_ratio,
                 "expand_timesteps": stack.expand_timesteps}
        path.mkdir(parents=True, exist_ok=True)
        (path / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    if stack.vae is not None:
        stack.vae.save_pretrained(path / "vae")
        _drop_source_path(path / "vae")
    if stack.text_encoder is not None:
        stack.text_encoder.save_pretrained(path / "text_encoder")
        stack.tokenizer.save_pretrained(path / "tokenizer")
    if stack.image_encoder is not None:
        stack.image_encoder.save_pretrained(path / "image_encoder")
        (path / "image_processor").mkdir(parents=True, exist_ok=True)
        processor = {"crop_size": {"height": stack.image_size, "width": stack.image_size},
                     "size": {"shortest_edge": stack.image_size}, "do_center_crop": True, "do_normalize": True,
                     "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                     "image_mean": stack.image_mean.flatten().tolist(), "image_std": stack.image_std.flatten().tolist(),
                     "image_processor_type": "CLIPImageProcessor", "resample": 3}
        (path / "image_processor" / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


# ----------------------------------------------------------------------------------------------
# Real weights from a local directory
# ----------------------------------------------------------------------------------------------

def load_wan_dir(
    path: str | None,
    env_var: str = "SVI_WAN_DIR",
    components: Sequence[str] = DEFAULT_COMPONENTS,
    dtype: str = "bfloat16",
    text_len: int = 512,
    native: dict | None = None,
    dims: dict | None = None,
    vae_class: str | type | None = None,
    clip_resize: str = "squash",
    boundary_ratio: float | None = None,
    expand_timesteps: bool | None = None,
) -> WanStack:
    """Load a local diffusers-format Wan I2V (or T2V) directory (never a hub download).

    `path` usually comes from the environment variable `env_var`; a missing or incomplete directory
    fails here, before any training, naming the variable and the missing part. Wan 2.2: with
    `transformer_2` in `components` both experts load and `boundary_ratio` (None: the directory's
    `model_index.json`) picks between them; `expand_timesteps` (None: `model_index.json`, else false)
    marks the TI2V-5B layout.
    """
    from diffusers import WanTransformer3DModel

    _check_components(components)
    if not path:
        raise FileNotFoundError(
            f"no Wan weights directory given: set the environment variable {env_var} to a local "
            f"diffusers-format directory (e.g. Wan2.1-I2V-14B-480P-Diffusers) or pass backbone.path=DIR")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Wan weights directory {root} (from {env_var} / backbone.path) does not exist")
    missing = [c for c in components if any(not (root / f).exists() for f in _REQUIRED_FILES[c])]
    if missing:
        parts = "; ".join(f"{', '.join(f for f in _REQUIRED_FILES[c] if not (root / f).exists())} "
                          f"({_WHAT[c]})" for c in missing)
        raise FileNotFoundError(
            f"Wan weights directory {root} (from {env_var} / backbone.path) is incomplete: missing {parts}. "
            f"Download the complete diffusers-format model into it (every folder of the model repository), "
            f"or, where a part is truly unneeded, drop it from backbone.components")
    index = json.loads((root / MODEL_INDEX).read_text()) if (root / MODEL_INDEX).is_file() else {}
    if "transformer_2" in components:
        boundary_ratio = boundary_ratio if boundary_ratio is not None else index.get("boundary_ratio")
        if boundary_ratio is None:
            raise ValueError(f"{root} has two experts but no boundary_ratio in {MODEL_INDEX}: set "
                             f"backbone.boundary_ratio (Wan2.2-I2V-A14B: 0.9, T2V-A14B: 0.875)")
    if expand_timesteps is None:
        expand_timesteps = bool(index.get("expand_timesteps", False))
    _check_vae_fits(root, components)
    kw = dict(local_files_only=True)
    dit = WanTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=_dtype(dtype), **kw)
    dit_2 = WanTransformer3DModel.from_pretrained(root / "transformer_2", torch_dtype=_dtype(dtype), **kw) \
        if "transformer_2" in components else None
    vae = _vae_class(root / "vae", vae_class).from_pretrained(root / "vae", torch_dtype=torch.float32, **kw) \
        if "vae" in components else None
    tok = enc = None
    if "text_encoder" in components:
        from transformers import AutoTokenizer, UMT5EncoderModel

        tok = AutoTokenizer.from_pretrained(root / "tokenizer", **kw)
        enc = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=_dtype(dtype), **kw)
    clip, size, mean, std = None, 224, _CLIP_MEAN, _CLIP_STD
    if "image_encoder" in components and dit.config.image_dim is not None:
        from transformers import CLIPVisionModel

        clip = CLIPVisionModel.from_pretrained(root / "image_encoder", torch_dtype=torch.float32, **kw)
        proc = json.loads((root / "image_processor" / "preprocessor_config.json").read_text())
        crop = proc.get("crop_size", size)
        size = crop["height"] if isinstance(crop, dict) else int(crop)
        mean, std = tuple(proc.get("image_mean", mean)), tuple(proc.get("image_std", std))
    z = dit.config.out_channels
    if dit.config.in_channels not in (2 * z + 4, z):
        raise ValueError(f"{root}/transformer has in_channels={dit.config.in_channels}; SVI needs an I2V "
                         f"transformer with 2 x {z} + 4 input channels ({z} noisy + 4 mask + {z} condition; "
                         f"36 for Wan 2.1) or a T2V one with {z} (the FIFO and MIGA samplers)")
    if dit_2 is not None and (dit_2.config.in_channels, dit_2.config.out_channels) != \
            (dit.config.in_channels, dit.config.out_channels):
        raise ValueError(f"{root}: transformer and transformer_2 disagree on their channels; both experts must "
                         f"come from the same Wan 2.2 model")
    stack = WanStack(dit, vae, enc, tok, clip, image_size=size, image_mean=mean, image_std=std, text_len=text_len,
                     clip_resize=clip_resize, transformer_2=dit_2, boundary_ratio=boundary_ratio,
                     expand_timesteps=expand_timesteps)
    return _check_dims(stack.eval(), dims)


def load_wan_from_env(env_var: str, path: str | None = None, **kwargs) -> WanStack:
    """`load_wan_dir` with the directory taken from `path` or else the environment variable."""
    return load_wan_dir(path or os.environ.get(env_var), env_var=env_var, **kwargs)


def _check_vae_fits(root: Path, components: Sequence[str]) -> None:
    """The VAE's latent width must be the transformer's: refuse a Wan 2.1 VAE beside a Wan 2.2 TI2V DiT (and
    the reverse) from the configs alone, before any weight is read."""
    if "vae" not in components:
        return
    dit_cfg = json.loads((root / "transformer" / "config.json").read_text())
    vae_cfg = json.loads((root / "vae" / "config.json").read_text())
    z, out = vae_cfg.get("z_dim", 16), dit_cfg.get("out_channels", 16)
    if z != out:
        raise ValueError(f"{root}/vae has {z} latent channels but {root}/transformer predicts {out}: the VAE belongs "
                         f"to another Wan model (Wan2.2-TI2V-5B needs the 48-channel Wan 2.2 VAE, Wan 2.1 and "
                         f"Wan2.2-A14B the 16-channel one); put the model's own vae/ folder there")


def _vae_class(folder: Path, vae_class: str | type | None):
    """The autoencoder class of `folder`: `vae_class` (a class or a dotted path), else `AutoencoderKLWan`.

    The saved config names the class that wrote it; a mismatch is refused here rather than failing
    inside `from_pretrained` with a list of unexpected weights.
    """
    from diffusers import AutoencoderKLWan

    if isinstance(vae_class, str):
        from hydra.utils import get_class

        vae_class = get_class(vae_class)
    cls = vae_class or AutoencoderKLWan
    saved = json.loads((folder / "config.json").read_text()).get("_class_name")
    if saved and saved != cls.__name__:
        raise ValueError(f"{folder}/config.json was written by {saved}, but the backbone loads {cls.__name__}: "
                         f"set backbone.vae_class to the class that wrote it (a dotted path)")
    return cls


def _check_dims(stack: WanStack, dims: dict | None) -> WanStack:
    """Compare the config's declared dims (used to shape data) with the model actually built."""
    if not dims:
        return stack
    cfg = stack.transformer.config
    actual = {"latent_channels": cfg.out_channels, "text_dim": cfg.text_dim, "image_dim": cfg.image_dim,
              "text_len": stack.text_len}
    wrong = {k: (dims[k], v) for k, v in actual.items() if k in dims and dims[k] != v}
    if wrong:
        detail = ", ".join(f"{k}: config {a} vs model {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"backbone.dims disagree with the loaded transformer ({detail}); fix backbone.dims")
    return stack


def _check_components(components: Sequence[str]) -> None:
    unknown = set(components) - set(COMPONENTS)
    if unknown or "transformer" not in components:
        raise ValueError(f"backbone.components must include 'transformer' and only use {COMPONENTS}, "
                         f"got {list(components)}")


def _plain(cfg) -> dict:
    """Hydra passes DictConfig/ListConfig; diffusers configs want plain python (tuples for sizes)."""
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    cfg = dict(cfg)
    if isinstance(cfg.get("patch_size"), list):  # the transformer indexes it as a tuple
        cfg["patch_size"] = tuple(cfg["patch_size"])
    return cfg
