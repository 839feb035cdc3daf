"""Error replay memory: capacity, replacement policies, sampling distribution, checkpoint round trip."""
import math

import pytest
import torch

from svi.erft.memory import ErrorBank, MemoryConfig, MemoryReader, ReplayMemory

SHAPE = (2, 3, 4)  # a tiny stand-in for a (16, T, h, w) latent error


def make_bank(num_buckets: int = 50, budget_bytes: int | None = None, sketch_seed: int = 0, **config) -> ErrorBank:
    """An ErrorBank of a MemoryConfig (`num_buckets` = memory.num_grids)."""
    return ErrorBank(MemoryConfig(num_grids=num_buckets, **config), budget_bytes, sketch_seed)


def make_memory(num_buckets: int = 50, budget_bytes: int | None = None, **config) -> ReplayMemory:
    budget_gib = None if budget_bytes is None else budget_bytes / 2**30
    return ReplayMemory(MemoryConfig(num_grids=num_buckets, budget_gib=budget_gib, **config))


def _const(v: float, shape=SHAPE) -> torch.Tensor:
    return torch.full(shape, float(v))


def _brute_nearest(stored: torch.Tensor, new: torch.Tensor) -> int:
    """Reference nearest neighbour in float64."""
    d = (stored.double().reshape(stored.shape[0], -1) - new.double().reshape(1, -1)).pow(2).sum(1)
    return int(torch.argmin(d))


# ---------------------------------------------------------------- construction / bookkeeping
def test_invalid_config():
    with pytest.raises(ValueError, match="l2.*random.*fifo"):
        make_bank(replacement="nearest")
    with pytest.raises(ValueError):
        make_bank(capacity=0)
    with pytest.raises(ValueError):
        make_bank(num_buckets=0)


def test_capacity_counts_and_lazy_allocation():
    bank = make_bank(num_buckets=4, capacity=3, replacement="fifo")
    assert bank.nbytes == 0 and len(bank) == 0 and bank.is_empty(0)
    assert bank.entries(2).shape[0] == 0
    for i in range(5):
        assert bank.add(1, torch.randn(SHAPE))
    bank.add(3, torch.randn(SHAPE))
    assert bank.counts.tolist() == [0, 3, 0, 1]
    assert len(bank) == 4 and bank.num_inserted == 6 and bank.num_replaced == 2
    assert bank.nonempty_mask.tolist() == [False, True, False, True]
    assert bank.fill_fraction == pytest.approx(4 / 12)
    # only buckets 1 and 3 are allocated, each (capacity, *SHAPE) float32
    assert bank.nbytes == 2 * 3 * math.prod(SHAPE) * 4
    assert bank.entries(1).shape == (3, *SHAPE)


def test_shape_mismatch_and_bucket_range():
    bank = make_bank(num_buckets=2, capacity=2)
    bank.add(0, torch.zeros(SHAPE))
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3, 4\)"):
        bank.add(1, torch.zeros(2, 3, 5))
    with pytest.raises(IndexError):
        bank.add(2, torch.zeros(SHAPE))
    with pytest.raises(IndexError):
        bank.add(-1, torch.zeros(SHAPE))
    assert len(bank) == 1


def test_nonfinite_refused():
    bank = make_bank(num_buckets=2, capacity=2)
    bank.add(0, _const(1.0))
    before = bank.entries(0).clone()
    bad = _const(2.0)
    bad[0, 0, 0] = float("nan")
    assert not bank.add(0, bad)
    bad[0, 0, 0] = float("inf")
    assert not bank.add(1, bad)
    assert bank.num_nonfinite == 2 and bank.num_inserted == 1
    # bucket 0 only: 2 float32 entries plus their float32 norms ("l2")
    assert bank.counts.tolist() == [1, 0] and bank.nbytes == 2 * (math.prod(SHAPE) + 1) * 4
    assert torch.equal(bank.entries(0), before)


