"""Efficiency vs link rate (gptdist/studies/scaling/link_sweep.py): one point per study, read from its rows."""

import json

from gptdist.studies.scaling.link_sweep import markdown, sweep_points


def study(path, step_2x1: float, efficiency: float):
    row = lambda layout, step, eff: {"mode": "strong", "backend": "manual", "layout": layout, "step_ms": step,  # noqa: E731
                                     "efficiency": eff, "comm_ms": 9.0, "parts": {"exposed": 5.0, "wait": 1.0}}
    path.write_text(json.dumps({"rows": [row("1", 1000.0, 1.0), row("2x1", step_2x1, efficiency)]}))
    return path


def test_points_by_setting_then_rate(tmp_path):
    points = sweep_points({"4gbit_overlap_true": study(tmp_path / "a.json", 625.0, 0.8),
                           "250mbit_overlap_true": study(tmp_path / "b.json", 2500.0, 0.2),
                           "1gbit_overlap_false": study(tmp_path / "c.json", 1000.0, 0.5)}, "2x1")
    assert [(p["rate_gbit"], p["setting"], p["step_ms"], p["exposed_ms"]) for p in points] == [
        (1.0, "overlap_false", 1000.0, 6.0), (0.25, "overlap_true", 2500.0, 6.0), (4.0, "overlap_true", 625.0, 6.0)]
    assert "| 0.25 Gbit/s | overlap_true | 2500.0 | 20% |" in markdown(points)
