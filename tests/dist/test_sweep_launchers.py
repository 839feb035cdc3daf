"""Sweeps: the joblib and SLURM launcher configs compose and instantiate, jobs are named from their
overrides, `ddp` is refused inside a multirun, and a real 2-job joblib sweep over p_img runs."""

import csv
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

import svi.config  # noqa: F401  (schemas and the svi.sweep_job resolver)
from svi.paths import CONF_DIR

LAUNCHERS = {"joblib": "JoblibLauncher", "submitit_slurm": "SlurmLauncher"}


def compose_config(name: str, overrides: list[str], return_hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def hydra_job():
    """Make a composed config the current Hydra job (what run_job does), and forget it afterwards."""

    def _set(cfg):
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _set
    HydraConfig.instance().cfg = None


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sweep_over_injection_probability_composes_with_each_launcher(launcher, hydra_job):
    for num, p in enumerate((0.5, 0.9)):  # the jobs of `-m injection.p_img=0.5,0.9`
        cfg = compose_config("train", ["experiment=svi_shot", "debug=tiny", "logger=csv", f"hydra/launcher={launcher}",
                                       f"injection.p_img={p}", "hydra.mode=MULTIRUN", f"hydra.job.num={num}"],
                             return_hydra_config=True)
        assert cfg.injection.p_img == p
        obj = instantiate(cfg.hydra.launcher)
        assert type(obj).__name__ == LAUNCHERS[launcher]
        hydra_job(cfg)
        assert cfg.hydra.sweep.subdir == f"{num}_injection.p_img={p}"  # one directory per job, named by its overrides
        assert cfg.logger.csv.version == f"injection.p_img={p}"
        HydraConfig.instance().cfg = None


def test_wandb_run_name_from_overrides_in_a_sweep_only(hydra_job):
    sweep = compose_config("train", ["experiment=svi_shot", "debug=tiny", "logger=wandb", "injection.p_img=0.5",
                                     "hydra.mode=MULTIRUN", "hydra.job.num=0"], return_hydra_config=True)
    hydra_job(sweep)
    assert sweep.logger.wandb.name == "svi_shot_tiny-none-seed0-injection.p_img=0.5"
    single = compose_config("train", ["experiment=svi_shot", "debug=tiny", "logger=wandb", "injection.p_img=0.5",
                                      "hydra.mode=RUN"], return_hydra_config=True)
    hydra_job(single)
    assert single.logger.wandb.name == "svi_shot_tiny-none-seed0"  # a single run keeps its plain name and paths
    assert OmegaConf.select(compose_config("train", ["logger=csv", "hydra.mode=RUN"], return_hydra_config=True),
                            "logger.csv.version") == ""


def test_ddp_relaunch_is_refused_inside_a_multirun(hydra_job, tmp_path):
    from svi.train import _check_launch

    cfg = compose_config("train", ["experiment=svi_shot", "debug=tiny", "trainer=ddp_cpu", "logger=none", "hydra.mode=MULTIRUN",
                                   "hydra.job.num=0", f"paths.output_dir={tmp_path}"], return_hydra_config=True)
    ddp = instantiate(cfg.trainer)
    single = instantiate(compose_config("train", ["experiment=svi_shot", "debug=tiny", "logger=none",
                                                  f"paths.output_dir={tmp_path}"]).trainer)
    _check_launch(ddp)  # no Hydra job: fine (tests, notebooks)
    hydra_job(cfg)
    with pytest.raises(ValueError, match="multirun"):
        _check_launch(ddp)
    _check_launch(single)  # one process: nothing is re-run


@pytest.mark.slow
def test_joblib_multirun_over_p_img_runs_two_jobs(tmp_path):
    cmd = [sys.executable, "-m", "svi.train", "-m", "hydra/launcher=joblib", "experiment=svi_shot", "debug=tiny",
           "trainer.max_steps=3", "memory.warmup_steps=1", "data.num_samples=2", "injection.p_img=0.5,0.9",
           f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two jobs share the cores
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for num, p in enumerate(("0.5", "0.9")):
        name = f"data.num_samples=2,injection.p_img={p},memory.warmup_steps=1,trainer.max_steps=3"
        job = tmp_path / f"{num}_{name}"
        assert OmegaConf.load(job / ".hydra" / "config.yaml").injection.p_img == float(p)
        rows = [r for r in csv.DictReader(open(job / "csv" / name / "metrics.csv")) if r.get("train/loss")]
        assert len(rows) == 3
        assert (job / "checkpoints" / "last.ckpt").exists()
