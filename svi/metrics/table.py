"""Paper-style tables from run directories: one row per (experiment, label), seeds averaged.

A run directory is any folder a verb wrote: a training run (`.hydra/config.yaml` + `csv/**/metrics.csv`),
a generation evaluated by svi-evaluate (`metrics.json`), or a generation inside a training run's folder.
What a run *is* comes from the nearest `.hydra/config.yaml` at or above it that holds the key (so
`<train job>/generate/` inherits `ablation_name` from its training job); what it *measured* comes from
its `metrics.json` summary, else the last logged value of each column of its CSV log.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

import svi.config  # noqa: F401  (registers the resolvers the saved configs use)

MISSING = "–"
_ABSENT = object()


@dataclass
class RunRecord:
    path: Path
    experiment: str
    label: str
    seed: Any
    values: dict[str, float] = field(default_factory=dict)


def _configs_above(path: Path) -> list[DictConfig]:
    """`.hydra/config.yaml` contents from `path` upwards, nearest first."""
    return [OmegaConf.load(f) for folder in [path, *path.parents] if (f := folder / ".hydra" / "config.yaml").is_file()]


def _lookup(configs: list[DictConfig], dotted: str):
    """The first config holding `dotted`, resolved (`${condition.name}_${sampler.name}` -> `shot_svi`);
    interpolations that need a live Hydra run (`${hydra:...}`) resolve to None."""
    for cfg in configs:
        if OmegaConf.select(cfg, dotted, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT:
            continue
        value = OmegaConf.select(cfg, dotted, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return None


def _csv_values(path: Path) -> dict[str, float]:
    """Last finite value of every numeric column of the run's CSV log(s) (Lightning's CSVLogger)."""
    files = sorted(path.glob("csv/**/metrics.csv")) or sorted(path.glob("metrics.csv"))
    values: dict[str, float] = {}
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    try:
                        x = float(v)
                    except (TypeError, ValueError):
                        continue
                    if math.isfinite(x):
                        values[k] = x
    return values


def read_run(path: str | Path, label_keys: Sequence[str] = ("ablation_name", "sampler.name")) -> RunRecord:
    path = Path(path)
    configs = _configs_above(path)
    label = next((str(v) for k in label_keys if (v := _lookup(configs, k)) is not None), path.name)
    values = _csv_values(path)
    metrics_json = path / "metrics.json"
    if metrics_json.is_file():
        summary = json.loads(metrics_json.read_text()).get("summary", {})
        values.update({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    return RunRecord(path, str(_lookup(configs, "experiment_name") or MISSING), label,
                     _lookup(configs, "seed"), values)


def find_runs(pattern: str) -> list[Path]:
    """Directories matching the glob that hold something to tabulate."""
    dirs = sorted({Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_dir()})
    return [d for d in dirs if (d / "metrics.json").is_file() or any(d.glob("csv/**/metrics.csv"))
            or (d / "metrics.csv").is_file()]


def default_columns(records: Sequence[RunRecord]) -> list[str]:
    """Every evaluation metric (bare names from metrics.json), the final training loss, the rollout numbers."""
    from svi.metrics.suite import METRICS

    keys = {k for r in records for k in r.values}
    cols = [k for k in METRICS if k in keys]
    cols += [k for k in ("train/loss",) if k in keys]
    cols += sorted(k for k in keys if k.startswith("rollout/") and k.count("/") == 1 and k != "rollout/step"
                   and k != "rollout/seconds")
    return cols


@dataclass
class Table:
    columns: list[str]
    rows: list[dict]  # {"experiment", "label", "n", "seeds", col: (mean, std) | None}
    precision: int = 3

    def _cell(self, v, latex: bool = False) -> str:
        if v is None:
            return "--" if latex else MISSING
        mean, std, n = v
        text = f"{mean:.{self.precision}f}"
        if n > 1:
            text += (r" $\pm$ " if latex else " ± ") + f"{std:.{self.precision}f}"
        return text

    def markdown(self) -> str:
        head = ["experiment", "run", "seeds", *self.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(self.columns)) + "|"]
        for r in self.rows:
            cells = [r["experiment"], r["label"], r["seeds"], *[self._cell(r[c]) for c in self.columns]]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        esc = lambda s: str(s).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")  # noqa: E731
        lines = [r"\begin{tabular}{ll" + "r" * len(self.columns) + "}", r"\toprule",
                 " & ".join(["experiment", "run", *map(esc, self.columns)]) + r" \\", r"\midrule"]
        for r in self.rows:
            lines.append(" & ".join([esc(r["experiment"]), esc(r["label"]),
                                     *[self._cell(r[c], latex=True) for c in self.columns]]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["experiment", "run", "n", "seeds", *[x for c in self.columns for x in (c, f"{c} std")]])
            for r in self.rows:
                cells = []
                for c in self.columns:
                    cells += ["", ""] if r[c] is None else [f"{r[c][0]:.6g}", f"{r[c][1]:.6g}"]
                w.writerow([r["experiment"], r["label"], r["n"], r["seeds"], *cells])


def build_table(records: Sequence[RunRecord], columns: Sequence[str] | None = None,
                row_order: Sequence[str] | None = None, precision: int = 3) -> Table:
    """Group runs by (experiment, label); each cell is (mean, std, n) over the group's runs that have it."""
    columns = list(columns) if columns else default_columns(records)
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.experiment, r.label), []).append(r)
    order = {k: i for i, k in enumerate(row_order or [])}
    keys = sorted(groups, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    rows = []
    for key in keys:
        runs = groups[key]
        row = {"experiment": key[0], "label": key[1], "n": len(runs),
               "seeds": ",".join(sorted({str(r.seed) for r in runs}))}
        for c in columns:
            xs = [r.values[c] for r in runs if c in r.values]
            if not xs:
                row[c] = None
                continue
            mean = sum(xs) / len(xs)
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            row[c] = (mean, std, len(xs))
        rows.append(row)
    return Table(columns, rows, precision)


def write_table(table: Table, out_dir: str | Path, name: str = "table") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{name}.md", "csv": out / f"{name}.csv", "latex": out / f"{name}.tex"}
    paths["markdown"].write_text(table.markdown())
    table.write_csv(paths["csv"])
    paths["latex"].write_text(table.latex())
    return paths
