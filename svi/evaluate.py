"""svi-evaluate: drift and quality metrics of generated long videos. Only wiring lives here.

    svi-evaluate run=outputs/cat_shot                         # metrics.json, metrics_per_segment.csv, plots/
    svi-evaluate run=DIR gt=toy/toyworld/scenes.jsonl gt_index=0   # + PSNR/SSIM vs the exact toy-world future
    svi-evaluate runs='outputs/ablation/*/generate'           # every run, plus one curve per run
    svi-evaluate run=DIR metrics.extractors.dino=weights/dino-vitb16   # + VBench subject consistency

The metrics and the evaluation of runs live in `svi/metrics/` (`svi/metrics/runs.py`; docs/evaluate.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import svi.config  # noqa: F401  (registers the typed schemas before composition)
from svi.metrics import METRICS, build_extractors, compare_runs, evaluate_run, metrics_config
from svi.paths import CONF_DIR

log = logging.getLogger("svi.evaluate")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _log(cfg: DictConfig, data: dict) -> None:
    """Per-segment curves (step = segment) and the summary to the configured loggers (job_type=evaluate)."""
    os.environ.setdefault("WANDB_MODE", "offline")  # as svi-train: W&B never phones home unless asked to
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if isinstance(v, DictConfig)
               and "_target_" in v]
    if not loggers:
        return
    try:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            names = [n for n, m in data["metrics"].items() if m.get("available")]
            for s in range(data["segments"]["count"]):
                row = {f"eval/segment/{n}": data["metrics"][n]["per_segment"][s] for n in names}
                lg.log_metrics({k: v for k, v in row.items() if v is not None}, step=s)
            lg.log_metrics({f"eval/{k}": v for k, v in data["summary"].items() if v is not None},
                           step=data["segments"]["count"])
            lg.finalize("success")
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate `run` (one directory) or `runs` (a glob, plus comparison plots); returns {run: metrics.json}."""
    if bool(cfg.run) == bool(cfg.runs):
        raise ValueError("give exactly one of run=DIR (one generation) or runs='GLOB' (several, compared)")
    metrics = metrics_config(cfg.metrics)
    stack = instantiate(cfg.backbone).to(_device(cfg.device)).eval() if cfg.get("backbone") else None
    extractors = build_extractors(metrics, metrics.include or list(METRICS),
                                  device=str(_device(cfg.device)))
    gt_readers = {suffix: instantiate(node) for suffix, node in (cfg.get("gt_readers") or {}).items()}
    if cfg.run:
        data = evaluate_run(cfg.run, metrics, cfg.gt, cfg.gt_index, stack, extractors, gt_readers)
        _log(cfg, data)
        return {str(cfg.run): data}
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() \
        else Path(".")
    results = compare_runs(cfg.runs, metrics, out, cfg.gt, cfg.gt_index, stack, extractors, reuse=cfg.reuse,
                           gt_readers=gt_readers)
    log.info(f"[svi] {len(results)} runs evaluated; comparison plots in {out / 'plots'}")
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
