"""What FIFO-Diffusion and MIGA share: a queue of latents at different noise levels, denoised through
windows with one sigma per latent frame, finished latents streamed out and decoded once.

Levels count *steps taken* on a T-step schedule: a latent at level k sits at sigma_k, where

    sigma = shift(linspace(1, 0, T + 1)[:-1]) ++ [0]        (T + 1,), sigma_0 ~ 1 (noise), sigma_T = 0

and one Euler step moves it to level k + 1: x <- x + (sigma_{k+1} - sigma_k) v̂(x, sigma_k).

A pass (`DiagonalSampler.jacobi_pass`) runs a list of `Window`s over the queue. A window reads some
slots (each with its own sigma, so the DiT sees one timestep per latent frame), and *commits* the
update of some of them; the other slots are context. Every window reads the state from before the pass
(Jacobi), so the order of windows does not matter and windows of equal length are batched.

How the I2V condition enters a window (`WindowConditioner`): the base clip that initialises the queue is
an ordinary first clip (`Condition.build_y`: the image known at latent 0). Every later window gets the
reference padding of SVI-Shot: the condition latents of the reference image repeated over the window,
mask 0 (nothing known), and the CLIP tokens of the reference. The condition latents of a window of L
latents are the first L of one window-length encoding (Wan's VAE is causal, so this equals encoding an
L-latent video). A T2V backbone gets no `y` and no CLIP tokens.

Every random draw is a function of (seed, stream, global latent index), so a resumed stream, a batch of
videos, and a re-run produce the same latents.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from svi.backbones.lowmem import execution_device
from svi.config import as_dataclass
from svi.flow import FlowConfig, add_noise, inference_sigmas
from svi.sampling.base import Chunk, Denoiser, EulerSolver, GenerationRequest, LongVideoSampler, WindowCond
from svi.sampling.decode import StreamingDecoder, frames_for_latents, latents_for_frames
from svi.sampling.media import QUANTIZE, to_uint8


def level_sigmas(num_steps: int, shift: float) -> Tensor:
    """sigma_k for k = 0..T (steps taken): the shifted Euler schedule plus the terminal 0, (T + 1,)."""
    return torch.cat([inference_sigmas(num_steps, shift), torch.zeros(1)])


def latent_noise(seed: int, index: int, shape: Sequence[int], stream: str = "tail") -> Tensor:
    """Gaussian noise for the latent(s) starting at global index `index`, from a CPU generator seeded by
    (seed, stream, index): the same draw on every device, in every session, for every batch position."""
    digest = hashlib.sha256(f"{int(seed)}:{stream}:{int(index)}".encode()).digest()
    g = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


@dataclass(frozen=True)
class Window:
    """One model call: the queue slots it reads (window order) and the window positions it commits."""

    read: tuple[int, ...]
    commit: tuple[int, ...]

    @property
    def committed_slots(self) -> tuple[int, ...]:
        return tuple(self.read[p] for p in self.commit)


def committed_once(windows: Sequence[Window], slots: Sequence[int]) -> bool:
    """True when the windows commit every slot in `slots` exactly once and nothing else."""
    done = [s for w in windows for s in w.committed_slots]
    return sorted(done) == sorted(slots)


# ------------------------------------------------------------------------------------------------
# conditions of a window
# ------------------------------------------------------------------------------------------------
@dataclass
class ClipText:
    """The text side of one schedule entry, encoded: (B, L, D) embeddings, guidance."""

    text: Tensor
    negative: Tensor | None
    cfg: float


class WindowConditioner:
    """Builds the `WindowCond` of a batch of windows (module docstring: how the I2V condition enters).

    Args:
        stack: the backbone (`WanStack`).
        condition: the condition type; builds the base clip's `y` (I2V only).
        ref: (B, 3, H, W) in [-1, 1], the reference image; None for a T2V backbone.
        window: latent frames of the longest window.
        texts: clip index -> its `ClipText` (the schedule entry a window's prompt comes from).
    """

    def __init__(self, stack, condition, ref: Tensor | None, window: int, texts: Callable[[int], ClipText]):
        self.stack, self.condition, self.texts, self.window = stack, condition, texts, window
        self.i2v = stack.is_i2v
        if self.i2v and ref is None:
            raise ValueError("an I2V backbone needs the reference image: image=PATH")
        self.ref = ref
        self.y_ref = self.image = None
        if self.i2v:
            F = frames_for_latents(window)
            cond_latent = stack.encode_video(ref.unsqueeze(2).expand(-1, -1, F, -1, -1))  # (B, C, f, h, w)
            mask = cond_latent.new_zeros(cond_latent.shape[0], 4, *cond_latent.shape[2:])
            self.y_ref = torch.cat([mask, cond_latent], dim=1)  # (B, 4 + C, f, h, w): reference padding
            self.image = stack.encode_image(ref)

    def first_clip(self, num_latents: int, clip: int = 0) -> WindowCond:
        """The base clip's condition: an ordinary first clip (the image known at latent 0)."""
        t = self.texts(clip)
        y = image = None
        if self.i2v:
            motion = self.ref.unsqueeze(2)  # (B, 3, 1, H, W)
            y = self.condition.build_y(self.stack, motion, self.ref, frames_for_latents(num_latents))
            image = self.stack.encode_image(self.condition.clip_image(motion))
        return WindowCond(y=y, text=t.text, negative_text=t.negative, image=image, cfg=t.cfg)

    def __call__(self, length: int, clip: int, copies: int = 1) -> WindowCond:
        """The condition of `copies` windows of `length` latents taking their prompt from clip `clip`:
        batch (copies * B), window-major."""
        if length > self.window:
            raise ValueError(f"a window of {length} latents is longer than the {self.window} prepared")
        t = self.texts(clip)

        def rep(v: Tensor | None) -> Tensor | None:
            return None if v is None else v.repeat(copies, *([1] * (v.ndim - 1)))

        y = None if self.y_ref is None else rep(self.y_ref[:, :, :length])
        return WindowCond(y=y, text=rep(t.text), negative_text=rep(t.negative), image=rep(self.image),
                          cfg=t.cfg)


# ------------------------------------------------------------------------------------------------
# one generation
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One generation of B videos: the geometry, the schedule and the condition builder.

    `num_latents` output latents make 1 + 4 (N - 1) frames; `clip_latents` output latents share one
    schedule entry (prompt, guidance)."""

    batch: int
    latent_shape: tuple[int, int, int]  # (C, h, w)
    window: int  # f: latent frames per model call
    num_latents: int  # N: output latents
    seed: int
    sigmas: Tensor  # (T + 1,) on the device, level k -> sigma_k
    conditioner: WindowConditioner
    clip_latents: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def clip_of(self, index: int) -> int:
        """Schedule entry of output latent `index` (warm-up latents, index < 0, use the first)."""
        return max(0, int(index)) // self.clip_latents

    def noise(self, index: int, count: int = 1, stream: str = "tail") -> Tensor:
        """(B, count, C, h, w): fresh noise for `count` latents starting at global index `index`."""
        return latent_noise(self.seed, index, (self.batch, count, *self.latent_shape), stream).to(self.device)


class DiagonalSampler(LongVideoSampler):
    """The shared machinery of the queue samplers (FIFO-Diffusion, MIGA): runs, passes, streaming.

    A subclass defines `steps` (T), `init_state` (the queue, built from a base clip) and `advance` (one
    iteration: returns the latents that finished, in order). The state is a dict of tensors: it is the
    resume `carry`.

    Args:
        condition: the condition type (builds the base clip's `y`; types with extra inputs are refused).
        flow: `FlowConfig` (shift; FIFO derives T itself, MIGA takes `flow.num_inference_steps`).
        window: latent frames per model call; None = the clip's (`num_frames` -> 1 + (F - 1) / 4).
        chunk_latents: output latents decoded and committed per chunk; None = `window`.
        window_batch: windows of equal length run as one batch (more memory, fewer calls).
        quantize: `truncate` | `round`, decoded frames to uint8 (the entrypoint passes its typed enum).
        use_lora: whether the entrypoint merges `lora.path` (an SVI LoRA under FIFO or MIGA sampling).
        progress: a progress bar over the iterations.
    """

    supports_t2v = True

    def __init__(self, condition=None, flow: Any = None, window: int | None = None,
                 chunk_latents: int | None = None, window_batch: int = 1, quantize: Any = "truncate",
                 use_lora: bool = True, progress: bool = True, name: str = "diagonal"):
        quantize = getattr(quantize, "value", quantize)
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
        if window is not None and window < 2:
            raise ValueError(f"sampler.window must be >= 2 latent frames (or null = the clip's), "
                             f"got {window}")
        if chunk_latents is not None and chunk_latents < 1:
            raise ValueError(f"sampler.chunk_latents must be >= 1 (or null = the window), "
                             f"got {chunk_latents}")
        if window_batch < 1:
            raise ValueError(f"sampler.window_batch must be >= 1, got {window_batch}")
        if condition is not None and getattr(condition, "extra_fields", ()):
            raise ValueError(f"sampler={name} does not slice extra condition inputs per window; condition "
                             f"'{condition.name}' takes {list(condition.extra_fields)} (use sampler=svi)")
        self.name = name
        self.condition = condition
        self.flow = as_dataclass(FlowConfig, flow)
        self.window = window
        self.chunk_latents = chunk_latents
        self.window_batch = window_batch
        self.quantize = quantize
        self.use_lora = use_lora
        self.progress = progress
        self.solver = EulerSolver()
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self.stack = self.denoiser = None

    def bind(self, stack) -> "DiagonalSampler":
        self.stack = stack
        self.denoiser = Denoiser(stack, self.condition)
        self._text_cache.clear()
        return self

    # -- configuration ---------------------------------------------------------------------------
    def window_latents(self, num_frames: int) -> int:
        """f: the window in latent frames (`window`, or the clip's)."""
        return int(self.window) if self.window is not None else 1 + (num_frames - 1) // 4

    def output_latents(self, request: GenerationRequest) -> int:
        """N: `total_frames` rounded up to whole latents; by default one window of latents per entry."""
        if request.total_frames is not None:
            return latents_for_frames(request.total_frames)
        return request.num_clips * self.window_latents(request.num_frames)

    def total_frames(self, request: GenerationRequest) -> int:
        return request.total_frames if request.total_frames is not None \
            else frames_for_latents(self.output_latents(request))

    def chunk_size(self, request: GenerationRequest) -> int:
        return int(self.chunk_latents or self.window_latents(request.num_frames))

    def num_chunks(self, request: GenerationRequest) -> int:
        return -(-self.output_latents(request) // self.chunk_size(request))

    def clips_for_frames(self, total_frames: int, num_frames: int) -> int:
        return max(1, -(-latents_for_frames(total_frames) // self.window_latents(num_frames)))

    def validate(self, request: GenerationRequest) -> None:
        F = request.num_frames
        if (F - 1) % 4:
            raise ValueError(f"num_frames must be 1+4k, got {F}")
        if request.total_frames is not None and request.total_frames < 1:
            raise ValueError(f"num_frames_total must be >= 1, got {request.total_frames}")
        self.check_window(self.window_latents(F))

    def check_window(self, f: int, max_window: int | None = None) -> None:
        """Raise for a window the planner or the model cannot serve (subclasses add their own rules)."""
        if f < 2:
            raise ValueError(f"sampler.window must be >= 2 latent frames, got {f} (num_frames=1+4k, k >= 1, "
                             f"or set sampler.window)")
        if max_window is not None and f > max_window:
            raise ValueError(f"sampler.window={f} latent frames exceeds the {max_window} temporal positions "
                             f"the backbone's rotary embedding covers (rope_max_seq_len); valid range: "
                             f"2..{max_window}")

    @abstractmethod
    def steps(self, window: int) -> int:
        """T: denoising steps every output latent takes."""

    # -- the subclass's algorithm ---------------------------------------------------------------
    @abstractmethod
    def init_state(self, run: Run) -> dict[str, Tensor]:
        """The queue at the start (built from a base clip)."""

    @abstractmethod
    def advance(self, state: dict[str, Tensor], run: Run) -> Tensor | None:
        """One iteration in place on `state`; returns the latents that finished, (B, n, C, h, w), or None."""

    # -- building blocks ---------------------------------------------------------------------------
    def make_run(self, ref: Tensor | None, texts: Callable[[int], ClipText], seed: int, num_latents: int,
                 height: int, width: int, num_frames: int, batch: int = 1) -> Run:
        """A run of `batch` videos: reference (B, 3, H, W) or None, texts per schedule entry, N latents."""
        if self.stack is None:
            raise RuntimeError(f"{type(self).__name__} needs a backbone: call bind(stack) first")
        f = self.window_latents(num_frames)
        cfg = self.stack.transformer.config
        self.check_window(f, max_window=getattr(cfg, "rope_max_seq_len", None))
        device = execution_device(self.stack)
        probe = self.stack.encode_video(torch.zeros(1, 3, 1, height, width))  # one frame: the latent grid
        latent_shape = (self.stack.latent_channels, *probe.shape[-2:])
        ref = None if ref is None else ref.to(device)
        conditioner = WindowConditioner(self.stack, self.condition, ref, f, texts)
        sigmas = level_sigmas(self.steps(f), self.flow.shift).to(device)
        return Run(batch=batch, latent_shape=latent_shape, window=f, num_latents=num_latents,
                   seed=int(seed), sigmas=sigmas, conditioner=conditioner, clip_latents=f, device=device,
                   progress=self.progress)

    def base_clip(self, run: Run, num_latents: int | None = None) -> Tensor:
        """An ordinary clip of `num_latents` (default f) latents, all T steps, scalar sigma: (B, n, C, h, w)"""
        n = num_latents or run.window
        cond = run.conditioner.first_clip(n)
        x = latent_noise(run.seed, 0, (run.batch, *run.latent_shape[:1], n, *run.latent_shape[1:]), "base")
        x = x.to(run.device)
        for k in range(run.steps):
            s, s_next = run.sigmas[k].expand(run.batch), run.sigmas[k + 1].expand(run.batch)
            x = self.solver.step(x, self.denoiser(x, s, cond), s, s_next)
        return x.transpose(1, 2).contiguous()  # latent-major (B, n, C, h, w)

    def noised(self, run: Run, x0: Tensor, levels: Sequence[int], index: int, stream: str) -> Tensor:
        """x0 (B, n, C, h, w) forward-noised to `levels` (one per latent), fresh noise from (index, stream)."""
        sig = run.sigmas[torch.as_tensor(list(levels), device=run.device)].view(1, -1)  # (1, n)
        eps = run.noise(index, x0.shape[1], stream)
        return add_noise(x0.transpose(1, 2), eps.transpose(1, 2), sig.expand(x0.shape[0], -1)).transpose(1, 2)

    def jacobi_pass(self, x: Tensor, levels: Tensor, windows: Sequence[Window], run: Run,
                    clip_of_window: Callable[[Window], int] | None = None) -> Tensor:
        """One pass: every window reads `x` (B, N, C, h, w) at `levels` (N,) and the committed slots take one
        Euler step from their level; returns the new state (uncommitted slots unchanged)."""
        out = x.clone()
        B = x.shape[0]
        keyed: dict[tuple[int, int], list[Window]] = {}
        for w in windows:
            clip = clip_of_window(w) if clip_of_window is not None else 0
            keyed.setdefault((len(w.read), clip), []).append(w)
        for (length, clip), group in keyed.items():
            for b0 in range(0, len(group), self.window_batch):
                batch = group[b0:b0 + self.window_batch]
                idx = torch.tensor([w.read for w in batch], device=x.device)  # (W, L)
                xw = x[:, idx]  # (B, W, L, C, h, w)
                xw = xw.transpose(0, 1).reshape(len(batch) * B, length, *x.shape[2:]).transpose(1, 2)
                sig = run.sigmas[levels[idx]]  # (W, L)
                sig_b = sig.repeat_interleave(B, dim=0)  # (W*B, L), window-major like xw
                cond = run.conditioner(length, clip, copies=len(batch))
                v = self.denoiser(xw, sig_b, cond)  # (W*B, C, L, h, w)
                v = v.view(len(batch), B, *v.shape[1:])
                for i, w in enumerate(batch):
                    pos = torch.tensor(w.commit, device=x.device)
                    slots = idx[i, pos]
                    k = levels[slots]
                    step = (run.sigmas[k + 1] - run.sigmas[k]).view(1, -1, 1, 1, 1)
                    out[:, slots] = x[:, slots] + step * v[i][:, :, pos].transpose(1, 2)
        return out

    # -- running ----------------------------------------------------------------------------------
    def latents(self, run: Run,
                state: dict[str, Tensor] | None = None) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """Yield (finished latents (B, n, C, h, w), the state after them) until N latents have finished;
        the last yield is trimmed to exactly N."""
        if state is None:
            state = self.init_state(run)
            state["emitted"] = torch.tensor(0)
        bar = tqdm(total=run.num_latents, initial=int(state["emitted"]), desc=self.name, unit="latent",
                   leave=False, disable=not run.progress)
        while int(state["emitted"]) < run.num_latents:
            done = self.advance(state, run)
            if done is None or done.shape[1] == 0:
                continue
            done = done[:, :run.num_latents - int(state["emitted"])]
            state["emitted"] = state["emitted"] + done.shape[1]
            bar.update(done.shape[1])
            yield done, state
        bar.close()

    @torch.no_grad()
    def generate(self, run: Run) -> Tensor:
        """All N output latents of a run at once: (B, C, N, h, w)."""
        return torch.cat([d for d, _ in self.latents(run)], dim=1).transpose(1, 2).contiguous()

    def stream(self, request: GenerationRequest, start: int = 0,
               carry: dict[str, Tensor] | None = None) -> Iterator[Chunk]:
        """Chunks of `chunk_latents` output latents, decoded causally; the carry holds the sampler's state,
        the finished latents not yet decoded and the decoder cache."""
        self.validate(request)
        run = self.make_run(request.image, self._texts(request.schedule), request.schedule[0].seed,
                            self.output_latents(request), request.height, request.width, request.num_frames)
        size, total = self.chunk_size(request), self.total_frames(request)
        decoder = StreamingDecoder(self.stack.vae)
        carry = dict(carry or {})
        if start > 0:
            if "pending" not in carry:
                raise ValueError(f"resuming at chunk {start} needs the sampler state in `carry`")
            state = {k[len("state."):]: v.to(run.device) for k, v in carry.items() if k.startswith("state.")}
            pending = carry["pending"].to(run.device)
            decoder.load_state_dict(carry)
        else:
            state, pending = None, None
        index, written = start, frames_for_latents(start * size) if start else 0
        finished = state is not None and int(state["emitted"]) >= run.num_latents
        source = iter(()) if finished else self.latents(run, state)
        exhausted = False
        while True:
            while (pending is None or pending.shape[1] < size) and not exhausted:
                try:
                    done, state = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending = done if pending is None else torch.cat([pending, done], dim=1)
            if pending is None or pending.shape[1] == 0:
                return
            take, pending = pending[:, :size], pending[:, size:]
            frames = to_uint8(decoder.feed(take.transpose(1, 2)), self.quantize)  # (m, H, W, 3)
            frames = frames[:max(0, total - written)]
            written += len(frames)
            first = index * size
            state_carry = {f"state.{k}": v.detach().cpu().clone() for k, v in state.items()}
            yield Chunk(index=index, frames=frames, cursor=index + 1,
                        carry={**state_carry, "pending": pending.detach().cpu().clone(),
                               **decoder.state_dict()},
                        info={"chunk": index, "latents": [first, first + take.shape[1]], "seed": run.seed},
                        latents=take.transpose(1, 2).detach().cpu())
            index += 1

    def _texts(self, schedule) -> Callable[[int], ClipText]:
        """Clip index -> its encoded prompt, negative prompt and guidance (the last entry for later clips)."""
        def texts(clip: int) -> ClipText:
            spec = schedule[min(clip, len(schedule) - 1)]
            negative = self._encode_text(spec.negative_prompt) if spec.cfg > 1 else None
            return ClipText(self._encode_text(spec.prompt), negative, spec.cfg)
        return texts

    def _encode_text(self, prompt: str) -> Tensor:
        """Text embeddings, cached for the last few prompts (bounded: memory must not grow with length)."""
        if prompt not in self._text_cache:
            self._text_cache[prompt] = self.stack.encode_text([prompt])
            while len(self._text_cache) > 4:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(prompt)
        return self._text_cache[prompt]


def state_bytes(state: dict[str, Tensor]) -> int:
    """Bytes held by a sampler state (what must not grow with the video's length)."""
    return int(sum(v.numel() * v.element_size() for v in state.values()))
