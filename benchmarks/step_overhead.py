"""ERFT training step vs a plain LoRA step (ablation no_erft) on the same tiny model, side by side.

Both runs go through Lightning exactly as `svi-train` does (module, callbacks, optimizer, clipping); a
timing callback records each step from `on_train_batch_start` to the end of the last callback's
`on_train_batch_end` (the replay memory's inserts and logs included). The two configurations alternate
in rounds of `--steps` steps so that slow drifts of the machine hit both alike; the first step of every
round is dropped; the figure is the median over rounds of (median ERFT step / median plain step) of
the two back-to-back fits, with its quartiles. It also reports where the ERFT-only time goes
(sampling errors from the memory, the callback's inserts and logging).

    python benchmarks/step_overhead.py                      # tiny backbone, paper ERFT settings
    python benchmarks/step_overhead.py --threads 1 trainer.log_every_n_steps=10   # the GPU trainer's cadence
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections import defaultdict

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import svi.config  # noqa: F401
import svi.lit.module as lit_module
from svi.callbacks import ErrorReplayCallback
from svi.erft.memory import ReplayMemory
from svi.lit import ERFTModule
from svi.paths import CONF_DIR

warnings.filterwarnings("ignore")
logging.getLogger("lightning").setLevel(logging.ERROR)  # one fit per round: no per-fit banners

SECTIONS: dict[str, list[float]] = defaultdict(list)
CLOCK = time.process_time  # CPU time of this process: robust to other processes sharing the cores (--clock)


def timed(name: str, fn, tag=lambda *args: ""):
    def wrapper(*args, **kwargs):
        t = CLOCK()
        try:
            return fn(*args, **kwargs)
        finally:
            SECTIONS[name + tag(*args)].append(CLOCK() - t)

    return wrapper


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = CLOCK()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(CLOCK() - self._t)


def setup(ablation: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=svi_shot", "backbone=tiny", "data=synthetic", "trainer=cpu",
                                          "logger=none", f"ablation={ablation}", f"paths.output_dir={tempfile.gettempdir()}/svi-bench",
                                          *overrides])
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model)
    data = instantiate(cfg.data)
    replay = instantiate(cfg.callbacks.error_replay)  # kept across rounds: the memory keeps filling
    return cfg, model, data, replay


def fit_round(cfg, model, data, replay, steps: int) -> list[float]:
    timer = StepTimer()
    trainer = instantiate(cfg.trainer, callbacks=[replay, timer], logger=False, max_steps=steps,
                          enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    return timer.times[1:]  # the first step of a fit pays one-off costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10, help="steps per round and configuration")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU time (default; with --threads 1 on a shared machine); wall: perf_counter")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)

    lit_module.sample_errors = timed("sample_errors", lit_module.sample_errors,
                                     lambda memory, *a: " [erft]" if memory is not None else " [plain]")
    ErrorReplayCallback.on_train_batch_end = timed("replay callback, all", ErrorReplayCallback.on_train_batch_end,
                                                   lambda cb, *a: " [erft]" if cb.enabled else " [plain, disabled]")
    ErrorReplayCallback._log = timed("replay callback, logging [erft]", ErrorReplayCallback._log)
    ReplayMemory.add = timed("replay memory, insert [erft]", ReplayMemory.add)
    ERFTModule.training_step = timed("module training_step (forward, loss, logs)", ERFTModule.training_step,
                                     lambda m, *a: " [erft]" if m.injection.enabled else " [plain]")
    runs = {"erft": setup("none", args.overrides), "plain": setup("no_erft", args.overrides)}
    times: dict[str, list[float]] = {"erft": [], "plain": []}
    paired = []  # per round: median ERFT step / median plain step, run back to back
    for r in range(args.rounds):
        this = {}
        for name in (("erft", "plain") if r % 2 == 0 else ("plain", "erft")):
            this[name] = fit_round(*runs[name], args.steps)
            times[name] += this[name]
        paired.append(statistics.median(this["erft"]) / statistics.median(this["plain"]))

    med = {k: statistics.median(v) for k, v in times.items()}
    mem = runs["erft"][3].memory
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
          f"{args.rounds} rounds x {args.steps} steps "
          f"per configuration; memory at the end: {len(mem.vid)} pairs, {mem.nbytes / 2**20:.1f} MiB")
    for k in ("plain", "erft"):
        q = statistics.quantiles(times[k], n=4)
        print(f"  {k:5s} step: median {med[k] * 1e3:7.2f} ms  (quartiles {q[0] * 1e3:.2f} / {q[2] * 1e3:.2f} ms, "
              f"n = {len(times[k])})")
    pq = statistics.quantiles(paired, n=4)
    print(f"  ERFT / plain: ratio of medians {med['erft'] / med['plain']:.3f}; "
          f"median of the {len(paired)} paired rounds "
          f"{statistics.median(paired):.3f} (quartiles {pq[0]:.3f} / {pq[2]:.3f})")
    for name, v in sorted(SECTIONS.items()):
        print(f"  {name}: median {statistics.median(v) * 1e3:.3f} ms per call "
              f"(mean {statistics.fmean(v) * 1e3:.3f}, n = {len(v)})")


if __name__ == "__main__":
    main()
