"""MIGA: the planner's index arithmetic against hand-made tables, the zigzag queue's invariants, the
consistency score and self-reflection's choice, constant-memory Stage 2, resume, and invalid knobs."""

import math

import numpy as np
import pytest
import torch

from svi.conditions import Condition
from svi.sampling import GenerationRequest, MIGASampler, build_schedule
from svi.sampling.diagonal import ClipText, committed_once, state_bytes
from svi.sampling.media import load_image
from svi.sampling.miga import (commit_chunks, consistency_score, context_windows, memory_indices,
                               miga_windows, reflection_triggered)


def _table(windows):
    return [(w.read, w.committed_slots) for w in windows]


def test_commit_chunks():
    # [0, o), blocks of s from o, a remainder, the last D
    assert commit_chunks(20, dense=4, stride=3, offset=2) == [(0, 2), (2, 3), (5, 3), (8, 3), (11, 3), (14, 2),
                                                              (16, 4)]
    assert commit_chunks(20, dense=4, stride=3, offset=0) == [(0, 3), (3, 3), (6, 3), (9, 3), (12, 3), (15, 1),
                                                              (16, 4)]
    assert commit_chunks(5, dense=4, stride=3, offset=2) == [(0, 1), (1, 4)]  # 5 - 2 < 4: no offset
    assert commit_chunks(3, dense=4, stride=2, offset=1) == [(0, 3)]  # shorter than one window


def test_memory_rules():
    # preceding_groups, Wan's numbers (m = 4, L = 7): one latent 3 before each group boundary ...
    assert memory_indices(30, 4, 7) == [6, 13, 20, 27]
    # ... or, closer to the head than m L, evenly spaced back to it
    assert memory_indices(21, 4, 7) == [1, 6, 11, 16]
    assert memory_indices(5, 2, 1) == [3, 4]  # groups of one: the latents just before
    assert memory_indices(10, 4, 7, rule="head") == [0, 3, 6, 9]
    assert memory_indices(10, 1, 7, rule="head") == [0]


def test_stage1_windows_table():
    # 12 latents, f0 = 6, m = 2 memory, D = 4 dense, stride 2, groups of 2, offset 1
    assert _table(miga_windows(12, 6, 2, 2, 2, 1)) == [
        ((0, 1, 2, 3, 4, 5), (0,)),  # a = 0 < m: no memory, the window extends to f0
        ((1, 2, 3, 4, 5, 6), (1, 2)),
        ((1, 2, 3, 4, 5, 6), (3, 4)),  # a = 3 < m L: memory evenly back to the head (1, 2)
        ((2, 4, 5, 6, 7, 8), (5, 6)),  # a = 5 >= m L: 5 - (1 + 2), 5 - 1
        ((4, 6, 7, 8, 9, 10), (7,)),  # the remainder
        ((5, 7, 8, 9, 10, 11), (8, 9, 10, 11)),  # the last D
    ]
    assert _table(miga_windows(5, 4, 0, 2, 1, 0)) == [((0, 1, 2, 3), (0,)), ((1, 2, 3, 4), (1, 2, 3, 4))]


@pytest.mark.parametrize("n", [1, 3, 7, 20, 44, 308])
@pytest.mark.parametrize("window,memory,stride,group",
                         [(21, 4, 10, 7), (21, 0, 10, 1), (6, 2, 2, 2), (4, 1, 3, 1)])
def test_stage1_windows_step_every_latent_once(n, window, memory, stride, group):
    for offset in range(stride):
        windows = miga_windows(n, window, memory, stride, group, offset)
        assert committed_once(windows, range(n)), (n, offset)
        for w in windows:
            assert len(w.read) <= window and len(set(w.read)) == len(w.read)
            dense_start = w.read[w.commit[0]]
            assert all(r < dense_start for r in w.read[:w.commit[0]])  # memory comes from nearer the head


def test_stage2_context_windows_table():
    # 2 finished latents (frozen) + 6 to denoise, windows of 4 reading 1 latent before their chunk
    assert _table(context_windows(2, 6, 4, 2, 0, max_context=1)) == [
        ((1, 2, 3, 4), (2, 3)),
        ((3, 4, 5, 6), (4,)),
        ((4, 5, 6, 7), (5, 6, 7)),
    ]
    assert committed_once(context_windows(3, 20, 6, 2, 1, max_context=2), range(3, 23))


def test_consistency_score():
    a = torch.zeros(1, 1, 4, 2, 2)
    a[..., 0, 0] = 1.0  # channel mean (0.25, 0, 0, 0) over the 2 x 2 positions
    b = torch.zeros(1, 2, 4, 2, 2)
    b[:, 0, :, 0, 0] = 1.0
    b[:, 0, :, 0, 1] = 1.0  # (1, 1, 0, 0) / sqrt 2
    b[:, 1, :, 1, 1] = 2.0  # orthogonal to a
    assert torch.allclose(consistency_score(a, b), torch.tensor([(1 / math.sqrt(2) + 0.0) / 2]))
    x = torch.randn(3, 2, 4, 3, 3)
    assert torch.allclose(consistency_score(x[:, :1], x[:, :1]), torch.ones(3))  # identical sets: 1
    assert torch.allclose(consistency_score(x, x[:, :1] * 5), consistency_score(x, x[:, :1]))  # scale-free


