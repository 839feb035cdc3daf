"""The sampler comparison's machinery on a short run: rows, paired videos, metrics, table, memory rows."""

import json

import numpy as np
import pytest

from svi.toy.samplers import ROWS, ComparisonConfig, format_table, make_sampler, run


def test_rows_build_the_samplers_they_name():
    assert make_sampler(*ROWS["miga_none"][::2], steps=12, shift=3.0).group == 1
    tta = make_sampler(*ROWS["miga_tta"][::2], steps=12, shift=3.0)
    assert (tta.group, tta.memory, tta.reflection, tta.stage2_steps) == (2, 0, False, 3)
    assert make_sampler(*ROWS["fifo"][::2], steps=12, shift=3.0).partitions == 2
    with pytest.raises(ValueError, match="window x partitions"):
        make_sampler("fifo", {}, steps=10, shift=3.0)


@pytest.mark.slow
def test_a_short_comparison_writes_its_table(tmp_path):
    cfg = ComparisonConfig(out=str(tmp_path / "out"), seeds=[0, 1], num_videos=2, num_clips=4,
                           rows=["base", "fifo", "miga"], memory_lengths=[1], memory_rows=["fifo"])
    summary = run(cfg)
    table = summary["table"]
    assert set(table) == {"base", "fifo", "miga"}
    for row in table.values():
        assert np.isfinite(row["drift"]) and 0 < row["flicker"] <= 1
        assert 0 < row["motion_smoothness_blend"] <= 1
        assert row["s_per_frame"] > 0 and row["subject_consistency"] is None  # no DINO weights here
    assert "fifo - base" in summary["paired"] and summary["paired"]["fifo - base"]["drift"]["n"] == 4  # 2 seeds
    assert "subject_consistency" in summary["unavailable"]
    (memory,) = summary["memory"]
    assert memory["row"] == "fifo" and memory["frames"] == 2 + 4 * 3 and memory["carry_kib"] > 0
    saved = json.loads((tmp_path / "out/summary.json").read_text())
    assert saved["table"]["fifo"]["drift"] == pytest.approx(table["fifo"]["drift"])
    text = format_table(summary)
    assert "| fifo |" in text and "subject_consistency: unavailable" in text
    assert (tmp_path / "out/videos/video0.mp4").exists()
