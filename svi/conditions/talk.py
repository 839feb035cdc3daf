"""SVI-Talk: a face image driven by speech. K = 1 motion frame, reference padding, 25 frames per second.

The official SVI-Talk is MultiTalk's single-person audio path on Wan 2.1 I2V, frozen, with an SVI LoRA on
top. Here it is attached to the stock `WanTransformer3DModel` with MultiTalk's parameter names, so a
MultiTalk/InfiniteTalk audio-adapter file loads by name (`adapter_path`) and an official SVI-Talk LoRA
applies on top:

    features  (B, F, layers, dim)  wav2vec2 outputs, one vector per video frame (svi/conditions/audio.py)
    windows   (B, F, 5, layers, dim)            frames t-2..t+2 around each frame
    packed    latent frame 0: the 5-frame window of frame 0; latent frame k >= 1 (pixel frames 4k-3..4k):
              the first frame's window[:3], the middle two frames' centres, the last frame's window[2:] = 8
    audio_proj (AudioProjection: proj1, proj1_vf, proj2, proj3, norm) -> (B, T, 32 tokens, 768)
    per block, after the text cross-attention:
              x += audio_cross_attn(norm_x(x), the 32 tokens of x's own latent frame)

`audio_cross_attn` (q_linear, kv_linear, proj) attends from each latent frame's tokens to that frame's 32
audio tokens only. Its `proj` starts at zero, so with no adapter file the model is unchanged. The adapters
are frozen by default (as officially) and trainable with `trainable: true`.

Training drops the audio (zero features) with probability `audio_drop_prob` (0.1). Generation uses three
guidance passes: `v = v_uncond + s_text (v_cond - v_drop_text) + s_audio (v_drop_text - v_uncond)`, where
drop_text is the negative prompt with the audio and uncond the negative prompt with silence.

Data: a dataset row names its speech file (`audio` column); a training clip gets the audio of its own
frames (+/- 2 frames for the windows), stretched to the features' 25 fps. Generation: `inputs.audio=...`;
the clips follow the audio's length unless `num_clips` says otherwise, clip i gets frames
[i (F - K), i (F - K) + F) of the audio exactly, and the finished video carries the audio track.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svi.backbones.lowmem import execution_device
from svi.conditions.audio import (SAMPLE_RATE, AudioReadError, Wav2Vec2Features, audio_info, loudness_gain,
                                  read_audio, stretch)
from svi.conditions.base import ClipGeometry, ClipSpan, Condition

WINDOW = 5  # audio frames around each video frame
MARGIN = WINDOW // 2  # frames of context beyond a clip's ends
FRAMES_PER_LATENT = 4  # Wan's temporal compression
_ADAPTER_KEY = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")


class AudioProjection(nn.Module):
    """MultiTalk's `AudioProjModel` layout: packed audio windows -> `tokens` context tokens per latent frame."""

    def __init__(self, layers: int = 12, dim: int = 768, hidden: int = 512, tokens: int = 32, token_dim: int = 768):
        super().__init__()
        self.tokens, self.token_dim = tokens, token_dim
        self.proj1 = nn.Linear(WINDOW * layers * dim, hidden)  # latent frame 0: one 5-frame window
        self.proj1_vf = nn.Linear((WINDOW + FRAMES_PER_LATENT - 1) * layers * dim, hidden)  # later frames: 8
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, first: Tensor, later: Tensor) -> Tensor:
        """first (B, 1, 5, L, D), later (B, T - 1, 8, L, D) -> (B, T, tokens, token_dim)."""
        a = torch.relu(self.proj1(first.flatten(2)))  # (B, 1, hidden)
        b = torch.relu(self.proj1_vf(later.flatten(2)))  # (B, T - 1, hidden)
        h = torch.relu(self.proj2(torch.cat([a, b], dim=1)))
        out = self.proj3(h).unflatten(-1, (self.tokens, self.token_dim))
        return self.norm(out)


