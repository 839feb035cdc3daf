"""CFG-parallel generation with two gloo processes on the CPU: `torchrun --nproc_per_node 2 -m svi.generate`
gives the single-process video bit for bit (each guidance branch is the same computation on either
process; the all-gather copies it exactly), only rank 0 writes, and an error found by rank 0 ends both."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from svi.sampling.media import read_mp4
from svi.sampling.parallel import CFGParallel
from tests.sampling.conftest import SMALL, write_image

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}  # the same threads in both runs


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)  # a hang fails here
    return proc


def _generate(args, cwd, nproc=None):
    if nproc is None:
        return _run([sys.executable, "-m", "svi.generate", *args], cwd)
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "-m", "svi.generate", *args], cwd)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg_parallel")
    image, prompts = write_image(root / "image.png"), root / "prompts.txt"
    prompts.write_text("a red disc drifts to the right\na blue square spins\n")
    return root, [*SMALL, f"image={image}", f"prompts={prompts}", "num_clips=2", "save_latents=true",
                  "condition=film", "num_frames=9", "cfg=4.0"]


def test_two_processes_give_the_single_process_video_bit_for_bit(inputs):
    root, common = inputs
    one = _generate([*common, f"out={root / 'one'}"], root)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _generate([*common, f"out={root / 'two'}"], root, nproc=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert "CFG-parallel over 2 processes" in two.stderr + two.stdout
    for k in range(2):
        a = torch.load(root / f"one/latents/clip_{k:04d}.pt", weights_only=True)
        b = torch.load(root / f"two/latents/clip_{k:04d}.pt", weights_only=True)
        assert torch.equal(a, b)
    assert np.array_equal(read_mp4(root / "one/video.mp4"), read_mp4(root / "two/video.mp4"))
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(root / "one") == files(root / "two")  # one writer: no second set of files, no temporaries


def test_an_error_found_by_rank_0_ends_every_process(inputs):
    root, common = inputs
    out = root / "busy"
    first = _generate([*common, f"out={out}", "num_clips=1"], root)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _generate([*common, f"out={out}", "num_clips=1"], root, nproc=2)  # no resume=true: refused
    assert again.returncode != 0
    assert again.stderr.count("pass resume=true") >= 2, again.stderr[-3000:]  # raised on both ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _three_branches(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ran = []

    def branch(j):
        def call():
            ran.append(j)
            return torch.full((2, 3), float(j))
        return call

    par = CFGParallel(rank=rank, world_size=2)
    got = par.run([branch(j) for j in range(3)], like=torch.zeros(2, 3))
    torch.save({"ran": ran, "got": got}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_three_guidance_branches_over_two_processes(tmp_path):
    """Talk's three passes: rank 0 runs branches 0 and 2, rank 1 branch 1; both get all three in order."""
    mp.spawn(_three_branches, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank, mine in ((0, [0, 2]), (1, [1])):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["ran"] == mine
        assert [float(v[0, 0]) for v in result["got"]] == [0.0, 1.0, 2.0]
