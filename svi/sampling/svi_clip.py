"""SVI's clip-by-clip sampler, and the Wan 2.1 autoregressive baseline as a mode of it.

    ref = input image; motion = [input image]
    for clip i:
        y_i    = condition(motion, ref)                      # Condition.build_y: the builder training uses
        x      = Euler(DiT, noise(seed_i), y_i, prompt_i, cfg_i) over shift(linspace(1, 0, N+1)[:-1])
        frames = decode(x)                                   # F frames
        motion = frames[-K:]                                 # hand-off to the next clip
        emit frames[:-K]  (all F frames for the last clip)

Hand-off modes:

* `pixel` (official): the last K decoded frames, quantised to uint8 exactly as they are written to the
  video (the official code passes the saved PIL frames; `quantize`: truncated as officially, or
  rounded), are VAE-encoded again inside the next `y`.
* `latent`: the same `y` is built, then its first `T_K = 1 + ceil((K - 1) / 4)` latent frames - the
  ones the K motion frames occupy - are replaced by the previous clip's last `T_K` denoised latent
  frames, so the motion content skips the VAE round trip. For K = 1 + 4m, condition latents 1..m cover
  exactly the pixel frames of the previous clip's last m latents; latent 0 (a single-frame latent in
  Wan's causal VAE) receives the previous latent whose *last* frame is the first motion frame, an
  approximation the model was not trained on. CLIP still sees the decoded first motion frame.

The first clip's motion is the input image once (`first_clip: single`, official; the condition then
uses one motion frame for that clip) or K copies of it (`repeat`, the official `--repeat_first_clip`).
A condition type with extra inputs (speech, a pose video) gives each clip its own slice of them
(`Condition.clip_extras`), which the `Denoiser` hands to the type's adapters.

`base` mode (`conf/sampler/base.yaml`): no LoRA and Wan's stock I2V condition (K = 1, zero padding,
frame 0 known), i.e. the Wan 2.1 autoregressive baseline of the paper's tables.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from svi.backbones.lowmem import execution_device
from svi.conditions import ClipGeometry, Condition
from svi.config import as_dataclass
from svi.flow import FlowConfig, inference_sigmas
from svi.sampling.base import Chunk, Denoiser, EulerSolver, GenerationRequest, LongVideoSampler, WindowCond
from svi.sampling.media import QUANTIZE, from_uint8, to_uint8

HANDOFFS = ("pixel", "latent")
FIRST_CLIP = ("single", "repeat")


def motion_latent_frames(num_motion_frames: int) -> int:
    """T_K: latent frames the first K pixel frames occupy in Wan's causal VAE (1 + ceil((K-1)/4))."""
    return 1 + (num_motion_frames + 2) // 4


def latent_handoff(y: Tensor, prev_latents: Tensor) -> Tensor:
    """y (B, 20, T, h, w) with condition latent frames [:T_K] replaced by prev_latents (B, 16, T_K, h, w)."""
    n = prev_latents.shape[2]
    y = y.clone()
    y[:, 4:, :n] = prev_latents.to(device=y.device, dtype=y.dtype)
    return y


