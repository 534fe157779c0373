"""The scaling study: plan, per-step combination over ranks, efficiency, gap attribution, end to end."""

import json
import shutil

import pytest

from gptdist.errors import ConfigError
from gptdist.studies.scaling import (PARTS, analyse, attribute_gap, efficiency, parse_world_sizes, per_step_values,
                             plan_runs, summarize_steps)
from launchers import launcher_main, python
from synthetic import make_token_dataset


def test_parse_world_sizes_and_plan():
    layouts = parse_world_sizes("1,2,4,2x4")
    assert [(l.nodes, l.per_node, l.world, l.name) for l in layouts] == [
        (1, 1, 1, "1"), (1, 2, 2, "2"), (1, 4, 4, "4"), (2, 4, 8, "2x4")]
    with pytest.raises(ConfigError, match="must include 1"):
        parse_world_sizes("2,4")
    with pytest.raises(ConfigError, match="expected N or NODESxN"):
        parse_world_sizes("1,two")
    specs = plan_runs(["manual"], parse_world_sizes("1,2,4"), ["strong", "weak"], per_rank_batch=2, seq_len=64)
    # strong: global batch 8 split as 8, 4, 2; weak: 2 per rank. N=4 is the same job in both modes: run once.
    assert [(s.world, s.batch_size, s.modes) for s in specs] == [
        (1, 8, ("strong",)), (1, 2, ("weak",)), (2, 4, ("strong",)), (2, 2, ("weak",)), (4, 2, ("strong", "weak"))]
    assert specs[2].global_batch_tokens == 8 * 64 and specs[3].global_batch_tokens == 4 * 64
    with pytest.raises(ConfigError, match="not divisible"):
        plan_runs(["ddp"], parse_world_sizes("1,3,4"), ["strong"], 1, 8)


def test_efficiency_on_known_inputs():
    # strong: T1 = 100 ms; 4 ranks take 30 ms -> speed-up 3.33, efficiency 100 / (4 * 30) = 0.8333
    e = efficiency("strong", 100.0, 30.0, 4)
    assert e == pytest.approx({"speedup": 100 / 30, "efficiency": 100 / 120, "ideal_ms": 25.0})
    # weak: same per-rank work; 4 ranks take 125 ms -> 80% efficient, 3.2x the throughput
    e = efficiency("weak", 100.0, 125.0, 4)
    assert e == pytest.approx({"speedup": 3.2, "efficiency": 0.8, "ideal_ms": 100.0})
    with pytest.raises(ConfigError):
        efficiency("diagonal", 1.0, 1.0, 1)


def test_gap_attribution_sums_to_gap():
    base = {"compute": 90.0, "exposed": 0.0, "wait": 0.0, "data": 2.0, "other": 8.0}  # T1 = 100
    run = {"compute": 26.0, "exposed": 6.0, "wait": 1.5, "data": 0.5, "other": 2.0}  # T4 = 36
    gap = attribute_gap("strong", base, run, 4)
    assert gap == pytest.approx({"compute": 26 - 22.5, "exposed": 6.0, "wait": 1.5, "data": 0.0, "other": 0.0})
    assert sum(gap.values()) == pytest.approx(36.0 - 100.0 / 4)
    weak = attribute_gap("weak", base, {**base, "exposed": 10.0, "compute": 95.0}, 4)
    assert weak == pytest.approx({"compute": 5.0, "exposed": 10.0, "wait": 0.0, "data": 0.0, "other": 0.0})


def row(step, step_ms, compute, exposed, data=0.0, comm=None, mem=100.0):
    return {"step": step, "step_ms": step_ms, "time/compute_ms": compute, "comm/exposed_ms": exposed,
            "time/data_ms": data, "comm/total_ms": comm if comm is not None else exposed,
            "comm/overlap": 0.0, "mem/peak_mb": mem}