# ---------------------------------------------------------------- replacement policies
def test_l2_replaces_exact_nearest():
    bank = make_bank(num_buckets=1, capacity=4, replacement="l2")
    for v in (0.0, 10.0, 20.0, 30.0):
        bank.add(0, _const(v))
    bank.add(0, _const(18.0))  # nearest is the 20.0 entry in slot 2
    vals = bank.entries(0)[:, 0, 0, 0].tolist()
    assert vals == [0.0, 10.0, 18.0, 30.0]
    bank.add(0, _const(-3.0))  # nearest is slot 0
    assert bank.entries(0)[:, 0, 0, 0].tolist() == [-3.0, 10.0, 18.0, 30.0]
    assert bank.num_replaced == 2 and len(bank) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2_matches_bruteforce_on_random_data(dtype, monkeypatch):
    monkeypatch.setattr(ErrorBank, "search_block", 5)  # exercise the blocked search with ragged tails
    g = torch.Generator().manual_seed(0)
    bank = make_bank(num_buckets=2, capacity=8, replacement="l2", dtype=dtype, grow_by=3)  # chunks 3+3+2
    for _ in range(8):
        bank.add(1, torch.randn(SHAPE, generator=g))
    for _ in range(20):
        new = torch.randn(SHAPE, generator=g) * 1.5
        before = bank.entries(1).clone()
        expect = _brute_nearest(before, new)
        bank.add(1, new)
        after = bank.entries(1)
        changed = [i for i in range(8) if not torch.equal(after[i], before[i])]
        assert changed == [expect]
        assert torch.equal(after[expect], new.to(dtype))
        assert after.dtype == dtype


def test_fifo_replaces_oldest():
    bank = make_bank(num_buckets=1, capacity=3, replacement="fifo")
    for v in range(3):
        bank.add(0, _const(v))
    for v in range(3, 8):
        bank.add(0, _const(v))
    # slots hold the 3 most recent values in ring order: 6, 7, 5
    assert bank.entries(0)[:, 0, 0, 0].tolist() == [6.0, 7.0, 5.0]


def test_random_replacement_keeps_capacity_and_is_seeded():
    def run(seed):
        bank = make_bank(num_buckets=1, capacity=4, replacement="random")
        g = torch.Generator().manual_seed(seed)
        for v in range(4):
            bank.add(0, _const(v))
        for v in range(100, 110):
            before = bank.entries(0).clone()
            bank.add(0, _const(v), generator=g)
            diff = (bank.entries(0) != before).reshape(4, -1).any(1)
            assert diff.sum() == 1 and bank.counts.tolist() == [4]
        return bank.entries(0).clone()

    a, b = run(1), run(1)
    assert torch.equal(a, b)
    assert any(not torch.equal(a, run(s)) for s in range(2, 6))