def clip_noise(seed: int, shape: tuple[int, ...]) -> Tensor:
    """Initial noise of a clip: a fresh CPU generator per clip, so any clip can be redrawn on resume
    (and on any device) from its seed alone. Same draw as diffusers' `randn_tensor` with that generator."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


class SVIClipSampler(LongVideoSampler):
    """One window per clip, scalar sigma per step, hand-off through the condition.

    Clip i depends on the schedule entries 0..i only, so a run can be extended (`extendable`), and a
    stream may start from any K frames given as `carry["motion"]` (`video=`: an existing video's last K).

    Args:
        condition: the `Condition` (or subclass) that builds `y`, shared with training.
        stack: a `WanStack` (LoRA, if any, already merged), here or later through `bind`.
        flow: `FlowConfig` (shift, num_inference_steps).
        handoff: `pixel` | `latent` (module docstring).
        first_clip: `single` | `repeat`: the first clip's motion frames.
        use_lora: whether the entrypoint should merge `lora.path` (false for the base model).
        stock_condition: use Wan's own I2V condition (K = 1, zeros) instead of `condition`.
        quantize: `truncate` (official) | `round`: how decoded frames become uint8 (written and handed over).
        progress: show a progress bar over the denoising steps of each clip.
    """

    extendable = True

    def __init__(self, condition: Condition, stack=None, flow: Any = None, handoff: str = "pixel",
                 first_clip: str = "single", use_lora: bool = True, stock_condition: bool = False,
                 quantize: str = "truncate", progress: bool = True, name: str = "svi"):
        handoff = getattr(handoff, "value", handoff)  # the typed config passes an Enum
        quantize = getattr(quantize, "value", quantize)
        if handoff not in HANDOFFS:
            raise ValueError(f"handoff must be one of {HANDOFFS}, got {handoff!r}")
        if first_clip not in FIRST_CLIP:
            raise ValueError(f"sampler.first_clip must be one of {FIRST_CLIP}, got {first_clip!r}")
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
        self.name = name
        self.condition = Condition(name="wan_i2v", num_motion_frames=1, ref_pad_num=0) \
            if stock_condition else condition
        self.flow = as_dataclass(FlowConfig, flow)
        self.handoff = handoff
        self.first_clip = first_clip
        self.use_lora = use_lora
        self.quantize = quantize
        self.progress = progress
        self.solver = EulerSolver()
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self.stack = self.denoiser = None
        if stack is not None:
            self.bind(stack)

    def bind(self, stack) -> "SVIClipSampler":
        """Give the sampler its backbone (configuration and validation come first, without weights)."""
        self.stack = stack
        self.denoiser = Denoiser(stack, self.condition)
        self._text_cache.clear()
        return self

    @property
    def num_motion_frames(self) -> int:
        return self.condition.num_motion_frames

    def validate(self, request: GenerationRequest) -> None:
        F, K = request.num_frames, self.num_motion_frames
        if (F - 1) % 4 or F <= K:
            raise ValueError(f"num_frames must be 1+4k and more than the {K} motion frames, got {F}")

    # ------------------------------------------------------------------------------------------
    def stream(self, request: GenerationRequest, start: int = 0,
               carry: dict[str, Tensor] | None = None) -> Iterator[Chunk]:
        self.validate(request)
        if self.stack is None:
            raise RuntimeError("SVIClipSampler.stream needs a backbone: call bind(stack) first")
        device = execution_device(self.stack)
        ref = request.image.to(device)  # (1, 3, H, W)
        F, K = request.num_frames, self.num_motion_frames
        sigmas = inference_sigmas(self.flow.num_inference_steps, self.flow.shift)  # (N,) descending
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)  # + the terminal 0
        carry = dict(carry or {})
        if start > 0 and "motion" not in carry:
            raise ValueError(f"resuming at clip {start} needs clip {start - 1}'s motion frames in `carry`")
        for i in range(start, request.num_clips):
            spec = request.schedule[i]
            if "motion" in carry:
                motion = from_uint8(carry["motion"]).to(device)  # (1, 3, K, H, W)
            else:  # first clip: the input image
                reps = K if self.first_clip == "repeat" else 1
                motion = ref.unsqueeze(2).repeat(1, 1, reps, 1, 1)
            text = self._encode_text(spec.prompt)
            negative = self._encode_text(spec.negative_prompt) if spec.cfg > 1 else None
            geometry = ClipGeometry(F, request.height, request.width, request.fps)
            extras = self.condition.clip_extras(self.stack, request.schedule, i, request.inputs, geometry)
            x = self.sample_clip(motion, ref, F, text, lambda shape: clip_noise(spec.seed, shape).to(device),
                                 negative_text=negative, cfg=spec.cfg,
                                 prev_latents=carry.get("latents") if self.handoff == "latent" else None,
                                 sigmas=sigmas, extras=extras, desc=f"clip {i + 1}/{request.num_clips}")
            frames = to_uint8(self.stack.decode_latents(x), self.quantize)  # (F, H, W, 3)
            last = i == request.num_clips - 1
            carry = {"motion": torch.from_numpy(frames[-K:].copy())}
            if self.handoff == "latent":
                carry["latents"] = x[:, :, -motion_latent_frames(K):].detach().cpu().clone()
            yield Chunk(index=i, frames=frames if last else frames[:-K], cursor=i + 1, carry=carry,
                        info={"clip": i, "seed": spec.seed, "cfg": spec.cfg, "prompt": spec.prompt},
                        latents=x.detach().cpu(), tail=K if last else 0)

    def sample_clip(self, motion: Tensor, ref: Tensor, num_frames: int, text: Tensor, noise,
                    negative_text: Tensor | None = None, cfg: float = 1.0, prev_latents: Tensor | None = None,
                    sigmas: Tensor | None = None, extras: dict | None = None, desc: str = "") -> Tensor:
        """One clip for a batch: motion (B, 3, k, H, W) and ref (B, 3, H, W) in [-1, 1], text (B, L, D)
        -> clean latents (B, 16, T, h, w). `noise` is a tensor or a function of the latent shape; `extras`
        the condition type's encoded extra inputs of this clip. `stream` runs this with B = 1; batched
        evaluations run many videos at once."""
        if sigmas is None:
            sigmas = inference_sigmas(self.flow.num_inference_steps, self.flow.shift)
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).to(motion.device)
        y = self.condition.build_y(self.stack, motion, ref, num_frames)  # (B, 20, T, h, w)
        if prev_latents is not None:
            y = latent_handoff(y, prev_latents.to(y.device))
        cond = WindowCond(y=y, text=text, negative_text=negative_text,
                          image=self.stack.encode_image(self.condition.clip_image(motion)), cfg=cfg,
                          extras=dict(extras or {}))
        shape = (y.shape[0], self.stack.latent_channels, *y.shape[2:])
        x = noise(shape) if callable(noise) else noise
        x = self.denoise(x, sigmas, cond, desc=desc)
        keep = getattr(self.stack, "keep_condition", None)  # Wan 2.2 TI2V: the given leading frames, re-substituted
        return keep(x, y) if keep is not None else x

    def denoise(self, x: Tensor, sigmas: Tensor, cond: WindowCond, desc: str = "") -> Tensor:
        """Euler from sigma[0] to the terminal 0 with one sigma per sample: (B, 16, T, h, w) -> x0."""
        B = x.shape[0]
        steps = range(len(sigmas) - 1)
        for j in tqdm(steps, desc=desc, leave=False, disable=not self.progress, unit="step"):
            s, s_next = sigmas[j].expand(B), sigmas[j + 1].expand(B)
            x = self.solver.step(x, self.denoiser(x, s, cond), s, s_next)
        return x

    # ------------------------------------------------------------------------------------------
    def _encode_text(self, prompt: str) -> Tensor:
        """Text embeddings, cached for the last few prompts (consecutive clips usually share them)."""
        if prompt not in self._text_cache:
            self._text_cache[prompt] = self.stack.encode_text([prompt])
            while len(self._text_cache) > 4:  # bounded: memory must not grow with the number of clips
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(prompt)
        return self._text_cache[prompt]
