"""FIFO-Diffusion: the index arithmetic against hand-made tables, one iteration step by step, warm-up,
streaming with resume, and what makes an invalid configuration."""

import numpy as np
import pytest
import torch

from svi.conditions import Condition
from svi.sampling import FIFOSampler, GenerationRequest, build_schedule
from svi.sampling.diagonal import ClipText, committed_once, state_bytes
from svi.sampling.fifo import fifo_initial_sources, fifo_levels, fifo_padding, fifo_windows
from svi.sampling.media import load_image


def _table(windows):
    return [(w.read, w.committed_slots) for w in windows]


def test_lookahead_windows_even_f():
    # f = 4, n = 2: padding 2, queue 8 (slots 2..9); windows start at r f/2 and commit their latter half
    assert fifo_padding(4, True) == 2
    assert _table(fifo_windows(4, 2)) == [
        ((6, 7, 8, 9), (8, 9)),
        ((4, 5, 6, 7), (6, 7)),
        ((2, 3, 4, 5), (4, 5)),
        ((0, 1, 2, 3), (2, 3)),
    ]
    assert fifo_levels(4, 2) == [8, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # padding clean, then T - 1 - j
    assert fifo_initial_sources(4, 2) == [0, 0, 0, 0, 0, 1, 2, 3]  # the clip in the noisiest f slots


def test_lookahead_windows_odd_f_alternate_commit_lengths():
    # f = 5 (odd, like Wan's 21): start = (r//2) f + (r%2) 2, mid = start + 2 + (r%2); commits of 3 and 2
    assert fifo_padding(5, True) == 2
    assert _table(fifo_windows(5, 2)) == [
        ((7, 8, 9, 10, 11), (10, 11)),
        ((5, 6, 7, 8, 9), (7, 8, 9)),
        ((2, 3, 4, 5, 6), (5, 6)),
        ((0, 1, 2, 3, 4), (2, 3, 4)),
    ]


def test_partitions_without_lookahead():
    assert fifo_padding(4, False) == 0
    assert _table(fifo_windows(4, 2, lookahead=False)) == [((4, 5, 6, 7), (4, 5, 6, 7)),
                                                           ((0, 1, 2, 3), (0, 1, 2, 3))]
    assert fifo_levels(3, 2, lookahead=False) == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("f,n", [(2, 1), (2, 3), (4, 4), (5, 3), (21, 2), (21, 4)])
@pytest.mark.parametrize("lookahead", [True, False])
def test_every_queue_slot_is_stepped_once_by_windows_of_f(f, n, lookahead):
    p = fifo_padding(f, lookahead)
    windows = fifo_windows(f, n, lookahead)
    assert committed_once(windows, range(p, p + f * n))
    assert all(len(w.read) == f for w in windows)
    assert len(windows) == (2 * n if lookahead else n)
    if lookahead:  # every committed latent has cleaner latents before it in its window
        assert all(w.commit[0] >= f // 2 for w in windows)


class Recorder:
    """A stand-in denoiser: v = 1 everywhere, every call's per-frame sigmas recorded."""

    def __init__(self):
        self.sigmas = []

    def __call__(self, x, sigma, cond):
        self.sigmas.append(sigma.clone())
        return torch.ones_like(x)


@pytest.fixture
def fifo(stack):
    return FIFOSampler(Condition(), flow={"shift": 3.0}, partitions=2, window=4, window_batch=3,
                       progress=False).bind(stack)


def _run(sampler, num_latents=3, batch=1, num_frames=13, seed=0):
    ref = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    text = sampler.stack.encode_text(["a red disc"] * batch)
    return sampler.make_run(ref, lambda c: ClipText(text, None, 1.0), seed=seed, num_latents=num_latents,
                            height=32, width=32, num_frames=num_frames, batch=batch)


def test_one_iteration_steps_each_slot_at_its_level_emits_the_head_and_shifts(fifo):
    run = _run(fifo)
    state = fifo.init_state(run)
    A = state["queue"].clone()  # (1, 2 + 8, 16, 4, 4)
    assert A.shape[1] == 10 and run.steps == 8
    rec = Recorder()
    fifo.denoiser = rec
    head = fifo.advance(state, run)
    assert head is None  # iteration 0 of a T - f = 4 iteration warm-up
    levels = torch.tensor(fifo_levels(4, 2))
    reads = [w.read for w in fifo_windows(4, 2)]  # one batch of 3 windows, then one (window_batch=3)
    expected = torch.cat([run.sigmas[levels[list(r)]].view(1, -1) for r in reads])
    assert torch.equal(torch.cat(rec.sigmas), expected)
    queue_levels = levels[2:]  # the padding (level T) is never stepped
    step = run.sigmas[queue_levels + 1] - run.sigmas[queue_levels]  # slot j: sigma_{k+1} - sigma_k
    stepped = A[:, 2:] + step.view(1, -1, 1, 1, 1)
    new = state["queue"]
    assert torch.equal(new[:, :1], A[:, 1:2])  # padding shifts by one ...
    assert torch.allclose(new[:, 1:2], stepped[:, :1])  # ... and takes in the now clean head
    assert torch.allclose(new[:, 2:-1], stepped[:, 1:])  # every other latent moved up one slot
    assert torch.equal(new[:, -1:], run.noise(8))  # fresh noise for the latent emitted 8 iterations from now
    assert int(state["iteration"]) == 1


def test_warmup_is_discarded_and_length_is_exact(fifo):
    run = _run(fifo, num_latents=3)
    fifo.denoiser = Recorder()
    got = list(fifo.latents(run))
    state = got[-1][1]
    assert [d.shape[1] for d, _ in got] == [1, 1, 1]
    assert int(state["iteration"]) == 3 + 8 - 4 and int(state["emitted"]) == 3


def test_stream_resumed_from_any_chunk_carry_is_identical(stack, image_file, prompt_file):
    sampler = FIFOSampler(Condition(), flow={"shift": 3.0}, partitions=2, window=3, chunk_latents=2,
                          window_batch=4, progress=False).bind(stack)
    schedule = build_schedule(prompt_file, num_clips=3, cfg=3.0, prompt_repeat_times=2)
    request = GenerationRequest(load_image(image_file, 32, 32), schedule, num_frames=9, height=32, width=32,
                                total_frames=18)
    full = list(sampler.stream(request))
    assert [len(c.frames) for c in full] == [5, 8, 5]  # 18 frames: 5 latents -> 17 + 4, cut to 18
    assert sum(len(c.frames) for c in full) == 18 and sampler.num_chunks(request) == 3
    assert full[0].info["latents"] == [0, 2] and full[2].cursor == 3
    for k in (1, 2):
        rest = list(sampler.stream(request, start=k, carry=full[k - 1].carry))
        assert [c.index for c in rest] == list(range(k, 3))
        for a, b in zip(full[k:], rest):
            assert np.array_equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="sampler state in `carry`"):
        next(sampler.stream(request, start=1, carry={}))


def test_state_does_not_grow_with_length(fifo):
    run = _run(fifo, num_latents=40)
    fifo.denoiser = Recorder()
    sizes = [state_bytes(s) for _, s in fifo.latents(run)]
    assert len(sizes) == 40 and max(sizes) == min(sizes)  # queue + padding, whatever the length


def test_bad_configurations_name_the_knob(stack, image_file, prompt_file):
    with pytest.raises(ValueError, match="sampler.partitions"):
        FIFOSampler(Condition(), partitions=0)
    with pytest.raises(ValueError, match="sampler.window"):
        FIFOSampler(Condition(), window=1)
    request = GenerationRequest(load_image(image_file, 32, 32), build_schedule(prompt_file, num_clips=1),
                                num_frames=1, height=32, width=32)
    with pytest.raises(ValueError, match="sampler.window must be >= 2"):
        FIFOSampler(Condition()).validate(request)  # a 1-frame clip is one latent: no window
    too_long = FIFOSampler(Condition(), window=65, progress=False).bind(stack)
    with pytest.raises(ValueError, match=r"rope_max_seq_len\); valid range: 2..64"):
        _run(too_long)
    with pytest.raises(ValueError, match="condition inputs per window"):
        FIFOSampler(type("Talk", (Condition,), {"extra_fields": ("audio",)})("talk"))