class AudioCrossAttention(nn.Module):
    """MultiTalk's single-person audio attention: each latent frame's video tokens attend to its own audio tokens."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)  # no effect until weights are loaded or trained
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, tokens: Tensor, frames: int) -> Tensor:
        """x (B, T*S, dim), tokens (B, T, N, context_dim) -> (B, T*S, dim)."""
        B, L, C = x.shape
        S, hd = L // frames, C // self.heads
        q = self.q_linear(x).view(B * frames, S, self.heads, hd).transpose(1, 2)  # (B T, heads, S, hd)
        kv = self.kv_linear(tokens.flatten(0, 1)).view(B * frames, tokens.shape[2], 2, self.heads, hd)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B T, heads, N, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B T, heads, S, hd)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


def audio_windows(features: Tensor) -> Tensor:
    """(B, F + 4, L, D) features with 2 frames of context at each end -> (B, F, 5, L, D) windows."""
    return features.unfold(1, WINDOW, 1).permute(0, 1, 4, 2, 3)


def pack_windows(windows: Tensor) -> tuple[Tensor, Tensor]:
    """(B, F, 5, L, D), F = 1 + 4(T-1) -> latent frame 0's window (B, 1, 5, L, D) and the later latent frames'
    8 vectors (B, T - 1, 8, L, D): the first frame's window[:3], the middle frames' centres, the last's [2:]."""
    B, Fr = windows.shape[:2]
    if (Fr - 1) % FRAMES_PER_LATENT:
        raise ValueError(f"audio windows need 1 + 4k frames, got {Fr}")
    later = windows[:, 1:].unflatten(1, (-1, FRAMES_PER_LATENT))  # (B, T-1, 4, 5, L, D)
    m = MARGIN
    packed = torch.cat([later[:, :, 0, : m + 1], later[:, :, 1:-1, m], later[:, :, -1, m:]], dim=2)
    return windows[:, :1], packed