# ---------------------------------------------------------------- sampling
def test_sample_returns_float32_copy_of_stored_entry():
    bank = make_bank(num_buckets=3, capacity=5, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        bank.add(2, torch.randn(SHAPE, generator=g))
    stored = bank.entries(2).float()
    for _ in range(10):
        s = bank.sample(2, generator=g)
        assert s.dtype == torch.float32 and s.shape == SHAPE
        assert any(torch.equal(s, e) for e in stored)
    snapshot = bank.entries(2).clone()
    s.add_(100.0)
    assert torch.equal(bank.entries(2), snapshot)
    with pytest.raises(RuntimeError, match="empty"):
        bank.sample(0)
    with pytest.raises(RuntimeError, match="empty"):
        make_bank(num_buckets=2, capacity=2).sample_any()


def test_sample_copy_float32_storage():
    bank = make_bank(num_buckets=1, capacity=1)
    bank.add(0, _const(3.0))
    s = bank.sample(0)
    s.fill_(-1.0)
    assert torch.equal(bank.entries(0)[0], _const(3.0))


def test_sample_any_uniform_over_entries_not_buckets():
    bank = make_bank(num_buckets=2, capacity=16, replacement="fifo")
    bank.add(0, _const(-1.0))  # bucket 0: one entry, marked negative
    for v in range(9):
        bank.add(1, _const(v + 1))  # bucket 1: nine positive entries
    g = torch.Generator().manual_seed(123)
    n = 4000
    from0 = sum(bank.sample_any(generator=g)[0, 0, 0].item() < 0 for _ in range(n))
    p = 0.1
    assert abs(from0 / n - p) < 4 * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("replacement", ["l2", "random", "fifo"])
def test_state_dict_round_trip_continues_identically(replacement, tmp_path):
    g = torch.Generator().manual_seed(0)
    bank = make_bank(num_buckets=3, capacity=4, replacement=replacement, dtype=torch.bfloat16)
    for _ in range(9):
        bank.add(int(torch.randint(0, 2, (1,), generator=g)), torch.randn(SHAPE, generator=g))
    bad = torch.full(SHAPE, float("nan"))
    bank.add(0, bad)

    path = tmp_path / "bank.pt"
    torch.save(bank.state_dict(), path)
    clone = make_bank(num_buckets=3, capacity=4, replacement=replacement, dtype=torch.bfloat16)
    clone.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(clone.counts, bank.counts) and clone.nbytes == bank.nbytes
    assert (clone.num_inserted, clone.num_replaced, clone.num_nonfinite) == (
        bank.num_inserted, bank.num_replaced, bank.num_nonfinite)

    data = [(int(torch.randint(0, 3, (1,), generator=g)), torch.randn(SHAPE, generator=g)) for _ in range(15)]
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for b, e in data:
        bank.add(b, e, generator=ga)
        clone.add(b, e, generator=gb)
    assert torch.equal(clone.counts, bank.counts)
    for b in range(3):
        assert torch.equal(clone.entries(b), bank.entries(b))
    assert torch.equal(bank.sample_any(generator=ga), clone.sample_any(generator=gb))


def test_state_dict_holds_the_buckets_chunks_without_a_copy():
    """A checkpoint must not make a transient copy of the whole memory (~100 GiB per bank at paper size):
    the state dict hands over each bucket's own storage chunks, and only buckets that hold something."""
    bank = make_bank(num_buckets=4, capacity=100, grow_by=3)
    for _ in range(4):
        bank.add(0, torch.randn(SHAPE))
    bank.add(3, torch.randn(SHAPE))
    sd = bank.state_dict()
    chunks = sd["chunks"]
    assert [len(c) for c in chunks] == [2, 0, 0, 1]  # 4 entries in chunks of 3; bucket 3 one chunk
    assert all(c.shape[0] <= 3 for bucket in chunks for c in bucket)
    assert chunks[0][0].data_ptr() == bank._buckets[0].chunks[0].data_ptr()  # the storage itself
    assert sd["counts"].tolist() == [4, 0, 0, 1]
    clone = make_bank(num_buckets=4, capacity=100, grow_by=5)  # another chunk size loads the same entries
    clone.load_state_dict(sd)
    for b in range(4):
        assert torch.equal(clone.entries(b), bank.entries(b))


def test_earlier_concatenated_state_dict_still_loads():
    bank = make_bank(num_buckets=3, capacity=4, replacement="l2")
    for b, v in ((0, 1.0), (2, 2.0), (2, 3.0)):
        bank.add(b, _const(v))
    sd = bank.state_dict()
    old = {k: v for k, v in sd.items() if k != "chunks"}
    old["entries"] = torch.cat([bank.entries(b) for b in range(3)])  # the earlier layout
    clone = make_bank(num_buckets=3, capacity=4, replacement="l2")
    clone.load_state_dict(old)
    for b in range(3):
        assert torch.equal(clone.entries(b), bank.entries(b))


def test_reader_only_looks_and_draws():
    mem = make_memory(num_buckets=3, capacity=4)
    mem.add(torch.tensor([1]), _const(5.0)[None], _const(-5.0)[None])
    reader = mem.reader()
    assert isinstance(reader, MemoryReader) and not hasattr(reader, "add")
    assert reader.nonempty("vid").tolist() == [False, True, False] and reader.size("noi") == 1
    assert torch.equal(reader.sample("noi", 1), _const(-5.0)) and torch.equal(reader.sample_any("vid"), _const(5.0))


def test_load_state_dict_rejects_mismatched_config():
    sd = make_bank(num_buckets=3, capacity=4, replacement="l2").state_dict()
    for kw in (dict(num_buckets=4, capacity=4, replacement="l2"),
               dict(num_buckets=3, capacity=5, replacement="l2"),
               dict(num_buckets=3, capacity=4, replacement="fifo")):
        with pytest.raises(ValueError):
            make_bank(**kw).load_state_dict(sd)


def test_load_into_other_dtype_recomputes_norms():
    src = make_bank(num_buckets=1, capacity=3, replacement="l2", dtype=torch.float32)
    for v in (0.0, 10.0, 20.0):
        src.add(0, _const(v))
    dst = make_bank(num_buckets=1, capacity=3, replacement="l2", dtype=torch.bfloat16)
    dst.load_state_dict(src.state_dict())
    dst.add(0, _const(11.0))
    assert dst.entries(0)[:, 0, 0, 0].tolist() == [0.0, 11.0, 20.0]


# ---------------------------------------------------------------- two-bank memory
def test_replay_memory_keep_mask():
    mem = make_memory(num_buckets=5, capacity=4)
    assert mem.nbytes == 0
    buckets = torch.tensor([0, 1, 1, 4])
    e_vid = torch.stack([_const(i) for i in range(4)])  # (4, *SHAPE)
    e_noi = -e_vid - 1.0
    keep = torch.tensor([True, False, True, True])
    assert mem.add(buckets, e_vid, e_noi, keep=keep) == 3
    for bank in (mem.vid, mem.noi):
        assert bank.counts.tolist() == [1, 1, 0, 0, 1]
    assert torch.equal(mem.vid.entries(1)[0], _const(2.0))
    assert torch.equal(mem.noi.entries(1)[0], _const(-3.0))
    # 2 banks x 3 buckets x 4 slots (one chunk each) x (entry + its "l2" norm) in float32
    assert mem.nbytes == 2 * 3 * 4 * (math.prod(SHAPE) + 1) * 4

    # default keep = all; a pair with one non-finite side is skipped in both banks
    bad_noi = e_noi.clone()
    bad_noi[2, 0, 0, 0] = float("inf")
    assert mem.add(buckets, e_vid, bad_noi) == 3
    assert mem.vid.counts.tolist() == mem.noi.counts.tolist() == [2, 2, 0, 0, 2]
    assert (mem.vid.num_nonfinite, mem.noi.num_nonfinite) == (0, 1)

    clone = make_memory(num_buckets=5, capacity=4)
    clone.load_state_dict(mem.state_dict())
    for b in range(5):
        assert torch.equal(clone.vid.entries(b), mem.vid.entries(b))
        assert torch.equal(clone.noi.entries(b), mem.noi.entries(b))


def test_add_batch_counts_stored():
    bank = make_bank(num_buckets=3, capacity=2)
    errs = torch.randn(4, *SHAPE)
    errs[1, 0, 0, 0] = float("nan")
    assert bank.add_batch(torch.tensor([0, 0, 2, 2]), errs) == 3
    assert bank.counts.tolist() == [1, 0, 2]
    with pytest.raises(ValueError):
        bank.add_batch(torch.tensor([0, 1]), errs)


# ---------------------------------------------------------------- lazy growth, budget
def test_storage_grows_in_chunks_not_per_bucket_capacity():
    bank = make_bank(num_buckets=2, capacity=10, replacement="fifo", grow_by=4)
    entry = math.prod(SHAPE) * 4
    sizes = []
    for i in range(10):
        bank.add(0, _const(i))
        sizes.append(bank.nbytes // entry)
    assert sizes == [4, 4, 4, 4, 8, 8, 8, 8, 10, 10]  # chunks of 4, the last one clipped to Z
    assert bank.entries(0)[:, 0, 0, 0].tolist() == [float(i) for i in range(10)]
    bank.add(0, _const(99))  # full: fifo replaces slot 0, no further growth
    assert bank.nbytes // entry == 10 and bank.entries(0)[0, 0, 0, 0] == 99


def test_budget_sets_effective_capacity():
    # bfloat16 entries of 24 elements: 48 bytes + 4 for the l2 norm = 52 bytes; 3 buckets
    bank = make_bank(num_buckets=3, capacity=100, replacement="l2", dtype="bfloat16", budget_bytes=52 * 3 * 7 + 10)
    assert bank.effective_capacity is None and bank.z == 100
    bank.add(1, torch.randn(SHAPE))
    assert bank.entry_nbytes == 52 and bank.effective_capacity == 7 and bank.z == 7
    for _ in range(20):
        bank.add(1, torch.randn(SHAPE))
    assert bank.counts.tolist() == [0, 7, 0] and bank.num_replaced == 14
    assert bank.nbytes <= bank.budget_bytes
    assert bank.fill_fraction == pytest.approx(7 / 21)
    # a smaller Z than the budget allows wins
    small = make_bank(num_buckets=3, capacity=2, dtype="bfloat16", budget_bytes=10**6)
    small.add(0, torch.randn(SHAPE))
    assert small.z == 2


def test_budget_too_small_is_a_clear_error():
    bank = make_bank(num_buckets=50, capacity=500, dtype="bfloat16", budget_bytes=1000)
    with pytest.raises(ValueError, match="budget"):
        bank.add(0, torch.randn(16, 4, 4, 4))


def test_replay_memory_splits_budget_between_banks():
    mem = make_memory(num_buckets=2, capacity=100, replacement="fifo", budget_bytes=2 * 2 * 5 * 96)
    assert mem.effective_capacity is None
    mem.add(torch.tensor([0]), torch.randn(1, *SHAPE), torch.randn(1, *SHAPE))
    assert mem.effective_capacity == 5 and mem.noi.z == 5


def test_load_into_smaller_budget_is_refused():
    src = make_bank(num_buckets=1, capacity=8, replacement="fifo")
    for i in range(8):
        src.add(0, _const(i))
    dst = make_bank(num_buckets=1, capacity=8, replacement="fifo", budget_bytes=4 * 96)
    with pytest.raises(ValueError, match="budget"):
        dst.load_state_dict(src.state_dict())


# ---------------------------------------------------------------- float8 storage
def test_float8_per_entry_scale_keeps_relative_precision():
    bank = make_bank(num_buckets=1, capacity=3, replacement="l2", dtype="float8")
    g = torch.Generator().manual_seed(0)
    errs = [torch.randn(SHAPE, generator=g) * s for s in (1e-4, 1.0, 1e3)]  # 7 orders of magnitude
    for e in errs:
        bank.add(0, e)
    assert bank.entries(0).dtype == torch.float8_e4m3fn
    vals = bank.values(0)
    assert vals.dtype == torch.float32
    for v, e in zip(vals, errs):
        rel = (v - e).abs().max() / e.abs().max()
        assert rel < 2**-3  # e4m3: 3 mantissa bits; the scale keeps every entry in range
    s = bank.sample(0, generator=g)
    assert any(torch.equal(s, v) for v in vals)
    # per-entry bytes: 1 per element + float32 scale + float32 norm
    assert bank.entry_nbytes == math.prod(SHAPE) + 8


def test_float8_l2_replaces_nearest_dequantised_entry():
    g = torch.Generator().manual_seed(1)
    bank = make_bank(num_buckets=1, capacity=6, replacement="l2", dtype="float8", grow_by=4)
    for _ in range(6):
        bank.add(0, torch.randn(SHAPE, generator=g) * torch.rand((), generator=g) * 3)
    for _ in range(10):
        new = torch.randn(SHAPE, generator=g)
        expect = _brute_nearest(bank.values(0), new)
        before = bank.values(0)
        bank.add(0, new)
        changed = [i for i in range(6) if not torch.equal(bank.values(0)[i], before[i])]
        assert changed in ([expect], [])  # [] only if the new value rounds to the old one


# ---------------------------------------------------------------- sketch replacement
def test_sketch_with_full_rerank_equals_exact_l2():
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(SHAPE, generator=g) * (1 + i % 5) for i in range(40)]
    exact = make_bank(num_buckets=1, capacity=8, replacement="l2")
    sketch = make_bank(num_buckets=1, capacity=8, replacement="l2_sketch", sketch_dim=8, sketch_rerank=8)
    for e in data:
        exact.add(0, e)
        sketch.add(0, e)
    assert torch.equal(exact.entries(0), sketch.entries(0))


def test_sketch_finds_near_duplicates_and_is_seeded():
    """A new error close to a stored one (relative to the spread) must replace exactly that one."""
    shape = (16, 3, 8, 8)  # D = 3072 >> sketch_dim
    g = torch.Generator().manual_seed(4)
    stored = [torch.randn(shape, generator=g) for _ in range(16)]
    picks_j = torch.randint(0, 16, (20,), generator=g).tolist()
    queries = [(j, stored[j] + 0.2 * torch.randn(shape, generator=g)) for j in picks_j]
    picks = {}
    for seed in (0, 0, 1):
        bank = make_bank(num_buckets=1, capacity=16, replacement="l2_sketch", sketch_dim=64, sketch_seed=seed)
        for e in stored:
            bank.add(0, e)
        got = []
        for j, q in queries:
            before = bank.entries(0)
            bank.add(0, q)
            after = bank.entries(0)
            got.append([i for i in range(16) if not torch.equal(after[i], before[i])])
            assert got[-1] == [_brute_nearest(before, q)] == [j]
        picks.setdefault(seed, []).append(bank.entries(0))
    assert torch.equal(picks[0][0], picks[0][1])  # same seed, same memory


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float8"])
@pytest.mark.parametrize("replacement", ["l2", "l2_sketch", "random", "fifo"])
def test_round_trip_all_dtypes_and_policies(dtype, replacement):
    g = torch.Generator().manual_seed(5)
    kw = dict(num_buckets=3, capacity=5, replacement=replacement, dtype=dtype, grow_by=2, sketch_dim=8)
    bank = make_bank(**kw)
    for _ in range(12):
        bank.add(int(torch.randint(0, 3, (1,), generator=g)), torch.randn(SHAPE, generator=g))
    clone = make_bank(**kw)
    clone.load_state_dict(bank.state_dict())
    assert clone.nbytes == bank.nbytes
    ga, gb = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(12):
        b, e = int(torch.randint(0, 3, (1,), generator=g)), torch.randn(SHAPE, generator=g)
        bank.add(b, e, generator=ga)
        clone.add(b, e, generator=gb)
    for b in range(3):
        assert torch.equal(clone.entries(b), bank.entries(b))
        assert torch.equal(clone.values(b), bank.values(b))
    sd = bank.state_dict()
    if replacement == "l2_sketch":
        assert sd["sketches"].shape == (len(bank), 8) and sd["sketch_seed"] == 0


def test_load_bfloat16_into_float8_and_sketch():
    src = make_bank(num_buckets=2, capacity=4, replacement="l2", dtype="bfloat16")
    g = torch.Generator().manual_seed(6)
    for _ in range(6):
        src.add(int(torch.randint(0, 2, (1,), generator=g)), torch.randn(SHAPE, generator=g))
    dst = make_bank(num_buckets=2, capacity=4, replacement="l2", dtype="float8")
    dst.load_state_dict(src.state_dict())
    for b in range(2):
        assert torch.allclose(dst.values(b), src.values(b), rtol=0.13, atol=0.13 * src.values(b).abs().max())


def test_cpu_storage_not_pinned_without_cuda():
    bank = make_bank(num_buckets=1, capacity=2)
    assert bank.pin_memory == torch.cuda.is_available()
    with pytest.raises(ValueError, match="float8"):
        make_bank(dtype="int8")


def test_memory_presets_compose_into_the_callback():
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    for preset, dtype, replacement, budget in (("paper", torch.bfloat16, "l2", None),
                                               ("compact", torch.float8_e4m3fn, "l2_sketch", 24 * 2**30 // 2)):
        cfg = compose_config("train", ["experiment=svi_shot", f"memory={preset}"])
        bank = instantiate(cfg.callbacks.error_replay).memory.vid
        assert (bank.dtype, bank.replacement, bank.budget_bytes, bank.capacity) == (dtype, replacement, budget, 500)
    # at paper size the compact budget gives Z = 122 per bucket
    cfg = compose_config("train", ["experiment=svi_shot", "memory=compact"])
    bank = instantiate(cfg.callbacks.error_replay).memory.vid
    bank._resolve((16, 21, 60, 104))
    assert bank.z == 122
