"""svi-evaluate and svi-table end to end: the command contract, comparison plots, a W&B-offline + CSV
ablation sweep tabulated by svi-table, the rollout monitor's logs, and the drift notebook."""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from svi.evaluate import evaluate
from tests.conftest import compose_config
from tests.metrics.conftest import make_generation

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}


def test_contract_svi_evaluate_writes_metrics_csv_and_plots(tmp_path):
    run, scenes = make_generation(tmp_path / "stable")
    cmd = [sys.executable, "-m", "svi.evaluate", f"run={run}", f"gt={scenes}", f"hydra.run.dir={run.parent / 'ev'}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV)
    data = json.loads((run / "metrics.json").read_text())
    assert data["segments"]["frames"] == [16, 16, 16, 17] and data["segments"]["source"] == "clips"
    assert data["segments"]["seam_frames"] == [16, 32, 48]
    m = data["metrics"]
    assert m["psnr"]["video"] > 30 and m["ssim"]["video"] > 0.9  # the true future, through H.264
    assert len(m["psnr"]["per_segment"]) == 4 and m["psnr"]["drift"]["at_50s"] is None
    assert "250s" in m["psnr"]["drift"]["not_applicable"][1]
    assert m["subject_consistency"] == {"available": False, "reason": m["subject_consistency"]["reason"]}
    assert "metrics.extractors.dino" in m["subject_consistency"]["reason"]
    assert not m["latent_consistency"]["available"]
    rows = list(csv.DictReader(open(run / "metrics_per_segment.csv")))
    assert [r["segment"] for r in rows] == ["0", "1", "2", "3"] and float(rows[0]["psnr"]) > 30
    assert len(list(csv.DictReader(open(run / "metrics_per_frame.csv")))) == 65
    assert {"psnr.png", "fd.png", "seam_ratio.png"} <= {p.name for p in (run / "plots").iterdir()}


def test_drift_is_detected_and_runs_are_compared(tmp_path):
    stable, scenes = make_generation(tmp_path / "a_stable")
    drifting, _ = make_generation(tmp_path / "b_drifting", drift=0.8)
    cfg = compose_config("evaluate", [f"runs={tmp_path}/*_*", f"gt={scenes}", f"out={tmp_path / 'cmp'}",
                                      "metrics=toy", "metrics.include=[psnr,ssim,colour_de,colour_hist,fd,sharpness,hf_energy]"])
    results = evaluate(cfg)
    s, d = (results[str(p)]["metrics"] for p in (stable, drifting))
    for name in ("psnr", "ssim"):  # worse against the truth, and worse at the end than at the start
        assert d[name]["video"] < s[name]["video"] and d[name]["drift"]["first_last"] > 1e-3
    for name in ("colour_de", "fd", "colour_hist"):
        assert d[name]["drift"]["first_last"] > 5 * max(s[name]["drift"]["first_last"], 1e-6)
    assert d["sharpness"]["drift"]["first_last"] > 0 and d["hf_energy"]["drift"]["first_last"] > 0
    assert {"psnr.png", "fd.png"} <= {p.name for p in (tmp_path / "cmp" / "plots").iterdir()}
    assert json.loads((tmp_path / "cmp" / "runs.json").read_text()) == {"a_stable": str(stable),
                                                                         "b_drifting": str(drifting)}


def test_latent_metrics_through_a_backbone_vae(tmp_path):
    run, _ = make_generation(tmp_path / "stable")
    cfg = compose_config("evaluate", [f"run={run}", "backbone=tiny", "device=cpu",
                                      "metrics.include=[latent_consistency,latent_anchor]", "metrics.plots=false"])
    data = evaluate(cfg)[str(run)]
    assert 0 < data["metrics"]["latent_consistency"]["video"] <= 1
    assert len(data["metrics"]["latent_anchor"]["per_segment"]) == 4


def test_compare_runs_reuses_metrics_json_and_labels_runs_by_their_shortest_distinct_tail(tmp_path):
    from svi.metrics import compare_runs, metrics_config

    for ablation in ("full", "no_img"):
        run = tmp_path / ablation / "seed0" / "generate"
        run.mkdir(parents=True)
        (run / "video.mp4").write_bytes(b"")  # never decoded: reuse=True keeps the existing metrics.json
        (run / "metrics.json").write_text(json.dumps({"run": ablation}))
    (tmp_path / "notes").mkdir()
    out = tmp_path / "new" / "compare"
    results = compare_runs(str(tmp_path / "*" / "seed0" / "generate"), metrics_config({"plots": False}), out,
                           reuse=True)
    assert [r["run"] for r in results.values()] == ["full", "no_img"]
    assert json.loads((out / "runs.json").read_text()) == {
        "full/seed0/generate": str(tmp_path / "full" / "seed0" / "generate"),
        "no_img/seed0/generate": str(tmp_path / "no_img" / "seed0" / "generate")}
    with pytest.raises(FileNotFoundError, match="matches no generation directory"):
        compare_runs(str(tmp_path / "notes*"), metrics_config({"plots": False}), out)


def test_exactly_one_of_run_and_runs():
    with pytest.raises(ValueError, match="exactly one"):
        evaluate(compose_config("evaluate", []))


# ------------------------------------------------------------------------------------------------
# A tiny ablation sweep with CSV + W&B offline, the rollout monitor, svi-table, the notebook
# ------------------------------------------------------------------------------------------------

def wandb_records(run_file: Path):
    """Records of an offline `.wandb` file (LevelDB-log framing: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = run_file.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        space = 32768 - pos % 32768
        if space < 7:
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += space - 7
            continue
        chunk, pos = data[pos:pos + length], pos + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf + chunk if kind == 4 else chunk)
            buf = b""
            yield record
        else:
            buf = chunk if kind == 2 else buf + chunk


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "svi.train", "-m", "experiment=svi_shot", "debug=tiny", "ablation=none,no_erft",
           "trainer.max_steps=4", "logger=[csv,wandb]", "callbacks.rollout.every_n_steps=4",
           "callbacks.rollout.height=32", "callbacks.rollout.width=32",  # a quarter of the VAE work
           "callbacks.model_checkpoint.every_n_train_steps=1000", f"hydra.sweep.dir={root}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV, timeout=540)
    return root


@pytest.mark.slow
def test_sweep_with_rollout_monitor_logs_csv_and_wandb_offline_and_svi_table_builds_the_table(sweep, tmp_path):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    for job, ablation in zip(jobs, ["none", "no_erft"]):
        rows = [r for f in job.glob("csv/**/metrics.csv") for r in csv.DictReader(open(f))]
        rollout = [r for r in rows if r.get("rollout/psnr")]
        assert len(rollout) == 1 and float(rollout[0]["rollout/step"]) == 4  # the rollout monitor, at step 4
        for key in ("rollout/psnr", "rollout/psnr/first_last", "rollout/fd", "rollout/seam_ratio"):
            assert rollout[0][key] != ""
        assert (job / "rollout" / "step000004.mp4").is_file()
        # The W&B offline run: group = experiment, job_type = verb, the ablation as a tag, config, metrics.
        run_files = glob.glob(str(job / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert len(run_files) == 1
        records = list(wandb_records(Path(run_files[0])))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.run_group, run.job_type) == ("svi_shot_tiny", "train")
        assert f"ablation:{ablation}" in run.tags
        config = {i.key: i.value_json for r in records if r.WhichOneof("record_type") == "config"
                  for i in r.config.update}
        assert json.loads(config["ablation_name"]) == ablation and "injection" in config
        history = {i.key or "/".join(i.nested_key) for r in records if r.WhichOneof("record_type") == "history"
                   for i in r.history.item}
        assert {"train/loss", "rollout/psnr", "rollout/fd/first_last"} <= history
        assert any(k.startswith("rollout/video/") for k in history)  # a wandb.Video of the rollout
        assert glob.glob(str(job / "wandb" / "offline-run-*" / "files" / "media" / "videos" / "rollout" / "*.mp4"))

    out = subprocess.run([sys.executable, "-m", "svi.table", f"runs={sweep}/*", f"hydra.run.dir={tmp_path / 't'}"],
                         check=True, capture_output=True, text=True, env=ENV).stdout
    lines = [line for line in out.splitlines() if line.startswith("| svi_shot_tiny")]
    assert [line.split(" | ")[1] for line in lines] == ["none", "no_erft"]  # row_order from conf/table.yaml
    assert "train/loss" in out and "rollout/psnr" in out
    assert all((sweep / f"table.{ext}").is_file() for ext in ("md", "csv", "tex"))


@pytest.mark.slow
def test_drift_notebook_runs_top_to_bottom_on_toy_outputs(sweep, tmp_path, monkeypatch):
    for name, drift in (("stable", 0.0), ("drifting", 0.8)):
        run, scenes = make_generation(tmp_path / "eval" / name, drift=drift)
        evaluate(compose_config("evaluate", [f"run={run}", f"gt={scenes}", "metrics.plots=false"]))
    monkeypatch.setenv("SVI_EVAL_RUNS", str(tmp_path / "eval" / "*"))
    monkeypatch.setenv("SVI_TRAIN_RUNS", str(sweep / "*"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "drift_curves.ipynb"
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    try:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    except ImportError:  # no Jupyter kernel machinery: run the code cells in order in this process
        import contextlib
        import io

        buf, scope = io.StringIO(), {}
        with contextlib.redirect_stdout(buf):
            for cell in nb.cells:
                if cell.cell_type == "code":
                    exec(compile(cell.source, str(notebook), "exec"), scope)  # noqa: S102
        text = buf.getvalue()
    assert "2 evaluated run(s)" in text and "2 training run(s)" in text
    assert "| drifting | psnr |" in text and "| svi_shot_tiny | none |" in text
