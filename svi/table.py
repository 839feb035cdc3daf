"""svi-table: a paper-style table from run directories. Only wiring lives here.

    svi-table runs='outputs/experiments/ablation_table4/*'           # markdown on stdout; .md/.csv/.tex beside
    svi-table runs='outputs/exp/*/generate' columns=[subject_consistency,background_consistency,aesthetic]

Rows are (experiment, label) with seeds averaged (mean ± std); the label is the first of `label_keys`
found in the run's (or an enclosing run's) `.hydra/config.yaml`. See svi/metrics/table.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from svi.metrics.table import build_table, find_runs, read_run, write_table
from svi.paths import CONF_DIR

log = logging.getLogger("svi.table")


def table(cfg: DictConfig) -> str:
    """Build, write and return the markdown table of the runs matching `cfg.runs`."""
    dirs = find_runs(cfg.runs)
    if not dirs:
        raise FileNotFoundError(f"runs={cfg.runs} matches no run directory (one with metrics.json or csv/**/metrics.csv)")
    records = [read_run(d, list(cfg.label_keys)) for d in dirs]
    columns = list(cfg.columns) if cfg.columns else None
    result = build_table(records, columns, list(cfg.row_order) if cfg.row_order else None, cfg.precision)
    out = Path(cfg.out) if cfg.out else Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    if len(dirs) == 1 and not cfg.out:
        out = dirs[0].resolve().parent
    paths = write_table(result, out, cfg.name)
    text = result.markdown()
    print(text, end="")
    log.info(f"[svi] {len(dirs)} runs, {len(result.rows)} rows -> {', '.join(str(p) for p in paths.values())}")
    return text


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="table")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "runs"):
        raise SystemExit("svi-table: runs='GLOB' is required (run directories to tabulate)")
    table(cfg)


if __name__ == "__main__":
    main()
