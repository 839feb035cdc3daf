"""Exact resume: data order, global RNGs, atomic checkpoint writes, and a run killed mid-training that
resumes to the same losses, memory and adapter as an uninterrupted one."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from svi.callbacks.resume import ResumableDataLoader, make_resumable
from svi.erft.memory import ErrorBank
from svi.lit.checkpoint_io import AtomicCheckpointIO


class _Counting(Dataset):
    def __init__(self, n: int):
        self.n, self.loaded = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.loaded.append(i)
        return i


def _collate(items):
    return torch.tensor(items) * 10  # a non-default collate_fn must survive the rebuild


def _epoch(loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


# ---------------------------------------------------------------- resumable data order
def test_order_is_a_function_of_seed_and_epoch():
    a, b = (ResumableDataLoader(_Counting(10), batch_size=3, shuffle=True, seed=5) for _ in range(2))
    assert _epoch(a) == _epoch(b)
    first = _epoch(a)
    a.sampler.set_epoch(1)
    assert _epoch(a) != first and sorted(sum(_epoch(a), [])) == list(range(10))
    c = ResumableDataLoader(_Counting(10), batch_size=3, shuffle=True, seed=6)
    assert _epoch(c) != first


def test_mid_epoch_state_skips_consumed_batches_without_loading_them():
    ref = ResumableDataLoader(_Counting(11), batch_size=2, shuffle=True, seed=0)
    ref.sampler.set_epoch(3)
    full = _epoch(ref)
    run = ResumableDataLoader(_Counting(11), batch_size=2, shuffle=True, seed=0)
    run.sampler.set_epoch(3)
    it = iter(run)
    seen = [next(it).tolist() for _ in range(4)]
    state = run.state_dict()
    assert state == {"epoch": 3, "batches": 4} and seen == full[:4]

    ds = _Counting(11)
    resumed = ResumableDataLoader(ds, batch_size=2, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    assert _epoch(resumed) == full[4:]
    assert sorted(ds.loaded) == sorted(sum(full[4:], []))  # the skipped samples were never loaded
    assert resumed.state_dict() == {"epoch": 3, "batches": len(full)}
    assert len(resumed) == len(full)  # Lightning counts the epoch's batches from the full length


def test_mid_epoch_resume_with_worker_processes():
    def loader():
        return ResumableDataLoader(_Counting(11), batch_size=2, shuffle=True, seed=0, num_workers=2)

    ref = loader()
    ref.sampler.set_epoch(2)
    full = _epoch(ref)
    resumed = loader()
    resumed.load_state_dict({"epoch": 2, "batches": 3})
    assert _epoch(resumed) == full[3:]


def test_state_saved_on_the_last_batch_starts_the_next_epoch():
    loader = ResumableDataLoader(_Counting(6), batch_size=2, shuffle=True, seed=1)
    loader.load_state_dict({"epoch": 0, "batches": 3})
    assert loader.sampler.epoch == 1 and len(_epoch(loader)) == 3


def test_per_epoch_draws_follow_the_orders_epoch():
    """A dataset that draws per epoch (crops, strides: `set_epoch`) gets the epoch of the data order, also when
    a checkpoint saved on an epoch's last batch resumes into the next epoch (Lightning's own epoch counter
    is still the old one when the loader is made)."""
    class Drawing(_Counting):
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    saved = ResumableDataLoader(Drawing(4), batch_size=2, shuffle=True, seed=0)
    _epoch(saved)
    resumed = ResumableDataLoader(Drawing(4), batch_size=2, shuffle=True, seed=0)
    resumed.load_state_dict(saved.state_dict())  # saved after the last batch of epoch 0
    iter(resumed)
    assert resumed.sampler.epoch == resumed.dataset.epoch == 1


def test_replicas_split_the_data():
    parts = [sum(_epoch(ResumableDataLoader(_Counting(8), batch_size=1, shuffle=True, seed=0, num_replicas=2,
                                            rank=r)), []) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(8))


def test_make_resumable_keeps_loader_options():
    plain = DataLoader(_Counting(7), batch_size=2, shuffle=True, collate_fn=_collate, drop_last=True)
    loader = make_resumable(plain, seed=3)
    assert isinstance(loader, ResumableDataLoader)
    assert loader.batch_size == 2 and loader.drop_last and loader.collate_fn is _collate and len(loader) == 3
    batches = _epoch(loader)
    assert all(v % 10 == 0 for b in batches for v in b)
    assert make_resumable(loader, seed=3) is loader  # already resumable
    sequential = make_resumable(DataLoader(_Counting(4), batch_size=1), seed=0)
    assert _epoch(sequential) == [[0], [1], [2], [3]]


def test_custom_sampler_is_left_alone_with_a_warning():
    class Reverse(SequentialSampler):
        def __iter__(self):
            return iter(range(len(self.data_source) - 1, -1, -1))

    plain = DataLoader(_Counting(3), sampler=Reverse(_Counting(3)))
    with pytest.warns(UserWarning, match="custom sampler"):
        assert make_resumable(plain, seed=0) is plain


# ---------------------------------------------------------------- atomic checkpoint writes
def test_atomic_checkpoint_io_keeps_previous_file_on_a_failed_write(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1

    import lightning.fabric.plugins.io.torch_io as torch_io

    def dies_mid_write(checkpoint, filepath):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted while writing

    monkeypatch.setattr(torch_io, "_atomic_save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file left


# ---------------------------------------------------------------- kill and resume, end to end
STEPS, EVERY = 16, 2
RUN = ["experiment=svi_shot", "debug=tiny", f"trainer.max_steps={STEPS}",
       f"callbacks.model_checkpoint.every_n_train_steps={EVERY}",
       "memory.capacity=3", "memory.num_grids=2", "memory.warmup_steps=2",  # l2 replacements before the kill
       "data.num_samples=6",                             # epochs of 6 steps: checkpoints mid-epoch
       "lora.dropout=0.1",                               # global RNG in the forward pass
       "injection.clean_buffer_update_prob=1.0"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs share the cores: no OpenMP spinning against each other


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "svi.train", *RUN, f"hydra.run.dir={run_dir}", *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [r for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("train/loss")]
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses_memory_and_adapter(tmp_path):
    from safetensors.torch import load_file

    full, killed, resumed = tmp_path / "full", tmp_path / "killed", tmp_path / "resumed"
    reference = subprocess.Popen(_cmd(full), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    victim = subprocess.Popen(_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    last = killed / "checkpoints" / "last.ckpt"  # appears complete or not at all (atomic rename)
    deadline = time.monotonic() + 300
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)  # usually mid-step or mid-write of the next checkpoint
    victim.wait()
    assert reference.wait(timeout=600) == 0
    ckpt = torch.load(last, weights_only=True)  # whatever the kill interrupted, last.ckpt loads
    k = ckpt["global_step"]
    assert EVERY <= k < STEPS, k  # killed mid-run, after a checkpoint

    subprocess.run(_cmd(resumed, f"ckpt_path={last}"), check=True, capture_output=True, timeout=600, env=ENV)
    ref, res = _losses(full), _losses(resumed)
    assert sorted(res) == list(range(k, STEPS))
    assert all(res[s] == ref[s] for s in res), [(s, ref[s], res[s]) for s in res if res[s] != ref[s]]

    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    mem_a, mem_b = a["callbacks"]["ErrorReplayCallback"]["memory"], b["callbacks"]["ErrorReplayCallback"]["memory"]
    for bank in ("vid", "noi"):
        assert mem_a[bank]["num_replaced"] > 0
        for key in ("counts", "norms"):
            assert torch.equal(mem_a[bank][key], mem_b[bank][key]), (bank, key)
        rows_a, rows_b = ErrorBank.stored_rows(mem_a[bank]), ErrorBank.stored_rows(mem_b[bank])
        assert all(len(x) == len(y) and all(map(torch.equal, x, y)) for x, y in zip(rows_a, rows_b)), bank
    adapter = "adapter/pytorch_lora_weights.safetensors"
    wa, wb = load_file(full / adapter), load_file(resumed / adapter)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
