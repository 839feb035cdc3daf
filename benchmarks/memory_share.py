"""What one replay memory per node (instead of one per rank) would cost per training step.

A node-shared memory (storage in shared memory, one writer) needs, every step after warmup: the errors
of all local ranks gathered to the writer, the writer inserting all of them (serially), and a node
barrier before anyone samples again (a reader must not see a half-written entry). Per-rank memories
insert only their own pair, with no communication. This script measures both on this machine with
`--world` gloo processes at paper size (entries (16, 21, 60, 104), bf16, one full bucket of Z = 500 in the
writer), so the trade-off in docs/memory.md rests on numbers, not guesses.

    python benchmarks/memory_share.py                      # 2 processes, l2_sketch (about 2 minutes)
    python benchmarks/memory_share.py --replacement l2     # the exact search: the writer is the bottleneck
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from svi.erft.memory import ErrorBank, MemoryConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, args, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    shape, dtype = tuple(args.shape), torch.bfloat16
    g = torch.Generator().manual_seed(rank)
    bank = ErrorBank(MemoryConfig(num_grids=1, capacity=args.z, replacement=args.replacement, dtype=dtype))
    if rank == 0:  # the writer (and, for the per-rank figure, a rank's own memory)
        for _ in range(args.z):  # a full bucket: inserts pay the replacement search
            bank.add(0, torch.randn(shape, generator=g).to(dtype))
    times = {"local": [], "shared": [], "gather": [], "insert": []}
    for step in range(args.steps + 1):
        pair = torch.randn(2, *shape, generator=g).to(dtype)  # this rank's (E_vid, E_noi)
        dist.barrier()  # steps start together, as under DDP (the gradient all-reduce syncs the ranks)
        t = time.perf_counter()
        if rank == 0:  # per-rank memory: own pair only, no communication
            bank.add(0, pair[0])
            bank.add(0, pair[1])
        local = time.perf_counter() - t
        dist.barrier()
        t = time.perf_counter()
        gathered = [torch.empty_like(pair) for _ in range(world)] if rank == 0 else None
        dist.gather(pair, gathered, dst=0)
        t_gather = time.perf_counter() - t
        if rank == 0:
            for p in gathered:
                bank.add(0, p[0])
                bank.add(0, p[1])
        t_insert = time.perf_counter() - t - t_gather
        dist.barrier()  # readers wait until the writer is done
        shared = time.perf_counter() - t
        if step:  # the first step pays one-off costs
            for k, v in (("local", local), ("shared", shared), ("gather", t_gather), ("insert", t_insert)):
                times[k].append(v)
    if rank == 0:
        out.put({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=4, default=[16, 21, 60, 104])
    ap.add_argument("--z", type=int, default=500)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--replacement", default="l2_sketch", choices=("l2", "l2_sketch", "random", "fifo"))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.spawn(worker, args=(args.world, _free_port(), args, out), nprocs=args.world, join=True)
    r = out.get()
    mib = 2 * torch.Size(args.shape).numel() * 2 / 2**20
    print(f"{args.world} gloo processes, one error pair = {mib:.0f} MiB bf16, full bucket Z = {args.z}, "
          f"{args.replacement}; medians of {args.steps} steps")
    print(f"  per-rank memory, insert own pair:           {r['local'] * 1e3:8.1f} ms per step")
    print(f"  node-shared memory, gather + insert + barrier: {r['shared'] * 1e3:8.1f} ms per step "
          f"(gather {r['gather'] * 1e3:.1f} ms, writer inserting {args.world} pairs {r['insert'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
