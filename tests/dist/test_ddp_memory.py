"""Two gloo processes from the command line: one run directory, identical memories after the cross-rank
warmup, rank-local inserts afterwards, and no deadlock although the ranks draw different decisions."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svi.erft.memory import ErrorBank

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
W, STEPS = 3, 8


def _entries(sd: dict) -> list[tuple[int, torch.Tensor]]:
    """(bucket, entry) pairs of a bank's state_dict in bucket order, insertion order within a bucket."""
    return [(bucket, row) for bucket, rows in enumerate(ErrorBank.stored_rows(sd)) for row in rows]


def _produced(ranks: list[dict], key: str, steps: range) -> list[tuple[int, int, int, torch.Tensor]]:
    """(rank, step, bucket, error) of every error the ranks' modules produced in `steps` (batch size 1)."""
    return [(r, s, int(ranks[r]["own"][s]["grid"][0]), ranks[r]["own"][s][key][0]) for r in (0, 1) for s in steps]


def _owners(produced, bucket: int, entry: torch.Tensor) -> list[tuple[int, int]]:
    """Which (rank, step) produced a stored entry (exact match after the bank's rounding)."""
    return [(r, s) for r, s, b, e in produced if b == bucket and torch.equal(e.to(entry.dtype), entry)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    probe = tmp / "probe"
    cmd = [sys.executable, "-m", "svi.train", "experiment=svi_shot", "backbone=tiny", "data=synthetic",
           "trainer=ddp_cpu", "logger=csv", f"trainer.max_steps={STEPS}", f"memory.warmup_steps={W}",
           "injection.p_clean=0.5", "injection.clean_buffer_update_prob=0.5",  # ranks disagree often
           "+callbacks.probe._target_=_ddp_probe.MemoryProbe", f"+callbacks.probe.out_dir={probe}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    # cwd = tmp: the run directory comes from the default hydra.run.dir (a timestamp), which the
    # re-launched rank 1 must reuse instead of making its own.
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)  # a hang fails here
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(probe / f"rank{r}_end.pt", weights_only=False) for r in (0, 1)]
    warm = [torch.load(probe / f"rank{r}_warmup.pt", weights_only=False) for r in (0, 1)]
    return tmp, ranks, warm


def test_one_run_directory_for_both_ranks(ddp_run):
    tmp, ranks, _ = ddp_run
    runs = [p for p in (tmp / "outputs").rglob(".hydra")]
    assert len(runs) == 1, runs
    run = runs[0].parent
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "csv" / "metrics.csv").exists()
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert all(r["world_size"] == 2 and len(r["own"]) == STEPS for r in ranks)


def test_memories_identical_after_warmup_and_hold_all_ranks_errors(ddp_run):
    _, ranks, warm = ddp_run
    for bank in ("vid", "noi"):
        a, b = warm[0][bank], warm[1][bank]
        assert a.keys() == b.keys()
        for k in a.keys() - {"chunks"}:
            assert (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]), (bank, k)
        assert len(_entries(a)) == len(_entries(b)) > 0
        assert all(ba == bb and torch.equal(ea, eb) for (ba, ea), (bb, eb) in zip(_entries(a), _entries(b)))
    for bank, key in (("vid", "e_vid"), ("noi", "e_noi")):
        produced = _produced(ranks, key, range(W))
        owners = [_owners(produced, b, e) for b, e in _entries(warm[0][bank])]
        assert all(len(o) == 1 for o in owners), owners  # every entry is one warmup error of some rank
        stored_ids = {o[0] for o in owners}
        # errors of injected samples are always stored; those of clean samples only when the shared coin says so
        must = {(r, s) for r, s, _, _ in produced if not bool(ranks[r]["own"][s]["clean"][0])}
        assert must <= stored_ids
        assert {r for r, _ in stored_ids} == {0, 1}  # both ranks' errors, on both ranks


def test_after_warmup_each_rank_adds_only_its_own(ddp_run):
    _, ranks, warm = ddp_run
    for r in (0, 1):
        for bank, key in (("vid", "e_vid"), ("noi", "e_noi")):
            before = warm[r][bank]["counts"].tolist()
            end = ErrorBank.stored_rows(ranks[r]["memory"][bank])
            new = [(bucket, row) for bucket, rows in enumerate(end)  # no replacement (Z=500): new entries are appended
                   for row in rows[before[bucket]:]]
            owners = [_owners(_produced(ranks, key, range(W, STEPS)), b, e) for b, e in new]
            assert all(len(o) == 1 and o[0][0] == r for o in owners), (r, bank, owners)
            must = {(r, s) for s in range(W, STEPS) if not bool(ranks[r]["own"][s]["clean"][0])}
            assert must <= {o[0] for o in owners}
    ends = [_entries(ranks[r]["memory"]["vid"]) for r in (0, 1)]
    assert len(ends[0]) != len(ends[1]) or not all(torch.equal(a, b) for (_, a), (_, b) in zip(*ends))


def test_ranks_drew_different_decisions(ddp_run):
    _, ranks, _ = ddp_run
    clean = [[bool(ranks[r]["own"][s]["clean"][0]) for s in range(STEPS)] for r in (0, 1)]
    grids = [[int(ranks[r]["own"][s]["grid"][0]) for s in range(STEPS)] for r in (0, 1)]
    assert clean[0] != clean[1] and grids[0] != grids[1]  # and the run above finished: no collective diverged


def test_checkpoint_is_adapter_only_and_keeps_every_ranks_stream(ddp_run):
    tmp, _, _ = ddp_run
    ckpt = torch.load(next((tmp / "outputs").rglob("last.ckpt")), weights_only=True)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # no frozen base
    streams = ckpt["svi_generator_per_rank"]
    assert len(streams) == 2 and not torch.equal(streams[0], streams[1])
    assert len(ckpt["callbacks"]["ExactResume"]["rng_per_rank"]) == 2
    coins = ckpt["callbacks"]["ErrorReplayCallback"]["local_generator_per_rank"]
    assert len(coins) == 2 and not torch.equal(coins[0], coins[1])