def test_per_step_values_separate_comm_from_waiting_for_a_straggler():
    # step 2: rank 1 computed 10 ms longer; rank 0 waited for it inside the all-reduce
    rows = {0: [row(1, 99, 9, 9), row(2, 50, 30, 18, 1.0)], 1: [row(1, 99, 9, 9), row(2, 51, 40, 8, 3.0, mem=120)]}
    (v,) = per_step_values(rows, warmup=1)
    assert v["step"] == 50.5 and v["compute"] == 35 and v["exposed"] == 8 and v["wait"] == 5 and v["data"] == 2
    assert v["mem"] == 120
    step, parts, comm, overlap, mem, slowest = summarize_steps([v])
    # no end times: the period falls back to each rank's step_ms (mean 50.5); the slowest rank took 51
    assert step.median == 50.5 and slowest == 51 and parts["other"] == pytest.approx(50.5 - 35 - 8 - 5 - 2)
    assert sum(parts[p] for p in PARTS) == pytest.approx(step.median)
    with pytest.raises(ConfigError, match="no steps left"):
        summarize_steps(per_step_values(rows, warmup=5))


def test_step_is_the_period_when_ranks_step_boundaries_drift():
    # Both ranks end every step 100 ms after the previous one (the period), but rank 0 finished step 2
    # 30 ms early (a faster optimizer), started step 3 early and waited for rank 1 in its first collective:
    # its step 3 lasted 130 ms, rank 1's 70 ms. The max over ranks (130) is not the step time; the period is.
    ends = {0: [1.000, 1.070, 1.200, 1.300], 1: [1.000, 1.100, 1.200, 1.300]}
    step_ms = {0: [100, 70, 130, 100], 1: [100, 100, 100, 100]}
    rows = {r: [{**row(s + 1, step_ms[r][s], 50, 5), "end_unix_s": ends[r][s]} for s in range(4)] for r in (0, 1)}
    values = per_step_values(rows, warmup=1)
    assert [round(v["step"], 6) for v in values] == [85.0, 115.0, 100.0]  # mean over ranks of end-to-end intervals
    assert [v["slowest"] for v in values] == [100, 130, 100]
    # the periods add up to the wall time between the warm-up's end and the last step's end (300 ms)
    assert sum(v["step"] for v in values) == pytest.approx(300.0)
    step, parts, _, _, _, slowest = summarize_steps(values)
    assert step.median == pytest.approx(100.0) and slowest == 100
    assert sum(parts.values()) == pytest.approx(step.median)


def test_analyse_rows_per_mode_and_backend():
    from gptdist.studies.scaling import RunResult, Stat

    def result(world, step_ms, modes):
        parts = {"compute": step_ms - 1, "exposed": 1.0, "wait": 0.0, "data": 0.0, "other": 0.0}
        return RunResult(f"m{world}", "manual", world, str(world), 2, 128 * world, 5, Stat(step_ms, step_ms, step_ms),
                         parts, 1.0, 0.5, 10.0, 128 * world / step_ms * 1e3, modes)

    rows = analyse([result(1, 100.0, ("strong",)), result(2, 60.0, ("strong",))], ["strong"])
    assert [(r["world"], round(r["efficiency"], 4), r["gap_ms"]) for r in rows] == [(1, 1.0, 0.0), (2, 0.8333, 10.0)]
    assert sum(rows[1]["gap"].values()) == pytest.approx(10.0)


def test_a_layout_of_4_and_one_of_2x2_stay_separate_rows_and_points(tmp_path):
    from gptdist.studies.scaling import RunResult, Stat, plot_report

    def result(world, layout, step_ms):
        parts = {"compute": step_ms - 1, "exposed": 1.0, "wait": 0.0, "data": 0.0, "other": 0.0}
        return RunResult(f"m{layout}", "manual", world, layout, 2, 128, 5, Stat(step_ms, step_ms, step_ms), parts, 1.0,
                         0.5, 10.0, 128 / step_ms * 1e3, ("strong",))

    rows = analyse([result(1, "1", 100.0), result(4, "4", 40.0), result(4, "2x2", 50.0)], ["strong"])
    assert [(r["layout"], r["efficiency"]) for r in rows] == [("1", 1.0), ("4", 0.625), ("2x2", 0.5)]
    paths = plot_report(rows, tmp_path)
    assert sorted(p.name for p in paths) == ["breakdown_strong.png", "efficiency_strong.png", "throughput_strong.png"]


