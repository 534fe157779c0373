"""The error spread over repeated validations (simulator.repeats), against hand-computed values."""

import json

import pytest

from gptdist.errors import ConfigError
from gptdist.studies.simulator.repeats import error_spread, markdown


def validation(path, errors: dict[str, float]):
    rows = [{"mode": "strong", "backend": b, "world": 1, "layout": "1", "error": 0.0} for b in errors]
    # measured 100 ms at 2 ranks; predicted (1 + error) x 100
    rows += [{"mode": "strong", "backend": b, "world": 2, "layout": "2", "error": e, "measured_ms": 100.0,
              "predicted_ms": 100.0 * (1 + e)} for b, e in errors.items()]
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
    # per backend: manual 0.111 and 0.03, fsdp 0.197 and 0.05; every run here is in one node
    assert spread["by_backend"]["manual"] == pytest.approx({"predictions": 2, "mean_abs_error": 0.0705, "max_abs_error": 0.111})
    assert spread["by_backend"]["fsdp"] == pytest.approx({"predictions": 2, "mean_abs_error": 0.1235, "max_abs_error": 0.197})
    assert list(spread["by_link"]) == ["one node"] and spread["by_link"]["one node"]["predictions"] == 4
    assert "- fsdp: mean |error| 12.3%, largest 19.7% (2 predictions)" in markdown(spread)


def test_spread_per_link_splits_one_node_from_across_nodes(tmp_path):
    rows = [{"mode": "strong", "backend": "ddp", "world": w, "layout": l, "error": e}
            for w, l, e in ((1, "1", -0.06), (1, "1", 0.02), (2, "2", 0.1), (2, "2x1", -0.02), (4, "2x2", 0.04))]
    (tmp_path / "v.json").write_text(json.dumps({"rows": rows}))
    spread = error_spread([tmp_path / "v.json"])
    assert spread["by_link"]["one node"] == pytest.approx({"predictions": 1, "mean_abs_error": 0.1, "max_abs_error": 0.1})
    assert spread["by_link"]["across nodes"] == pytest.approx({"predictions": 2, "mean_abs_error": 0.03, "max_abs_error": 0.04})
    # the 1-rank rows are the control, apart from everything above
    assert spread["control"] == pytest.approx({"predictions": 2, "mean_abs_error": 0.04, "max_abs_error": 0.06})
    assert spread["mean_abs_error"] == pytest.approx((0.1 + 0.02 + 0.04) / 3)
    assert "- control, the 1-rank runs" in markdown(spread) and "mean |error| 4.0%, largest 6.0% (2 predictions)" in markdown(spread)


def test_cli_writes_spread_and_plot(tmp_path):
    """`simulate.py repeats`: the spread as JSON and markdown, and the predicted-vs-measured plot per mode."""
    from launchers import python

    paths = [validation(tmp_path / "a.json", {"manual": -0.1, "ddp": 0.05}),
             validation(tmp_path / "b.json", {"manual": 0.02, "ddp": 0.07})]
    python(["launch/simulate.py", "repeats", *map(str, paths), "--out", str(tmp_path / "out")])
    spread = json.loads((tmp_path / "out" / "repeats.json").read_text())
    manual = next(r for r in spread["rows"] if r["backend"] == "manual")
    assert manual["measured_ms"] == [100.0, 100.0] and manual["predicted_ms"] == pytest.approx([90.0, 102.0])
    assert spread["mean_abs_error"] == pytest.approx((0.1 + 0.05 + 0.02 + 0.07) / 4)
    assert "| strong | ddp | 2 | +5.0%, +7.0% | +6.0% |" in (tmp_path / "out" / "repeats.md").read_text()
    assert (tmp_path / "out" / "repeats_strong.png").stat().st_size > 1000


def test_a_repeat_in_parts_counts_as_one_repeat(tmp_path):
    """A repeat validated run by run (each run from the inputs measured around it): its parts' rows together are
    that repeat; two parts predicting the same run are refused."""
    from launchers import python

    def part(name, rows):
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return tmp_path / name

    row = lambda l, e: {"mode": "weak", "backend": "fsdp", "world": 2, "layout": l, "error": e, "measured_ms": 100.0,
                        "predicted_ms": 100.0 * (1 + e)}
    one = [part("1a.json", [row("2", 0.04)]), part("1b.json", [row("2x1", -0.02)]),
           part("1c.json", [{**row("1", -0.03), "world": 1}])]
    two = [part("2a.json", [row("2", 0.06)]), part("2b.json", [row("2x1", 0.0)])]
    spread = error_spread([one, two])
    assert spread["repeats"] == 2
    assert {r["layout"]: r["errors"] for r in spread["rows"]} == {"2": [0.04, 0.06], "2x1": [-0.02, 0.0]}
    assert spread["control"] == pytest.approx({"predictions": 1, "mean_abs_error": 0.03, "max_abs_error": 0.03})
    with pytest.raises(ConfigError, match=r"weak/fsdp/2 is predicted in both .*1a.json and .*2a.json"):
        error_spread([[one[0], two[0]]])
    # the command line: a repeat's parts comma-separated
    python(["launch/simulate.py", "repeats", ",".join(map(str, one)), ",".join(map(str, two)), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "repeats.json").read_text())["rows"] == spread["rows"]