class TalkCondition(Condition):
    """Args as `Condition`, with the Talk defaults, plus:

    audio_encoder: what turns speech into frame-aligned features (an object with `__call__(samples (B, n),
        num_frames) -> (B, F, layers, dim)`, `sample_rate`, `check()`); None: `Wav2Vec2Features` from
        `$SVI_WAV2VEC2_DIR`.
    adapter_path: a MultiTalk/InfiniteTalk audio-adapter file (`multitalk.safetensors`) loaded into the
        adapters when they are attached; None: zero-initialised adapters.
    trainable: train the audio adapters with the LoRA (officially frozen).
    audio_drop_prob: training: probability of zeroed audio features (0.1, official).
    audio_cfg, text_cfg: guidance scales of the three passes (official 5.0 and 2.0); text_cfg None: the
        generation's `cfg`.
    feature_layers, feature_dim: the features' shape per frame (12 x 768 for a wav2vec2 base model).
    hidden, tokens, token_dim: the audio projection (MultiTalk: 512, 32, 768).
    frame_rate: frames per second of the features and the video (25, as MultiTalk).
    loudness_lufs: speech is normalised to this loudness first (-23, official); None: left as is.
    """

    extra_fields = ("audio",)

    def __init__(self, name: str = "talk", num_motion_frames: int = 1, ref_pad_num: int = -1,
                 mask_all_motion_frames: bool = False, prompt_per_clip: bool = False, audio_encoder: Any = None,
                 adapter_path: str | None = None, trainable: bool = False, audio_drop_prob: float = 0.1,
                 audio_cfg: float = 5.0, text_cfg: float | None = 2.0, feature_layers: int = 12,
                 feature_dim: int = 768, hidden: int = 512, tokens: int = 32, token_dim: int = 768,
                 frame_rate: float = 25.0, loudness_lufs: float | None = -23.0):
        super().__init__(name, num_motion_frames, ref_pad_num, mask_all_motion_frames, prompt_per_clip)
        if not 0.0 <= audio_drop_prob <= 1.0:
            raise ValueError(f"condition.audio_drop_prob must be a probability in [0, 1], got {audio_drop_prob}")
        if audio_cfg <= 0 or (text_cfg is not None and text_cfg <= 0) or frame_rate <= 0:
            raise ValueError("condition.audio_cfg, condition.text_cfg and condition.frame_rate must be > 0")
        if adapter_path is not None and not Path(adapter_path).expanduser().is_file():
            raise FileNotFoundError(f"condition.adapter_path {adapter_path} does not exist (a MultiTalk audio-adapter "
                                    f"file, e.g. multitalk.safetensors)")
        self.audio_encoder = audio_encoder if audio_encoder is not None else Wav2Vec2Features()
        self.adapter_path, self.trainable, self.audio_drop_prob = adapter_path, trainable, audio_drop_prob
        self.audio_cfg, self.text_cfg = audio_cfg, text_cfg
        self.feature_layers, self.feature_dim = feature_layers, feature_dim
        self.hidden, self.tokens, self.token_dim = hidden, tokens, token_dim
        self.frame_rate, self.loudness_lufs = frame_rate, loudness_lufs
        self.projection: AudioProjection | None = None
        self.blocks: list[nn.Module] = []
        self._features: Tensor | None = None  # (B, F + 4, L, D) while a forward runs inside forward_context
        self._tokens: Tensor | None = None  # (B, T, tokens, token_dim) of the forward in progress
        self._speech: tuple[str, Tensor] | None = None  # (path, features of the whole file) of a generation

    # -- speech ---------------------------------------------------------------------------------
    def _samples(self, path: str, start: float, stop: float, gain: float | None = None) -> np.ndarray:
        """Seconds [start, stop) of `path` at the encoder's rate, loudness-normalised (silence beyond the file)."""
        rate = getattr(self.audio_encoder, "sample_rate", SAMPLE_RATE)
        if gain is None:
            gain = self._gain(path)
        return read_audio(path, rate, start, stop) * gain

    def _gain(self, path: str) -> float:
        if self.loudness_lufs is None:
            return 1.0
        rate = getattr(self.audio_encoder, "sample_rate", SAMPLE_RATE)
        return loudness_gain(read_audio(path, rate), rate, self.loudness_lufs)

    def _check_shape(self, features: Tensor) -> Tensor:
        if tuple(features.shape[-2:]) != (self.feature_layers, self.feature_dim):
            raise ValueError(f"the audio encoder gives {tuple(features.shape[-2:])} features per frame but "
                             f"condition.feature_layers/feature_dim say ({self.feature_layers}, {self.feature_dim})")
        return features

    # -- training data --------------------------------------------------------------------------
    def read_row(self, row: Mapping[str, str], base: str, where: str) -> dict[str, Any]:
        value = (row.get("audio") or "").strip()
        if not value:
            raise ValueError(f"{where}: no speech: condition=talk needs an `audio` column naming each video's "
                             f"audio file (wav, flac, mp3, or a video with an audio stream)")
        path = Path(base) / value
        try:
            audio_info(path)
            gain = self._gain(str(path))
        except AudioReadError as err:
            raise AudioReadError(f"{where}: {err}") from None
        return {"audio": str(path), "gain": gain}

    def load_extras(self, extras: Mapping[str, Any], span: ClipSpan) -> dict[str, Tensor]:
        """The clip's own audio, 2 frames of context at each end, stretched to the features' frame rate."""
        first, last = span.frame_indices[0], span.frame_indices[-1]
        step = (last + 1 - first) / (len(span.frame_indices) * span.fps)  # seconds per clip frame (stride / fps)
        samples = self._samples(extras["audio"], first / span.fps - MARGIN * step,
                                (last + 1) / span.fps + MARGIN * step, extras.get("gain", 1.0))
        rate = getattr(self.audio_encoder, "sample_rate", SAMPLE_RATE)
        length = round((len(span.frame_indices) + 2 * MARGIN) * rate / self.frame_rate)
        return {"audio": torch.from_numpy(stretch(samples, length))}  # (n,)

    def encode_extras(self, stack, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Speech samples (B, n) -> frame-aligned features (B, F + 4, L, D) (what svi-prepare caches)."""
        if "audio" not in raw:
            return {}
        samples = raw["audio"].float()
        rate = getattr(self.audio_encoder, "sample_rate", SAMPLE_RATE)
        frames = round(samples.shape[1] * self.frame_rate / rate)
        return {"audio": self._check_shape(self.audio_encoder(samples, frames))}

    def random_extras(self, batch_size: int, geometry: ClipGeometry, generator: torch.Generator) -> dict[str, Tensor]:
        shape = (batch_size, geometry.num_frames + 2 * MARGIN, self.feature_layers, self.feature_dim)
        return {"audio": torch.randn(shape, generator=generator)}

    def training_inputs(self, batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
        out = dict(batch)
        keep = torch.rand(batch["latents"].shape[0], generator=generator) >= self.audio_drop_prob
        if "audio" in (batch.get("extras") or {}):
            audio = batch["extras"]["audio"]
            out["extras"] = {**batch["extras"], "audio": audio * keep.to(audio).view(-1, 1, 1, 1)}
        return out

    # -- the network ----------------------------------------------------------------------------
    def attach(self, transformer: nn.Module) -> nn.Module:
        """`audio_proj` on the transformer and `audio_cross_attn` + `norm_x` on every block (MultiTalk's names),
        wired in by hooks: the stock blocks' forward is not replaced."""
        cfg = transformer.config
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        dtype = torch.float32 if self.trainable else transformer.dtype
        transformer.audio_proj = AudioProjection(self.feature_layers, self.feature_dim, self.hidden, self.tokens,
                                                 self.token_dim)
        self.projection = transformer.audio_proj
        self.blocks = list(transformer.blocks)
        for block in self.blocks:
            block.audio_cross_attn = AudioCrossAttention(inner, self.token_dim, cfg.num_attention_heads)
            block.norm_x = nn.LayerNorm(inner, eps=1e-6)
            block.norm2.register_forward_pre_hook(lambda m, args, block=block: setattr(block, "_svi_h", args[0]))
            block.attn2.register_forward_hook(lambda m, args, out, block=block: self._add_audio(block, out))
        modules = nn.ModuleList([self.projection, *[m for b in self.blocks for m in (b.audio_cross_attn, b.norm_x)]])
        modules.to(device=transformer.device, dtype=dtype).requires_grad_(self.trainable)
        transformer.patch_embedding.register_forward_hook(self._project)
        if self.adapter_path is not None:
            from safetensors.torch import load_file

            from svi.backbones.official import strip_prefixes

            tensors = {strip_prefixes(k): v for k, v in load_file(str(Path(self.adapter_path).expanduser())).items()}
            if not self.load_adapter_tensors(tensors):
                raise ValueError(f"condition.adapter_path {self.adapter_path} holds no audio-adapter tensors "
                                 f"(audio_proj.*, blocks.N.audio_cross_attn.*, blocks.N.norm_x.*)")
        return modules

    def _project(self, module, args, out: Tensor) -> Tensor:
        """At the patch embedding (first thing in every forward): the audio tokens of this forward, once.

        They stay set after the forward: a checkpointed block recomputes its forward during the backward pass,
        outside `forward_context`, and must add the same audio again; the next forward replaces them.
        """
        self._tokens = None
        if self._features is not None:
            T = out.shape[2]
            feats = self._features.to(device=out.device, dtype=self.projection.proj1.weight.dtype)
            first, later = pack_windows(audio_windows(feats))
            if 1 + later.shape[1] != T:
                raise ValueError(f"{feats.shape[1]} audio frames (clip frames + 4) do not fit {T} latent frames")
            self._tokens = self.projection(first, later)  # (B, T, tokens, token_dim)
            self._frames = T
        return out

    def _add_audio(self, block: nn.Module, out: Tensor) -> Tensor:
        """attn2's output + the audio attention on the state after it: the block then computes
        h + attn2(..) + audio(norm_x(h + attn2(..))), MultiTalk's order (h: the input of norm2, kept by a hook)."""
        if self._tokens is None:
            return out
        x = block._svi_h.to(out.dtype) + out  # the state after the text cross-attention
        normed = block.norm_x(x.float()).to(block.audio_cross_attn.q_linear.weight.dtype)
        audio = block.audio_cross_attn(normed, self._tokens.to(normed.dtype), self._frames)
        return out + audio.to(out.dtype)

    def forward_context(self, extras):  # the tokens stay for the backward recomputation (see `_project`)
        return self.holding("_features", (extras or {}).get("audio"))

    def guidance_branches(self, cond) -> list:
        """Three passes: cond, drop_text (negative prompt, speech), uncond (negative prompt, silence)."""
        s_text = self.text_cfg if self.text_cfg is not None else cond.cfg
        if cond.negative_text is None or (s_text == 1 and self.audio_cfg == 1) or "audio" not in cond.extras:
            return [(cond.text, cond.extras)]
        silent = {**cond.extras, "audio": torch.zeros_like(cond.extras["audio"])}
        return [(cond.text, cond.extras), (cond.negative_text, cond.extras), (cond.negative_text, silent)]

    def combine_guidance(self, velocities, cond) -> Tensor:
        """v_uncond + s_text (v_cond - v_drop_text) + s_audio (v_drop_text - v_uncond)."""
        if len(velocities) == 1:
            return velocities[0]
        v_cond, v_drop_text, v_uncond = velocities
        s_text = self.text_cfg if self.text_cfg is not None else cond.cfg
        return v_uncond + s_text * (v_cond - v_drop_text) + self.audio_cfg * (v_drop_text - v_uncond)

    def _adapter_modules(self) -> dict[str, nn.Module]:
        out = {"audio_proj": self.projection}
        for i, block in enumerate(self.blocks):
            out[f"blocks.{i}.audio_cross_attn"], out[f"blocks.{i}.norm_x"] = block.audio_cross_attn, block.norm_x
        return out

    def adapter_state_dict(self) -> dict[str, Tensor]:
        if not self.trainable:  # frozen adapters come from adapter_path, not from training
            return {}
        return {f"{name}.{k}": v for name, m in self._adapter_modules().items() for k, v in m.state_dict().items()}

    def load_adapter_tensors(self, tensors: Mapping[str, Tensor]) -> list[str]:
        mine = {k: v for k, v in tensors.items() if _ADAPTER_KEY.match(k)}
        if not mine:
            return []
        own = {f"{name}.{k}": v for name, m in self._adapter_modules().items() for k, v in m.state_dict().items()}
        unknown = sorted(set(mine) - set(own))
        wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in mine.items() if k in own and v.shape != own[k].shape}
        if unknown or wrong:
            raise ValueError(f"the audio-adapter tensors do not fit this backbone ({len(unknown)} unknown, e.g. "
                             f"{unknown[:2]}; shapes file vs model: {dict(list(wrong.items())[:2])}): a file for "
                             f"another Wan model, or other condition.feature_*/tokens/token_dim settings?")
        with torch.no_grad():
            for k, v in mine.items():
                own[k].copy_(v.to(own[k]))
        return sorted(mine)

    # -- generation -----------------------------------------------------------------------------
    def _speech_path(self, inputs: Mapping[str, Any]) -> str:
        path = inputs.get("audio")
        if not path:
            raise ValueError("condition=talk needs the speech: inputs.audio=speech.wav (any common audio format)")
        return str(Path(path).expanduser())

    def check_schedule(self, schedule: Sequence, inputs: Mapping[str, Any]) -> None:
        per_clip = sorted({k for clip in schedule for k in clip.extras})
        if per_clip:
            raise ValueError(f"condition=talk takes the speech for the whole generation (inputs.audio=...), not per "
                             f"clip; the schedule names {per_clip}")
        audio_info(self._speech_path(inputs))
        if hasattr(self.audio_encoder, "check"):
            self.audio_encoder.check()

    def clips_from_inputs(self, inputs: Mapping[str, Any], num_frames: int, fps: float) -> int | None:
        duration, _ = audio_info(self._speech_path(inputs))
        frames = int(duration * self.frame_rate)
        K = self.num_motion_frames
        if frames < num_frames:
            raise ValueError(f"audio {inputs['audio']} lasts {duration:.2f} s = {frames} frames at "
                             f"{self.frame_rate:g} fps, shorter than one clip ({num_frames} frames); give longer "
                             f"speech (or pad it with silence)")
        return 1 + -(-(frames - num_frames) // (num_frames - K))  # enough clips to cover every audio frame

    def _whole_speech(self, inputs: Mapping[str, Any], device) -> Tensor:
        """Features of the whole audio file (frames at `frame_rate`, L, D), computed once per generation."""
        path = self._speech_path(inputs)
        if self._speech is None or self._speech[0] != path:
            duration, _ = audio_info(path)
            samples = torch.from_numpy(self._samples(path, 0.0, duration))[None]
            frames = int(duration * self.frame_rate)
            self._speech = (path, self._check_shape(self.audio_encoder(samples.to(device), frames))[0].cpu())
        return self._speech[1]

    def clip_extras(self, stack, schedule: Sequence, index: int, inputs: Mapping[str, Any],
                    geometry: ClipGeometry) -> dict[str, Tensor]:
        """Clip i's features: frames [i (F - K), i (F - K) + F) of the audio, +/- 2 frames of context (clamped
        at the start as officially; silence past the end)."""
        device = execution_device(stack) if stack is not None else "cpu"
        speech = self._whole_speech(inputs, device)  # (n, L, D)
        F_, K = geometry.num_frames, self.num_motion_frames
        first = index * (F_ - K)
        idx = torch.arange(first - MARGIN, first + F_ + MARGIN)
        out = speech[idx.clamp(0, len(speech) - 1)]
        out[idx >= len(speech)] = 0.0
        return {"audio": out[None]}  # (1, F + 4, L, D)

    def soundtrack(self, inputs: Mapping[str, Any]) -> str | None:
        return self._speech_path(inputs)

    def spec(self) -> dict:
        return {**super().spec(), "features": [int(self.feature_layers), int(self.feature_dim)],
                "frame_rate": float(self.frame_rate), "loudness_lufs": self.loudness_lufs,
                "audio_encoder": type(self.audio_encoder).__name__}