def tiny_study_config(tmp_path):
    """A config file for a study that runs in seconds: the test model on a synthetic token set."""
    data = make_token_dataset(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {preset: test}\n"
        f"data: {{dir: {data}, batch_size: 2, seq_len: 16}}\n"
        "train: {max_steps: 4, warmup_steps: 1}\n"
        "eval: {val_every: 0}\ncheckpoint: {at_end: false}\n")
    return config


@pytest.mark.slow
def test_study_end_to_end_at_1_and_2_ranks(tmp_path):
    config = tiny_study_config(tmp_path)
    out = tmp_path / "report"
    proc = python(["launch/scaling.py", "--config", str(config), "--backends", "manual", "--world-sizes", "1,2",
                   "--steps", "4", "--warmup", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)], timeout=240)
    assert "report:" in proc.stdout
    raw = json.loads((out / "results.json").read_text())
    got = {(r["mode"], r["world"]) for r in raw["rows"]}
    assert got == {("strong", 1), ("strong", 2), ("weak", 1), ("weak", 2)}
    for r in raw["rows"]:
        assert r["step_ms"] > 0 and sum(r["gap"].values()) == pytest.approx(r["gap_ms"], abs=1e-6)
        assert sum(r["parts"].values()) == pytest.approx(r["step_ms"], abs=1e-6)
        if r["world"] == 2:
            assert r["comm_ms"] > 0
    report = (out / "report.md").read_text()
    assert "| strong | manual | 2 |" in report and "## The answer" in report
    for name in ("efficiency", "breakdown", "throughput"):
        for mode in ("strong", "weak"):
            assert (out / f"{name}_{mode}.png").stat().st_size > 1000

    # --report-only: the same report from the run folders, nothing re-run (here with 2 warm-up steps)
    again = tmp_path / "again"
    common = ["launch/scaling.py", "--config", str(config), "--backends", "manual", "--world-sizes", "1,2",
              "--steps", "4", "--warmup", "2", "--report-only"]
    python(common + ["--runs-dir", str(tmp_path / "runs"), "--out", str(again)], timeout=120)
    rerun = json.loads((again / "results.json").read_text())
    assert [r["run"] for r in rerun["rows"]] == [r["run"] for r in raw["rows"]]
    assert all(r["steps_kept"] == 2 for r in rerun["runs"])
    proc = python(common + ["--runs-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x")], check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --report-only:")

    # A study in pieces (other work between its runs): --only runs the named runs of the plan and writes no report;
    # once every run is there, --report-only builds the same report. Two runs copied from above, the third run here.
    pieces = tmp_path / "pieces"
    for name in ("manual-n1-b4", "manual-n2-b2"):
        shutil.copytree(tmp_path / "runs" / name, pieces / name)
    base = ["launch/scaling.py", "--config", str(config), "--backends", "manual", "--world-sizes", "1,2",
            "--steps", "4", "--runs-dir", str(pieces)]
    proc = python(base + ["--warmup", "1", "--only", "manual-n1-b2", "--out", str(tmp_path / "no_report")], timeout=120)
    assert "ran manual-n1-b2" in proc.stdout and not (tmp_path / "no_report").exists()
    assert sorted(p.name for p in pieces.iterdir()) == ["manual-n1-b2", "manual-n1-b4", "manual-n2-b2"]
    scaling_cli = launcher_main("launch/scaling.py")  # what runs nothing, in this process
    scaling_cli(base[1:] + ["--warmup", "1", "--report-only", "--out", str(tmp_path / "pieced")])
    pieced = json.loads((tmp_path / "pieced" / "results.json").read_text())
    assert [(r["mode"], r["run"]) for r in pieced["rows"]] == [(r["mode"], r["run"]) for r in raw["rows"]]
    for flags, message in ((["--only", "manual-n4-b1"], "--only: manual-n4-b1 not in the plan (its runs: "),
                           (["--only", "manual-n1-b2", "--report-only"], "--only runs part of the plan")):
        with pytest.raises(ConfigError) as refused:
            scaling_cli(base[1:] + ["--warmup", "1", *flags, "--out", str(tmp_path / "x")])
        assert str(refused.value).startswith(message)


