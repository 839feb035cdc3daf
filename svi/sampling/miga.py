"""MIGA (Feng et al., ICML 2026) on a Wan DiT: FIFO-style queue sampling with two-stage training-inference
alignment (TTA) and dual consistency enhancement (DCE: self-reflection + long-range frame guidance).

Levels count steps taken (k = 0 noise .. T clean); K1 = T - tau_e is where Stage 1 ends.

**Stage 1, the zigzag queue (TTA).** The queue is a list of groups of L = `group` latents; a group shares
one level and adjacent groups are one step apart (head cleanest). One iteration:

    append a fresh noise group at the tail (level 0)
    one pass: every latent takes one Euler step, through windows (below); every level + 1
    pop the head group once it reaches K1 (into Stage 2)
    self-reflection at the tail (below)

A window of f0 latents therefore spans about f0 / L + 1 levels instead of f0 (FIFO), which is closer to
the single level the model was trained on. In steady state the queue holds K1 groups.

**Windows of a Stage-1 pass** (`miga_windows`). D = f0 - m dense latents per window, m = `memory`. The
queue [0, Nq) is cut into commit chunks: [0, o), blocks of `stride` s from o, a remainder, and the last D
latents; o = iteration mod s (the dynamic offset moves the window seams every pass; o = 0 when fewer
than D latents would follow it). A chunk starting at a reads its dense part Q[a : a + D] and, when
a >= m, m memory latents in front of it (long-range frame guidance: low-noise latents nearer the head,
at their own levels); the chunk's latents (the front of the dense part) take the step, the rest of
the window is context. Without memory (a < m) the dense part extends to f0. Memory rule
`preceding_groups` (the released code): the latents a - (max(1, L // 2) + j L), j = m-1 .. 0, one inside
each of the m groups before the window, or, while a < m L, a - (j + 1) floor(a / m) (evenly spaced back
to the head); rule `head`: m latents evenly spaced over [0, a).

**Stage 2 (TTA), constant memory.** Popped latents all sit at level K1. They are finished in blocks of
`stage2_block` latents at one unified level: tau_e passes, each stepping every latent of the block once
through windows of f0 latents (commit chunks as above, no memory; each window also reads up to
`stage2_context` latents before it, which at the block's start are the previous block's finished
latents at sigma 0). With `refine`, the block is then forward-noised back to K1 with fresh noise and
denoised again (the released code's extra pass). The last `stage2_overlap` latents of a block are not
finalised: they re-enter the next block from their Stage-1 state, so no block boundary lacks context
on its right. Memory is O(queue + block), whatever the video's length.

**Self-reflection (DCE).** After each pass, the group at level `judge_level` is scored against the
`reference_groups` groups before it: C(A, B) = mean over pairs of the cosine of channel-averaged latents
(`consistency_score`). When the score drops by more than `reflect_threshold` from the previous
iteration's, `candidates` alternatives of the whole tail (judged group to tail) are sampled from fresh
noise, conditioned on the frozen reference groups, and the best-scoring one replaces the tail if it beats
the score that triggered the search.

Switches for the paper's ablation: `tta=false` (groups of 1, no Stage 2: FIFO-like diagonal with
front-committing windows), `guidance=false` (no memory latents), `reflection=false`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from svi.sampling.diagonal import DiagonalSampler, Run, Window

MEMORY_RULES = ("preceding_groups", "head")


# ------------------------------------------------------------------------------------------------
# index arithmetic
# ------------------------------------------------------------------------------------------------
def commit_chunks(n: int, dense: int, stride: int, offset: int = 0) -> list[tuple[int, int]]:
    """(start, length) chunks partitioning [0, n): [0, o), blocks of `stride` from o, a remainder, and the
    last `dense`. o = 0 when fewer than `dense` latents would follow it."""
    if n <= dense:
        return [(0, n)]
    if n - offset < dense:
        offset = 0
    out = [(0, offset)] if offset > 0 else []
    a = offset
    while a + stride <= n - dense:
        out.append((a, stride))
        a += stride
    if a < n - dense:
        out.append((a, n - dense - a))
    out.append((n - dense, dense))
    return out


def memory_indices(a: int, memory: int, group: int, rule: str = "preceding_groups") -> list[int]:
    """The m memory latents of a window whose dense part starts at a >= m, ascending (module docstring)."""
    if rule == "head":
        if memory == 1:
            return [0]
        return [round(j * (a - 1) / (memory - 1)) for j in range(memory)]
    if a >= memory * group:
        return [a - (max(1, group // 2) + j * group) for j in reversed(range(memory))]
    step = a // memory
    return [a - (j + 1) * step for j in reversed(range(memory))]


@lru_cache(maxsize=256)
def miga_windows(n: int, window: int, memory: int, stride: int, group: int, offset: int = 0,
                 rule: str = "preceding_groups") -> tuple[Window, ...]:
    """The windows of one Stage-1 pass over a queue of n latents (module docstring). Every latent is
    committed exactly once; no window reads more than `window` latents."""
    dense = window - memory
    out = []
    for a, c in commit_chunks(n, dense, stride, offset):
        if memory == 0 or a < memory:
            read = tuple(range(a, min(n, a + window)))
            out.append(Window(read, tuple(range(c))))
        else:
            mem = memory_indices(a, memory, group, rule)
            read = (*mem, *range(a, min(n, a + dense)))
            out.append(Window(read, tuple(range(memory, memory + c))))
    return tuple(out)


@lru_cache(maxsize=256)
def context_windows(context: int, n: int, window: int, stride: int, offset: int = 0,
                    max_context: int = 0) -> tuple[Window, ...]:
    """Windows over A = [`context` frozen latents] ++ [n latents]: commit chunks of the n latents (dense
    window - max_context, as `commit_chunks`), each window reading up to `max_context` latents before its
    chunk (frozen ones included) and extending to the right to `window` latents."""
    dense = window - max_context
    out = []
    for a, c in commit_chunks(n, dense, stride, offset):
        start = context + a
        left = min(max_context, start)
        read = tuple(range(start - left, min(context + n, start - left + window)))
        out.append(Window(read, tuple(range(left, left + c))))
    return tuple(out)


def consistency_score(judged: Tensor, reference: Tensor) -> Tensor:
    """C(A, B): each latent (C, h, w) averaged over channels to an h w vector and L2-normalised; the mean
    cosine over all pairs (a in A, b in B). judged (B, nA, C, h, w), reference (B, nB, C, h, w) -> (B,)."""
    a = torch.nn.functional.normalize(judged.float().mean(dim=2).flatten(2), dim=-1)  # (B, nA, hw)
    b = torch.nn.functional.normalize(reference.float().mean(dim=2).flatten(2), dim=-1)
    return torch.einsum("bid,bjd->bij", a, b).mean(dim=(1, 2))


def reflection_triggered(previous: Tensor, current: Tensor, threshold: float) -> Tensor:
    """Per video: the score dropped by more than `threshold` since the previous judgement (NaN: never)."""
    drop = previous - current
    return torch.nan_to_num(drop, nan=-math.inf) > threshold


# ------------------------------------------------------------------------------------------------
# the sampler
# ------------------------------------------------------------------------------------------------
class MIGASampler(DiagonalSampler):
    """MIGA (module docstring). Knobs named after the paper's symbols:

    Args (beyond `DiagonalSampler`'s):
        group: L_zig, latents per zigzag group (`tta=false`: 1).
        memory: m_guid, long-range guidance latents per window (`guidance=false`: 0).
        memory_rule: `preceding_groups` (the released code) | `head` (evenly from the queue head).
        stride: s, commit chunk length.
        dynamic_offset: shift the chunk seams by iteration mod s.
        stage2_steps: tau_e, steps at the unified level (`tta=false`: 0).
        refine: the extra forward-noise-and-denoise pass of Stage 2.
        stage2_block, stage2_overlap, stage2_context: Stage 2's blocks (null: 2 f0, f0 // 2, `memory`).
        tta, guidance, reflection: the ablation switches.
        reflect_threshold: delta, the score drop that triggers the expanded search.
        candidates: n_samp, alternatives sampled per search.
        judge_level: f_judg, the level of the judged group (also the candidates' horizon).
        reference_groups: groups before the judged one it is scored against.
    """

    def __init__(self, condition=None, flow=None, group: int = 7, memory: int = 4,
                 memory_rule: str = "preceding_groups", stride: int = 10, dynamic_offset: bool = True,
                 stage2_steps: int = 10, refine: bool = True, stage2_block: int | None = None,
                 stage2_overlap: int | None = None, stage2_context: int | None = None, tta: bool = True,
                 guidance: bool = True, reflection: bool = True, reflect_threshold: float = 0.01,
                 candidates: int = 3, judge_level: int = 10, reference_groups: int = 2,
                 window: int | None = None, chunk_latents: int | None = None, window_batch: int = 1,
                 quantize: Any = "truncate", use_lora: bool = True, progress: bool = True,
                 name: str = "miga"):
        super().__init__(condition=condition, flow=flow, window=window, chunk_latents=chunk_latents,
                         window_batch=window_batch, quantize=quantize, use_lora=use_lora, progress=progress,
                         name=name)
        if memory_rule not in MEMORY_RULES:
            raise ValueError(f"sampler.memory_rule must be one of {MEMORY_RULES}, got {memory_rule!r}")
        for knob, value, low in (("group", group, 1), ("memory", memory, 0), ("stride", stride, 1),
                                 ("stage2_steps", stage2_steps, 0), ("candidates", candidates, 1),
                                 ("judge_level", judge_level, 1), ("reference_groups", reference_groups, 1)):
            if value < low:
                raise ValueError(f"sampler.{knob} must be >= {low}, got {value}")
        if reflect_threshold < 0:
            raise ValueError(f"sampler.reflect_threshold must be >= 0, got {reflect_threshold}")
        self.tta, self.guidance, self.reflection = tta, guidance, reflection
        self.group = group if tta else 1
        self.memory = memory if guidance else 0
        self.memory_rule = memory_rule
        self.stride = stride
        self.dynamic_offset = dynamic_offset
        self.stage2_steps = stage2_steps if tta else 0
        self.refine = refine
        self.stage2_block, self.stage2_overlap = stage2_block, stage2_overlap
        self.stage2_context = memory if stage2_context is None else stage2_context
        self.reflect_threshold = reflect_threshold
        self.candidates = candidates
        self.judge_level = judge_level
        self.reference_groups = reference_groups

    # -- configuration --------------------------------------------------------------------------
    def steps(self, window: int) -> int:
        return int(self.flow.num_inference_steps)

    def stage1_end(self, window: int) -> int:
        """K1 = T - tau_e: the level at which latents leave the zigzag queue."""
        return self.steps(window) - self.stage2_steps

    def block_sizes(self, window: int) -> tuple[int, int]:
        """(stage2_block, stage2_overlap) with their defaults 2 f0 and f0 // 2."""
        block = self.stage2_block if self.stage2_block is not None else 2 * window
        overlap = self.stage2_overlap if self.stage2_overlap is not None else window // 2
        return block, overlap

    def check_window(self, f: int, max_window: int | None = None) -> None:
        super().check_window(f, max_window)
        T, L, m, s = self.steps(f), self.group, self.memory, self.stride
        D = f - m
        if m >= f:
            raise ValueError(f"sampler.memory={m} leaves no dense latent in a window of {f}; "
                             f"valid range: 0..{f - 1}")
        if L > D:
            raise ValueError(f"sampler.group (L_zig)={L} does not fit the window's {D} dense latents "
                             f"(window {f} - memory {m}); valid range: 1..{D}")
        if s > D:
            raise ValueError(f"sampler.stride={s} exceeds the window's {D} dense latents; "
                             f"valid range: 1..{D}")
        if self.stage2_steps >= T:
            raise ValueError(f"sampler.stage2_steps (tau_e)={self.stage2_steps} leaves no Stage-1 step of "
                             f"flow.num_inference_steps={T}; valid range: 0..{T - 1}")
        K1, G0 = self.stage1_end(f), f // L
        if G0 > K1:
            raise ValueError(f"the first clip's {G0} groups of {L} need {G0} Stage-1 levels, but only "
                             f"K1 = T - tau_e = {K1} exist: lower sampler.stage2_steps or raise "
                             f"flow.num_inference_steps (or sampler.group)")
        if self.reflection and self.judge_level + self.reference_groups > K1 - 1:
            hi = K1 - 1 - self.reference_groups
            raise ValueError(f"sampler.judge_level={self.judge_level} with reference_groups="
                             f"{self.reference_groups} does not fit the {K1} Stage-1 levels; "
                             f"valid range: 1..{max(hi, 0)}"
                             + (" (none: lower reference_groups or stage2_steps)" if hi < 1 else ""))
        if self.stage2_steps:
            block, overlap = self.block_sizes(f)
            if overlap < 0 or block <= overlap:
                raise ValueError(f"sampler.stage2_block={block} must exceed "
                                 f"sampler.stage2_overlap={overlap} >= 0")
            if not 0 <= self.stage2_context < f:
                raise ValueError(f"sampler.stage2_context={self.stage2_context} must be in 0..{f - 1} "
                                 f"(window {f})")
            if s > f - self.stage2_context:
                raise ValueError(f"sampler.stride={s} exceeds the {f - self.stage2_context} latents a Stage-2 "
                                 f"window commits (window {f} - stage2_context {self.stage2_context}); "
                                 f"valid range: 1..{f - self.stage2_context}")

    # -- state ------------------------------------------------------------------------------------
    def target_latents(self, run: Run) -> int:
        """Latents Stage 1 produces: N plus the Stage-2 overlap, rounded up to whole groups."""
        extra = self.block_sizes(run.window)[1] if self.stage2_steps else 0
        return -(-(run.num_latents + extra) // self.group) * self.group

    def init_state(self, run: Run) -> dict[str, Tensor]:
        f, L = run.window, self.group
        G0 = f // L
        V = self.base_clip(run)[:, :G0 * L]  # (B, G0 L, C, h, w)
        levels = [G0 - j // L for j in range(G0 * L)]  # group j at level G0 - j: the noisiest, a layout prior
        q = self.noised(run, V, levels, 0, "init")
        empty = q[:, :0]
        return {"q": q, "qlev": torch.tensor(levels, device=run.device), "q_first": torch.tensor(0),
                "appended": torch.tensor(G0 * L), "iteration": torch.tensor(0),
                "score": torch.full((run.batch,), float("nan"), device=run.device),
                "s2": empty, "s2_first": torch.tensor(0), "ctx": empty, "judged": torch.tensor(0),
                "searches": torch.tensor(0), "accepted": torch.tensor(0)}

    # -- one iteration ------------------------------------------------------------------------
    def advance(self, state: dict[str, Tensor], run: Run) -> Tensor | None:
        f, L = run.window, self.group
        K1, i = self.stage1_end(f), int(state["iteration"])
        appended_now = False
        if int(state["appended"]) < self.target_latents(run):
            g = int(state["appended"])
            state["q"] = torch.cat([state["q"], run.noise(g, L)], dim=1)
            state["qlev"] = torch.cat([state["qlev"], state["qlev"].new_zeros(L)])
            state["appended"] = torch.tensor(g + L)
            appended_now = True
        q, qlev, q_first = state["q"], state["qlev"], int(state["q_first"])
        finished = []
        if q.shape[1]:
            offset = i % self.stride if self.dynamic_offset else 0
            windows = miga_windows(q.shape[1], f, self.memory, self.stride, L, offset, self.memory_rule)
            q = self.jacobi_pass(q, qlev, windows, run, lambda w: run.clip_of(q_first + w.committed_slots[0]))
            qlev = qlev + 1
            head = int((qlev >= K1).sum())  # finished groups sit at the head
            popped, q, qlev = q[:, :head], q[:, head:], qlev[head:]
            state["q_first"] = torch.tensor(q_first + head)
            if head:
                if self.stage2_steps:
                    state["s2"] = torch.cat([state["s2"], popped], dim=1)
                else:
                    finished.append(popped)
        state["q"], state["qlev"], state["iteration"] = q, qlev, torch.tensor(i + 1)
        if self.reflection and appended_now:
            self.reflect(state, run)
        if self.stage2_steps:
            finished.extend(self.stage2(state, run))
        return torch.cat(finished, dim=1) if finished else None

    # -- Stage 2 ----------------------------------------------------------------------------------
    def stage2(self, state: dict[str, Tensor], run: Run) -> list[Tensor]:
        """Finish full blocks of the Stage-2 buffer (and the rest once Stage 1 has drained)."""
        block, overlap = self.block_sizes(run.window)
        out = []
        drained = state["q"].shape[1] == 0 and int(state["appended"]) >= self.target_latents(run)
        while state["s2"].shape[1] >= block or (drained and state["s2"].shape[1] > 0):
            last = state["s2"].shape[1] < block or (drained and state["s2"].shape[1] == block)
            n = state["s2"].shape[1] if last else block
            X, first = state["s2"][:, :n], int(state["s2_first"])
            clean = self.unified_block(X, state["ctx"], run, first)
            keep = n if last else n - overlap
            out.append(clean[:, :keep])
            state["s2"] = state["s2"][:, keep:]  # the overlap re-enters from its Stage-1 state
            state["s2_first"] = torch.tensor(first + keep)
            if self.stage2_context:
                state["ctx"] = torch.cat([state["ctx"], clean[:, :keep]], dim=1)[:, -self.stage2_context:]
        return out

    def unified_block(self, X: Tensor, ctx: Tensor, run: Run, first: int) -> Tensor:
        """tau_e passes at one level (plus the refine pass) over a block X (B, n, C, h, w) at level K1, with
        `ctx` (B, c, C, h, w) clean latents before it; returns the clean block."""
        f, T, K1 = run.window, run.steps, self.stage1_end(run.window)
        c, n = ctx.shape[1], X.shape[1]
        for phase in ("denoise", "refine") if self.refine else ("denoise",):
            if phase == "refine":
                X = self.noised(run, X, [K1] * n, first, "refine")
            A = torch.cat([ctx, X], dim=1)
            levels = torch.tensor([T] * c + [K1] * n, device=run.device)
            for p in range(self.stage2_steps):
                offset = p % self.stride if self.dynamic_offset else 0
                windows = context_windows(c, n, f, self.stride, offset, self.stage2_context)
                A = self.jacobi_pass(A, levels, windows, run,
                                     lambda w: run.clip_of(first + w.committed_slots[0] - c))
                levels[c:] += 1
            X = A[:, c:]
        return X

    # -- self-reflection --------------------------------------------------------------------------
    def reflect(self, state: dict[str, Tensor], run: Run) -> None:
        """Judge the group at `judge_level` against the groups before it; search the tail if it dropped."""
        L, H, G = self.group, self.judge_level, self.reference_groups
        qlev = state["qlev"]
        if qlev.numel() == 0 or int(qlev[-1]) != 1 or int(qlev[0]) < H + G:
            return  # the judged group or its references are not in the queue yet
        j0 = int((qlev > H).sum())  # first slot of the judged group
        q = state["q"]
        refs, judged = q[:, j0 - G * L:j0], q[:, j0:j0 + L]
        score = consistency_score(judged, refs)
        fire = reflection_triggered(state["score"], score, self.reflect_threshold)
        state["judged"] = state["judged"] + int(torch.isfinite(state["score"]).sum())  # with a predecessor
        if bool(fire.any()):
            state["searches"] = state["searches"] + int(fire.sum())
            best, best_score = self.search(refs, qlev[j0 - G * L:j0], int(state["q_first"]) + j0, run)
            accept = fire & (best_score > score)  # (B,)
            if bool(accept.any()):
                state["accepted"] = state["accepted"] + int(accept.sum())
                tail = q[:, j0:].clone()
                tail[accept] = best[accept]
                state["q"] = torch.cat([q[:, :j0], tail], dim=1)
                score = torch.where(accept, best_score, score)
        state["score"] = score

    def search(self, guides: Tensor, guide_levels: Tensor, index: int, run: Run) -> tuple[Tensor, Tensor]:
        """The best of `candidates` tails per video (B, H L, C, h, w) and its score (B,) against guides."""
        best = best_score = None
        for c in range(self.candidates):
            tail = self.candidate(c, guides, guide_levels, index, run)
            score = consistency_score(tail[:, :self.group], guides)
            if best is None:
                best, best_score = tail, score
            else:
                better = score > best_score
                best = torch.where(better.view(-1, 1, 1, 1, 1), tail, best)
                best_score = torch.where(better, score, best_score)
        return best, best_score

    def candidate(self, c: int, guides: Tensor, guide_levels: Tensor, index: int, run: Run) -> Tensor:
        """Candidate c of the tail after the frozen `guides` (B, g, C, h, w): H times, a noise group (drawn
        from stream `candidate<c>` at the tail's global indices from `index`) is appended and one pass runs
        over guides and new groups, the guides only read. Its groups end at levels H .. 1, like the queue's
        tail: (B, H L, C, h, w)."""
        L, H = self.group, self.judge_level
        g = guides.shape[1]
        x, lev = guides, guide_levels
        for h in range(H):
            x = torch.cat([x, run.noise(index + h * L, L, stream=f"candidate{c}")], dim=1)
            lev = torch.cat([lev, lev.new_zeros(L)])
            windows = [Window(w.read, tuple(p for p in w.commit if w.read[p] >= g))
                       for w in miga_windows(x.shape[1], run.window, 0, self.stride, L)]
            x = self.jacobi_pass(x, lev, [w for w in windows if w.commit], run, lambda w: run.clip_of(index))
            lev = torch.cat([lev[:g], lev[g:] + 1])
        return x[:, g:]
