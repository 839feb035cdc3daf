"""Replay memory: insert and sample cost of `ErrorBank` vs the naive bank of the official code, and how
often the count-sketch search picks the same entry as the exact one.

The naive bank is a Python list of tensors per bucket; when the bucket is full its "l2_batch" policy
stacks the whole bucket into a new tensor on every insert, subtracts the new error and takes the norms
(official `train_svi.py`, `_compute_l2_distance_batch`). Ours writes in place into chunked storage and
searches either exactly (`l2`: one pass over the bucket, float32 blocks) or in a 256-dim count-sketch
space (`l2_sketch`: O(D) to sketch the new error, then O(Z k)).

One bucket at paper size: entries (16, 21, 60, 104) (81 frames at 480x832), Z = 500, bf16: 2 GiB per
bank. The naive bank and ours are measured one after the other (peak RAM ~7 GiB, in the naive search).

    python benchmarks/memory_insert.py                       # paper size (about 2 minutes on 2 cores)
    python benchmarks/memory_insert.py --shape 16 5 8 8 --z 64   # a quick look
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import time

import torch

from svi.erft.memory import ErrorBank, MemoryConfig, storage_dtype


def errors(n: int, shape, dtype, generator: torch.Generator, kind: str):
    """n errors, one at a time. 'structured': smooth fields plus noise with scales over two decades (one
    timestep bucket holds errors of many samples of very different size); 'gaussian': iid N(0, 1), the
    worst case for any approximate search (all pairwise distances nearly equal)."""
    c, t, h, w = shape
    for _ in range(n):
        if kind == "gaussian":
            yield torch.randn(shape, generator=generator).to(dtype)
            continue
        coarse = torch.randn(1, c, t, max(1, h // 8), max(1, w // 8), generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=(t, h, w), mode="trilinear")[0]
        a, b = (10 ** (2 * torch.rand(2, generator=generator) - 1)).tolist()  # scales in [0.1, 10]
        yield (a * smooth + 0.3 * b * torch.randn(shape, generator=generator)).to(dtype)


class NaiveBank:
    """The official layout: a list per bucket; "l2_batch" replacement re-stacks the bucket each insert."""

    def __init__(self, capacity: int):
        self.capacity, self.items = capacity, []

    def add(self, error: torch.Tensor) -> None:
        error = error.detach().cpu()
        if len(self.items) < self.capacity:
            self.items.append(error)
            return
        stored = torch.stack(self.items)  # (Z, ...) a new 2 GiB tensor at paper size
        distances = torch.norm(stored.flatten(1) - error.flatten().unsqueeze(0), p=2, dim=1)
        self.items[int(torch.argmin(distances))] = error

    def sample(self) -> torch.Tensor:
        return random.choice(self.items).float()


def timeit(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, default=[16, 21, 60, 104])
    ap.add_argument("--z", type=int, default=500)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=5, help="timed full-bucket inserts (naive, exact); x10 for sketch")
    ap.add_argument("--agreement", type=int, default=100, help="queries for the sketch agreement rate")
    ap.add_argument("--sketch-dims", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--reranks", type=int, nargs="+", default=[0, 8, 32])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape, z, dtype = tuple(args.shape), args.z, storage_dtype(args.dtype)
    d = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    print(f"entry {shape} = {d:,} elements, {d * dtype.itemsize / 2**20:.2f} MiB {args.dtype}; Z = {z}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    # ---------------------------------------------------------------- naive bank
    naive = NaiveBank(z)
    stream = errors(z, shape, dtype, g, "structured")
    fill = []
    for e in stream:
        t = time.perf_counter()
        naive.add(e)
        fill.append(time.perf_counter() - t)
    queries = list(errors(args.reps, shape, dtype, g, "structured"))
    it = iter(queries)
    naive_full = timeit(lambda: naive.add(next(it)), args.reps)
    naive_sample = timeit(naive.sample, 20)
    print(f"naive list bank:  insert (filling) {statistics.median(fill) * 1e3:9.3f} ms   "
          f"insert (full, l2_batch) {naive_full * 1e3:9.1f} ms   sample {naive_sample * 1e3:7.2f} ms")
    del naive, queries, it
    gc.collect()

    # ---------------------------------------------------------------- ours
    results = {}
    for replacement, rerank in (("l2", 0), ("l2_sketch", 0), ("l2_sketch", 8), ("l2_sketch", 32)):
        bank = ErrorBank(MemoryConfig(num_grids=1, capacity=z, replacement=replacement, dtype=dtype,
                                      sketch_rerank=rerank))
        g = torch.Generator().manual_seed(0)
        fill = []
        for e in errors(z, shape, dtype, g, "structured"):
            t = time.perf_counter()
            bank.add(0, e)
            fill.append(time.perf_counter() - t)
        reps = args.reps if replacement == "l2" else 10 * args.reps
        it = iter(list(errors(reps, shape, dtype, g, "structured")))
        full = timeit(lambda: bank.add(0, next(it)), reps)
        sample = timeit(lambda: bank.sample(0), 20)
        name = replacement + (f" (rerank {rerank})" if rerank else "")
        results[name] = full
        print(f"ours {name:22s} insert (filling) {statistics.median(fill) * 1e3:9.3f} ms   "
              f"insert (full) {full * 1e3:9.1f} ms   sample {sample * 1e3:7.2f} ms   "
              f"{bank.nbytes / 2**30:.2f} GiB")
        del bank
        gc.collect()
    for name, t in results.items():
        print(f"  speed-up of a full-bucket insert vs naive: {name:22s} {naive_full / t:7.1f}x")

    # ---------------------------------------------------------------- sketch agreement
    for kind in ("structured", "gaussian"):
        for k in args.sketch_dims:
            g = torch.Generator().manual_seed(1)
            bank = ErrorBank(MemoryConfig(num_grids=1, capacity=z, replacement="l2_sketch", dtype=dtype, sketch_dim=k))
            for e in errors(z, shape, dtype, g, kind):
                bank.add(0, e)
            bk = bank._buckets[0]
            same = {r: 0 for r in args.reranks}
            ratio = {r: [] for r in args.reranks}
            for q in errors(args.agreement, shape, dtype, g, kind):
                e = q.reshape(-1).float()
                dist = (bk.norms[: bk.count] + e.dot(e) - 2.0 * bank._dots(bk, e)).clamp_min(0)  # exact, (Z,)
                exact = int(torch.argmin(dist))
                for r in args.reranks:
                    bank.sketch_rerank = r
                    pick = bank._nearest_slot(bk, q)
                    same[r] += pick == exact
                    ratio[r].append(float(dist[pick].sqrt() / dist[exact].clamp_min(1e-30).sqrt()))
                bank.sketch_rerank = 0
                bank.add(0, q)  # the memory evolves as in training (replacing the sketch's pick)
            n = args.agreement
            cells = ", ".join(f"rerank {r}: {100 * same[r] / n:.0f}% (distance ratio median "
                              f"{statistics.median(ratio[r]):.4f}, max {max(ratio[r]):.4f})" for r in args.reranks)
            print(f"sketch vs exact, {kind} errors, k = {k}, {n} inserts into a full bucket: same entry {cells}")
            del bank
            gc.collect()


if __name__ == "__main__":
    main()