@pytest.mark.slow
def test_study_two_node_layout(tmp_path):
    """ "2x1": two torchrun agents (nodes) of one rank each, rendezvous on 127.0.0.1, as on two machines."""
    config = tiny_study_config(tmp_path)
    out = tmp_path / "report"
    python(["launch/scaling.py", "--config", str(config), "--backends", "ddp", "--world-sizes", "1,2x1",
            "--modes", "strong", "--steps", "4", "--warmup", "1", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out)], timeout=240)
    raw = json.loads((out / "results.json").read_text())
    two = next(r for r in raw["rows"] if r["world"] == 2)
    assert two["layout"] == "2x1" and two["comm_ms"] > 0 and two["batch_size"] == 2  # global batch 2 x 2, split over 2 ranks
    assert sorted(p.name for p in (tmp_path / "runs" / "ddp-n2x1-b2" / "ranks").iterdir()) == ["rank0", "rank1"]
    assert "| strong | ddp | 2x1 |" in (out / "report.md").read_text()


def test_bad_input_is_one_line_error(tmp_path):
    proc = python(["launch/scaling.py", "--config", "configs/scaling_cpu.yaml", "--world-sizes", "2,4",
                   "--out", str(tmp_path / "r")], check=False, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: the world sizes must include 1 (the baseline every efficiency is relative to)"]
    assert not (tmp_path / "r").exists()


def write_run(run_dir, steps_by_rank, split_rows=None):
    """A hand-made run folder: ranks/rank{r}/steps.jsonl and, if given, collectives_split.jsonl."""
    for rank, rows in steps_by_rank.items():
        (run_dir / "ranks" / f"rank{rank}").mkdir(parents=True)
        (run_dir / "ranks" / f"rank{rank}" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if split_rows is not None:
        (run_dir / "collectives_split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    return run_dir


def collective(step, wait, transfer, label="bucket=0"):
    return {"step": step, "op": "all_reduce", "label": label, "last_rank": max(wait, key=wait.get),
            "wait_ms": wait, "transfer_ms": transfer}


def test_measured_wait_and_transfer_are_carried_into_the_study_rows(tmp_path):
    """collectives_split.jsonl -> per step, sum over collectives, mean over ranks, median over steps.
    2 ranks, warm-up step 1 (huge, left out):
      step 2: bucket (rank 0 waits 4, both transfer 2) + loss (no wait, transfer 1): wait mean 2, transfer 3
      step 3: rank 1 waits 6, transfer 1:                                              wait mean 3, transfer 1
      step 4: rank 0 waits 8, transfer 5:                                              wait mean 4, transfer 5
    medians: wait 3, transfer 3. The 1-rank run: never waits, transfers 2 ms a step."""
    from gptdist.studies.scaling import collect_run, comm_split_table
    from gptdist.studies.scaling.analysis import measured_comm_split

    two = [collective(1, {"0": 100.0, "1": 0.0}, {"0": 50.0, "1": 50.0}),
           collective(2, {"0": 4.0, "1": 0.0}, {"0": 2.0, "1": 2.0}),
           collective(2, {"0": 0.0, "1": 0.0}, {"0": 1.0, "1": 1.0}, label="loss"),
           collective(3, {"0": 0.0, "1": 6.0}, {"0": 1.0, "1": 1.0}),
           collective(4, {"0": 8.0, "1": 0.0}, {"0": 5.0, "1": 5.0})]
    one = [collective(s, {"0": 0.0}, {"0": 2.0}) for s in (1, 2, 3, 4)]
    steps = [row(s, 50.0, 40.0, 5.0) for s in (1, 2, 3, 4)]
    run2 = write_run(tmp_path / "m2", {0: steps, 1: steps}, two)
    run1 = write_run(tmp_path / "m1", {0: steps}, one)
    assert measured_comm_split(run2, warmup=1) == {"wait_ms": 3.0, "transfer_ms": 3.0}
    assert measured_comm_split(write_run(tmp_path / "old", {0: steps}), warmup=1) is None  # a run from before the split

    specs = {s.world: s for s in plan_runs(["manual"], parse_world_sizes("1,2"), ["strong"], 1, 16)}
    results = [collect_run(run1, specs[1], warmup=1), collect_run(run2, specs[2], warmup=1)]
    rows = analyse(results, ["strong"])
    assert [(r["world"], r["arrival_wait_ms"], r["transfer_ms"]) for r in rows] == [(1, 0.0, 2.0), (2, 3.0, 3.0)]
    assert "| strong | manual | 2 | 5.0 | 3.0 | 3.0 | +0.0 |" in comm_split_table(rows)
    assert comm_split_table([{**r, "arrival_wait_ms": None, "transfer_ms": None} for r in rows]) == ""


def test_figures_keep_every_bar_and_label_ticks_on_a_narrow_log_axis(tmp_path, monkeypatch):
    """Issue 19 item 8, with hand-made rows. A negative `other` (medians do not add) must not let the stack
    above it run off the breakdown's axis: the axis reaches past compute + exposed + wait = 914. Throughput
    from 600 to 2,400 tokens/s (under one decade): at least three labelled ticks on the log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptdist.studies.plotting import plot_report

    def r(world, layout, step_ms, parts, tokens_per_s):
        return {"mode": "strong", "backend": "fsdp", "world": world, "layout": layout, "efficiency": 1.0,
                "parts": parts, "ideal_ms": 860.0 / world, "tokens_per_s": tokens_per_s}

    rows = [r(1, "1", 860.0, {"compute": 850.0, "exposed": 0.0, "wait": 0.0, "data": 0.0, "other": 10.0}, 600.0),
            r(4, "2x2", 911.0, {"compute": 492.0, "exposed": 370.0, "wait": 52.0, "data": 0.0, "other": -3.0}, 2400.0)]
    seen = {}
    original = plt.Figure.savefig

    def keep(fig, path, *args, **kwargs):  # look at each figure as it is saved
        seen[path.name] = (fig.axes[0].get_ylim(), [t.get_text() for t in fig.axes[0].get_yticklabels()])
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    plot_report(rows, tmp_path)
    assert seen["breakdown_strong.png"][0][1] > 914.0
    labels = [t for t in seen["throughput_strong.png"][1] if t]
    assert len(labels) >= 3, labels


def test_replot_draws_from_raw_json_and_names_what_it_skips(tmp_path):
    from gptdist.studies.plotting import replot_results

    rows = [{"mode": "weak", "backend": "manual", "world": n, "layout": str(n), "efficiency": 1.0, "ideal_ms": 10.0,
             "parts": {"compute": 10.0, "exposed": 0.0, "wait": 0.0, "data": 0.0, "other": 0.0},
             "tokens_per_s": 100.0 * n} for n in (1, 2)]
    (tmp_path / "predicted.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "validation.json").write_text(json.dumps({"rows": [{"mode": "weak", "backend": "manual", "world": 1}]}))
    paths, skipped = replot_results(tmp_path, " (note)")
    assert sorted(p.name for p in paths) == ["breakdown_weak.png", "efficiency_weak.png", "throughput_weak.png"]
    assert len(skipped) == 1 and "before layouts" in skipped[0]
