"""Drift summaries: sign conventions, FramePack start-end contrast, slope per minute, SVI's length table."""

import numpy as np
import pytest

from svi.metrics import segments_from_counts, summarise
from svi.metrics.drift import length_table

FPS = 16


def test_first_last_is_positive_when_worse_for_both_directions():
    segs = segments_from_counts([16] * 4)
    psnr = summarise([30.0, 28.0, 26.0, 24.0], segs, FPS, higher_is_better=True)
    assert psnr["first_last"] == 6.0 and psnr["first_last_pct"] == pytest.approx(20.0)
    fd = summarise([0.0, 1.0, 2.0, 3.0], segs, FPS, higher_is_better=False)
    assert fd["first_last"] == 3.0 and fd["first_last_pct"] is None  # relative to 0: undefined
    better = summarise([24.0, 30.0], segs[:2], FPS, higher_is_better=True)
    assert better["first_last"] == -6.0


def test_slope_per_minute_and_start_end_contrast():
    segs = segments_from_counts([16] * 60)  # 60 one-second segments
    values = 10 - 0.5 * np.arange(60)  # loses 0.5 per second = 30 per minute
    s = summarise(values, segs, FPS, higher_is_better=True)
    assert s["slope_per_min"] == pytest.approx(-30.0)
    # Without a per-frame series: segments whose centre lies in the first / last 15 % (9 of 60 each).
    head, tail = values[:9].mean(), values[-9:].mean()
    assert s["start_end"] == pytest.approx(abs(head - tail))
    per_frame = np.repeat(values, 16)
    n = round(0.15 * 960)
    s = summarise(values, segs, FPS, higher_is_better=True, per_frame=per_frame)
    assert s["start_end"] == pytest.approx(abs(per_frame[:n].mean() - per_frame[-n:].mean()))


def test_length_table_at_50s_and_250s_or_not_applicable():
    segs = segments_from_counts([80] * 50)  # 50 clips of 5 s: 250 s
    values = np.linspace(0.98, 0.90, 50)
    t = length_table(values, segs, FPS, [50, 250])
    assert t["at_50s"] == pytest.approx(values[:10].mean())
    assert t["at_250s"] == pytest.approx(values.mean())
    assert t["delta"] == pytest.approx(values.mean() - values[:10].mean())
    assert t["last_at_250s"] == values[-1] and t["last_at_50s"] == values[9]
    short = length_table(values[:12], segs[:12], FPS, [50, 250])
    assert short["at_50s"] == pytest.approx(values[:10].mean())
    assert short["at_250s"] is None and short["delta"] is None
    assert "250s" in short["not_applicable"][0]
