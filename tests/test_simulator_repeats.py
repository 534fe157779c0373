"""The error spread over repeated validations (simulator.repeats), against hand-computed values."""

import json

import pytest

from gptdist.studies.simulator.repeats import error_spread, markdown


def validation(path, errors: dict[str, float]):
    rows = [{"mode": "strong", "backend": b, "world": 1, "layout": "1", "error": 0.0} for b in errors]
    rows += [{"mode": "strong", "backend": b, "world": 2, "layout": "2", "error": e} for b, e in errors.items()]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_spread_per_run_and_overall(tmp_path):
    paths = [validation(tmp_path / "a.json", {"manual": -0.111, "fsdp": -0.197}),
             validation(tmp_path / "b.json", {"manual": 0.03, "fsdp": -0.05})]
    spread = error_spread(paths)
    manual = next(r for r in spread["rows"] if r["backend"] == "manual")
    assert manual["errors"] == [-0.111, 0.03] and manual["mean"] == pytest.approx(-0.0405)
    assert (manual["min"], manual["max"]) == (-0.111, 0.03)
    # the 1-rank rows (error 0 by construction) are left out: mean of 0.111, 0.197, 0.03, 0.05
    assert spread["mean_abs_error"] == pytest.approx(0.097) and spread["max_abs_error"] == pytest.approx(0.197)
    assert "-11.1%, +3.0%" in markdown(spread)