def test_reflection_fires_only_when_the_drop_exceeds_the_threshold():
    prev, now = torch.tensor([float("nan"), 0.75, 0.75, 0.5]), torch.tensor([0.1, 0.5, 0.75, 0.75])
    assert reflection_triggered(prev, now, 0.25).tolist() == [False, False, False, False]  # 0.25 is not more
    assert reflection_triggered(prev, now, 0.125).tolist() == [False, True, False, False]


def _sampler(stack, **kw):
    knobs = dict(flow={"shift": 3.0, "num_inference_steps": 8}, window=4, group=2, memory=1, stride=2,
                 stage2_steps=2, stage2_block=6, stage2_overlap=2, stage2_context=1, judge_level=2,
                 reference_groups=1, window_batch=8, progress=False)
    return MIGASampler(Condition(), **{**knobs, **kw}).bind(stack)


def _run(sampler, num_latents=8, batch=1):
    ref = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    text = sampler.stack.encode_text(["a blue square"] * batch)
    return sampler.make_run(ref, lambda c: ClipText(text, None, 1.0), seed=0, num_latents=num_latents,
                            height=32, width=32, num_frames=13, batch=batch)


class Ones:
    def __call__(self, x, sigma, cond):
        return torch.ones_like(x)


def test_zigzag_queue_invariants_and_constant_memory(stack):
    sampler = _sampler(stack, reflection=False)
    sampler.denoiser = Ones()
    run = _run(sampler, num_latents=60)
    K1, L = 8 - 2, 2
    state = sampler.init_state(run)
    assert state["qlev"].tolist() == [2, 2, 1, 1]  # the first clip's 2 groups at the noisiest levels
    lengths, sizes, emitted = [], [], 0
    while emitted < 60:
        done = sampler.advance(state, run)
        emitted += 0 if done is None else done.shape[1]
        lev = state["qlev"].tolist()
        if lev:
            groups = [lev[i:i + L] for i in range(0, len(lev), L)]
            assert all(len(set(g)) == 1 for g in groups)  # a group shares one level
            heads = [g[0] for g in groups]
            assert all(a - b == 1 for a, b in zip(heads, heads[1:]))  # adjacent groups one step apart
            assert max(lev) < K1  # finished groups left for Stage 2
        lengths.append(len(lev))
        sizes.append(state_bytes(state))
    # steady state: K1 groups in the pass (levels K1 - 1 .. 0 before it), K1 - 1 after the head's pop
    assert max(lengths) == (K1 - 1) * L and lengths.count((K1 - 1) * L) > 10
    assert emitted >= 60 and max(sizes[10:]) == max(sizes[10:len(sizes) // 2])  # no growth after the ramp
    assert state["s2"].shape[1] == 0 and state["q"].shape[1] == 0  # drained


def test_stage2_blocks_finish_every_latent_once_in_order(stack):
    sampler = _sampler(stack, reflection=False, refine=False)
    run = _run(sampler, num_latents=11)
    state, seen = None, []
    for done, state in sampler.latents(run):
        seen.append(done.shape[1])
    assert sum(seen) == 11 and int(state["emitted"]) == 11
    assert seen[0] == 6 - 2  # a block of 6 finishes 4; its last 2 re-enter the next block
    assert int(state["appended"]) == 14  # 11 + overlap 2, in whole groups of 2


def test_self_reflection_keeps_the_highest_scoring_candidate(stack):
    sampler = _sampler(stack, candidates=3)
    run = _run(sampler, batch=2)
    guides = torch.randn(2, 2, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    levels = torch.tensor([3, 3])
    tails = [sampler.candidate(c, guides, levels, 10, run) for c in range(3)]
    assert tails[0].shape == (2, 2 * 2, 16, 4, 4)  # H = judge_level groups of L
    scores = torch.stack([consistency_score(t[:, :2], guides) for t in tails])  # (candidates, B)
    best, best_score = sampler.search(guides, levels, 10, run)
    pick = scores.argmax(dim=0)
    assert pick.tolist() == [0, 1]  # the two videos keep different candidates
    for b in range(2):
        assert torch.equal(best[b], tails[int(pick[b])][b]) and best_score[b] == scores[:, b].max()


def test_a_search_replaces_the_tail_only_when_it_fired_and_beat_the_score(stack):
    sampler = _sampler(stack, reflect_threshold=0.05)
    run = _run(sampler, batch=3)
    q = torch.randn(3, 8, 16, 4, 4)
    qlev = torch.tensor([4, 4, 3, 3, 2, 2, 1, 1])  # judged group at level 2 (slots 4, 5), reference 3 (2, 3)
    now = consistency_score(q[:, 4:6], q[:, 2:4])
    previous = now + torch.tensor([0.1, 0.1, 0.0])  # videos 0 and 1 dropped by 0.1 > 0.05; video 2 did not
    alternative = torch.randn(3, 4, 16, 4, 4)
    offered = now + torch.tensor([0.2, -0.2, 0.2])  # video 1's best candidate is worse than what it has
    calls = []

    def search(guides, guide_levels, index, run):
        calls.append((guides.clone(), guide_levels.tolist(), index))
        return alternative, offered

    sampler.search = search
    state = {"q": q.clone(), "qlev": qlev, "q_first": torch.tensor(100), "score": previous,
             "judged": torch.tensor(0), "searches": torch.tensor(0), "accepted": torch.tensor(0)}
    sampler.reflect(state, run)
    assert len(calls) == 1 and torch.equal(calls[0][0], q[:, 2:4]) and calls[0][1:] == ([3, 3], 104)
    assert torch.equal(state["q"][0, 4:], alternative[0]) and torch.equal(state["q"][0, :4], q[0, :4])
    assert torch.equal(state["q"][1], q[1]) and torch.equal(state["q"][2], q[2])
    assert torch.allclose(state["score"], torch.stack([offered[0], now[1], now[2]]))
    assert (int(state["judged"]), int(state["searches"]), int(state["accepted"])) == (3, 2, 1)  # per video


def test_stream_resumed_from_any_chunk_carry_is_identical(stack, image_file, prompt_file):
    sampler = _sampler(stack, chunk_latents=3, reflect_threshold=0.0)
    schedule = build_schedule(prompt_file, num_clips=2, cfg=1.0, prompt_repeat_times=2)
    request = GenerationRequest(load_image(image_file, 32, 32), schedule, num_frames=13, height=32, width=32,
                                total_frames=30)
    full = list(sampler.stream(request))
    assert sum(len(c.frames) for c in full) == 30 and len(full) == sampler.num_chunks(request) == 3
    assert int(full[-1].carry["state.searches"]) > 0  # threshold 0: reflection ran
    for k in (1, 2):
        rest = list(sampler.stream(request, start=k, carry=full[k - 1].carry))
        for a, b in zip(full[k:], rest):
            assert np.array_equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)


def test_ablation_switches():
    none = MIGASampler(Condition(), tta=False, guidance=False, reflection=False)
    assert (none.group, none.memory, none.stage2_steps, none.reflection) == (1, 0, 0, False)
    dce = MIGASampler(Condition(), tta=False)
    assert (dce.group, dce.memory, dce.stage2_steps) == (1, 4, 0)
    assert MIGASampler(Condition(), guidance=False).stage2_context == 4  # Stage 2's context is not guidance


@pytest.mark.parametrize("knobs,message", [
    ({"group": 18}, r"sampler.group \(L_zig\)=18 does not fit the window's 17 dense latents .*range: 1..17"),
    ({"memory": 21}, r"sampler.memory=21 leaves no dense latent .*valid range: 0..20"),
    ({"stride": 18}, r"sampler.stride=18 exceeds the window's 17 dense latents; valid range: 1..17"),
    ({"stage2_steps": 50}, r"sampler.stage2_steps \(tau_e\)=50 .*valid range: 0..49"),
    ({"judge_level": 38}, r"sampler.judge_level=38 .*valid range: 1..37"),
    ({"stage2_block": 10}, r"sampler.stage2_block=10 must exceed sampler.stage2_overlap=10"),
    ({"window": 8, "group": 1, "memory": 1, "stride": 7, "judge_level": 2, "stage2_context": 2},
     r"sampler.stride=7 exceeds the 6 latents a Stage-2 window commits"),
])
def test_bad_configurations_name_the_knob_and_the_valid_range(knobs, message, image_file, prompt_file):
    request = GenerationRequest(load_image(image_file, 32, 32), build_schedule(prompt_file, num_clips=1),
                                num_frames=81, height=32, width=32)
    with pytest.raises(ValueError, match=message):
        MIGASampler(Condition(), **knobs).validate(request)  # before any weights or compute
    MIGASampler(Condition()).validate(request)  # the released Wan settings fit an 81-frame clip


def test_constructor_rejects_out_of_range_knobs():
    with pytest.raises(ValueError, match="sampler.candidates must be >= 1"):
        MIGASampler(Condition(), candidates=0)
    with pytest.raises(ValueError, match="sampler.memory_rule"):
        MIGASampler(Condition(), memory_rule="uniform")
    with pytest.raises(ValueError, match="sampler.reflect_threshold"):
        MIGASampler(Condition(), reflect_threshold=-1.0)
