"""svi-train: compose the config, instantiate, fit, report. No math and no dispatch lives here.

    svi-train experiment=svi_shot debug=tiny                 # the method on a CPU in seconds
    svi-train experiment=svi_shot backbone=tiny data=synthetic trainer=cpu logger=csv trainer.max_steps=20
    svi-train experiment=svi_shot --cfg job                  # print the paper configuration
    svi-train -m experiment=svi_shot debug=tiny ablation=none,no_erft,no_img,no_noi,no_vid   # a sweep
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

import svi.config  # noqa: F401  (registers the typed schemas before composition)
from svi.paths import CONF_DIR

# The frozen encoders stay in eval mode on purpose (no dropout in the text encoder).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def _instantiate_dict(node: DictConfig | None) -> list:
    """A group holding several named `_target_` nodes (callbacks, loggers) -> list of objects."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Instantiate the module, the data and the trainer (with callbacks and loggers) of a run."""
    os.environ.setdefault("WANDB_MODE", "offline")  # W&B never phones home unless asked to
    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    _check_launch(trainer)
    return model, datamodule, trainer


def _check_launch(trainer: L.Trainer) -> None:
    """Lightning's `ddp` starts ranks 1..n-1 by re-running the command line (with this run's directory,
    so a single run works). A multirun job cannot be re-run that way: each child would run the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    relaunches = isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
    if relaunches and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError("trainer strategy `ddp` re-runs the command line for ranks 1..n-1, which a --multirun job "
                         "cannot do: sweep with hydra/launcher=submitit_slurm (SLURM starts the ranks) or torchrun, "
                         "or run the jobs one by one (docs/distributed.md)")


def train(cfg: DictConfig) -> dict:
    """Fit one run; returns the final callback metrics as floats."""
    if cfg.ckpt_path and not Path(cfg.ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist (resume needs a Lightning .ckpt)")
    model, datamodule, trainer = build(cfg)

    n_train = sum(p.numel() for p in model.trainable_parameters())
    n_total = sum(p.numel() for p in model.parameters())
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True),
                                "params/trainable": n_train, "params/total": n_total})
    rank_zero_info(f"[svi] {cfg.experiment_name} (ablation {cfg.ablation_name}): "
                   f"{n_train:,} trainable of {n_total:,} parameters; output {cfg.paths.output_dir}")
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
            import wandb

            wandb.finish()  # a multirun must never hang on an open W&B run
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    rank_zero_info(f"[svi] done: {trainer.global_step} steps, train/loss {metrics.get('train/loss', float('nan')):.4f}; "
                   f"checkpoints in {cfg.paths.output_dir}/checkpoints")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    missing = sorted(OmegaConf.missing_keys(cfg))  # `???` values, e.g. data.root of data=folders|cache
    if missing:
        raise SystemExit(f"svi-train: required setting(s) {', '.join(missing)} not given, e.g. data.root=DIR")
    return train(cfg).get("train/loss")


if __name__ == "__main__":
    main()
