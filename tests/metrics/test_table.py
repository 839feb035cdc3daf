"""svi-table's aggregation on hand-made run directories (configs + csv logs + metrics.json)."""

import json

import pytest
import yaml

from svi.metrics.table import build_table, find_runs, read_run, write_table


def fake_run(root, name, ablation, seed, loss=None, summary=None, experiment="svi_shot_tiny"):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"experiment_name": experiment, "ablation_name": ablation, "seed": seed}))
    if loss is not None:
        (d / "csv" / "job").mkdir(parents=True)
        (d / "csv" / "job" / "metrics.csv").write_text(
            "step,train/loss,rollout/psnr\n0,9.0,\n1,%s,\n1,,12.5\n" % loss)
    if summary is not None:
        (d / "metrics.json").write_text(json.dumps({"summary": summary}))
    return d


def test_rows_group_seeds_and_read_csv_and_metrics_json(tmp_path):
    fake_run(tmp_path, "0_full_s0", "none", 0, loss=1.0)
    fake_run(tmp_path, "1_full_s1", "none", 1, loss=3.0)
    fake_run(tmp_path, "2_noimg", "no_img", 0, loss=2.0)
    gen = fake_run(tmp_path, "3_base", "none", 0, summary={"psnr": 20.0, "psnr/first_last": 1.5})
    (gen / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "shot_base",
                                                                "sampler": {"name": "base"}, "seed": 0}))
    (tmp_path / "not_a_run").mkdir()
    runs = find_runs(str(tmp_path / "*"))
    assert [r.name for r in runs] == ["0_full_s0", "1_full_s1", "2_noimg", "3_base"]
    records = [read_run(r) for r in runs]
    assert records[0].values["train/loss"] == 1.0 and records[0].values["rollout/psnr"] == 12.5
    assert records[3].label == "base" and records[3].values["psnr"] == 20.0
    table = build_table(records, row_order=["base", "none", "no_img"], precision=2)
    assert table.columns == ["psnr", "train/loss", "rollout/psnr"]
    shot = [r for r in table.rows if r["experiment"] == "svi_shot_tiny"]
    assert [r["label"] for r in shot] == ["none", "no_img"]
    assert shot[0]["train/loss"][:2] == pytest.approx((2.0, 2 ** 0.5)) and shot[0]["n"] == 2
    md = table.markdown()
    assert "| svi_shot_tiny | none | 0,1 | – | 2.00 ± 1.41 | 12.50 ± 0.00 |" in md
    paths = write_table(table, tmp_path, "ablation")
    assert paths["csv"].read_text().splitlines()[0].startswith("experiment,run,n,seeds,psnr,psnr std")
    assert r"\toprule" in paths["latex"].read_text() and r"no\_img" in paths["latex"].read_text()


def test_a_generation_inside_a_training_run_inherits_its_ablation(tmp_path):
    job = fake_run(tmp_path, "job", "no_vid", 2, loss=1.0)
    gen = job / "generate"
    (gen / ".hydra").mkdir(parents=True)
    (gen / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "shot_svi",
                                                               "sampler": {"name": "svi"}}))
    (gen / "metrics.json").write_text(json.dumps({"summary": {"fd": 0.1}}))
    rec = read_run(gen)
    assert rec.label == "no_vid" and rec.seed == 2 and rec.experiment == "shot_svi" and rec.values == {"fd": 0.1}
