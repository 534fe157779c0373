"""Instrumentation pieces on one process: interval arithmetic against a brute-force grid, the summary
statistics against numpy, the recorder on a one-rank gloo group, trace merge and analysis on traces
with known intervals, namespaced sink keys, and the trainer's breakdown keys and on/off switch."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gptdist.config import build_config
from gptdist.dist import init_distributed
from gptdist.instrument import timeline as tl
from gptdist.instrument.profiler import merge_traces
from gptdist.instrument.recorder import CollectiveRecorder
from gptdist.instrument.summary import format_table, percentile, summarize
from gptdist.instrument.trace_analysis import analyze_trace
from gptdist.trainer import train
from synthetic import make_token_dataset

# ------------------------------------------------------------------------------------------------
# Interval arithmetic


def grid(intervals, n=1000):
    """Membership of each point k/n + 1/(2n) of [0, 1): a brute-force reference."""
    x = (np.arange(n) + 0.5) / n
    mask = np.zeros(n, dtype=bool)
    for s, e in intervals:
        mask |= (x >= s) & (x < e)
    return mask


def random_intervals(rng, k):
    # endpoints on the grid's cell boundaries, so the grid measures them exactly
    out = []
    for _ in range(k):
        a, b = sorted(rng.sample(range(0, 1001), 2))
        out.append((a / 1000, b / 1000))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_interval_arithmetic_matches_a_grid(seed):
    rng = random.Random(seed)
    comm, compute = random_intervals(rng, rng.randint(0, 6)), random_intervals(rng, rng.randint(0, 6))
    gc, gp = grid(comm), grid(compute)
    assert tl.measure(comm) == pytest.approx(gc.sum() / 1000, abs=1e-9)
    assert tl.measure(tl.intersect(comm, compute)) == pytest.approx((gc & gp).sum() / 1000, abs=1e-9)
    assert tl.measure(tl.subtract(comm, compute)) == pytest.approx((gc & ~gp).sum() / 1000, abs=1e-9)
    b = tl.breakdown(compute, comm, (0.0, 1.0))
    assert b.exposed == pytest.approx((gc & ~gp).sum() / 1000, abs=1e-9)
    assert b.idle == pytest.approx((~gc & ~gp).sum() / 1000, abs=1e-9)
    assert 0 <= b.exposed <= b.comm <= b.window + 1e-12
    if b.comm > 0:
        assert b.overlap == pytest.approx(1 - b.exposed / b.comm)
    else:
        assert b.overlap is None


def test_breakdown_example_from_the_docstring():
    compute = [(0, 4), (4, 10), (12, 13)]
    comm = [(6, 8), (9, 11), (10.5, 11.5)]  # the last two overlap each other: counted once
    b = tl.breakdown(compute, comm, (0, 14))
    assert (b.comm, b.exposed, b.overlapped, b.idle) == (4.5, 1.5, 3.0, 1.5)  # idle: 11.5-12 and 13-14
    assert b.overlap == pytest.approx(1 - 1.5 / 4.5)


# ------------------------------------------------------------------------------------------------
# Summary


def test_percentiles_match_numpy_and_table_names_the_slowest_rank():
    rng = np.random.default_rng(0)
    values = list(rng.random(37))
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    rows = {r: [{"step": s, "step_ms": 10.0 * (r + 1) + s, "compute_ms": 5.0, "comm_ms": 2.0, "exposed_ms": 1.0,
                 "overlap": 0.5} for s in range(1, 6)] for r in range(3)}
    rows[1][0]["step_ms"] = 1e6  # a warm-up outlier in step 1: skipped
    s = summarize(rows, skip=1)
    assert s["slowest_rank"] == 2
    assert s["per_rank"][1]["step_ms"]["median"] == pytest.approx(np.median([22, 23, 24, 25]))
    assert s["all_ranks"]["steps"] == 12
    table = format_table(s)
    assert "slowest rank (median step): 2" in table and "50% / 50%" in table


# ------------------------------------------------------------------------------------------------
# Recorder on a one-rank gloo group


def test_recorder_times_async_and_blocking_collectives(tmp_path):
    ctx = init_distributed("cpu", need_group=True)
    out = tmp_path / "collectives.jsonl"
    rec = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size, out)
    rec.set_step(7)
    x = torch.ones(1000)
    work = dist.all_reduce(x, async_op=True)
    assert rec.track("all_reduce", x, "bucket=0", work) is work
    work.wait()
    with rec.timed("broadcast", x, "init"):
        dist.broadcast(x, src=0)
    records = rec.collect()
    rec.close()
    assert [(r.op, r.label, r.bytes, r.step, r.blocking) for r in records] == [
        ("all_reduce", "bucket=0", 4000, 7, False), ("broadcast", "init", 4000, 7, True)]
    first, second = records
    assert first.issue_s <= first.start_s <= first.end_s and second.start_s >= first.end_s  # serialized
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["duration_ms"] == pytest.approx(first.duration_s * 1e3, abs=1e-3)
    d = first.duration_s
    assert rows[0]["algbw_gbps"] == pytest.approx(4000 / d / 1e9)
    assert rows[0]["busbw_gbps"] == pytest.approx(0.0)  # all-reduce on 1 rank: 2(n-1)/n = 0
    assert rows[1]["busbw_gbps"] == pytest.approx(rows[1]["algbw_gbps"])  # broadcast: factor 1
    assert rec.collect() == []  # handed out once


# ------------------------------------------------------------------------------------------------
# Traces


def rank_trace(rank: int, sync_us: float, comm, phases, steps):
    ev = [{"ph": "M", "name": "process_name", "pid": 4000 + rank, "tid": 0, "args": {"name": "python"}}]
    for i, (s, e) in enumerate(steps):
        ev.append({"ph": "X", "name": f"ProfilerStep#{i}", "pid": 4000 + rank, "tid": 1, "ts": s, "dur": e - s})
    for name, s, e in phases:
        ev.append({"ph": "X", "name": f"phase:{name}", "pid": 4000 + rank, "tid": 1, "ts": s, "dur": e - s})
    for s, e, blocking in comm:
        ev.append({"ph": "X", "name": "comm:all_reduce bucket=0", "pid": 4000 + rank, "tid": 99, "ts": s, "dur": e - s,
                   "args": {"blocking": blocking}})
    ev.append({"ph": "X", "name": "aten::mm", "pid": 4000 + rank, "tid": 1, "ts": steps[0][0] + 1, "dur": 1})
    return {"traceEvents": ev, "gptdist": {"rank": rank, "world_size": 2, "clock_sync_us": sync_us}}


def test_trace_analysis_and_merge_on_known_intervals():
    # rank 0 (us): step 0..100; forward 0-40, backward 40-80 with an async all-reduce 60-90; a blocking
    # all-reduce 90-95 inside the optimizer phase 85-100.
    t0 = rank_trace(0, 1000.0, [(60, 90, False), (90, 95, True)],
                    [("data", 0, 0), ("forward", 0, 40), ("backward", 40, 80), ("grad_sync", 80, 85), ("optimizer", 85, 100)],
                    [(0, 100)])
    b = analyze_trace(t0)[0]
    # compute = 0-80 and 85-90, 95-100 (the blocking collective is not compute): 90 us
    assert (b.compute_ms, b.comm_ms, b.overlapped_ms) == pytest.approx((0.090, 0.035, 0.025))
    assert b.exposed_ms == pytest.approx(0.010) and b.idle_ms == pytest.approx(0.0) and b.window_ms == pytest.approx(0.1)

    # rank 1's clock is 500 us ahead: after merging, its events land on rank 0's clock.
    t1 = rank_trace(1, 1500.0, [(560, 590, False)], [("forward", 500, 580)], [(500, 600)])
    merged = merge_traces({0: t0, 1: t1})
    assert {e["pid"] for e in merged["traceEvents"]} == {0, 1}
    names = {e["pid"]: e["args"]["name"] for e in merged["traceEvents"] if e.get("name") == "process_name"}
    assert names == {0: "rank 0", 1: "rank 1"}
    r1_step = next(e for e in merged["traceEvents"] if e["pid"] == 1 and e.get("name") == "ProfilerStep#0")
    assert r1_step["ts"] == pytest.approx(0.0)
    per_rank = analyze_trace(merged)
    assert per_rank[0] == b
    assert per_rank[1].comm_ms == pytest.approx(0.030) and per_rank[1].exposed_ms == pytest.approx(0.010)  # 580-590


def test_gpu_kernels_decide_when_present():
    trace = {"traceEvents": [
        {"ph": "X", "name": "ProfilerStep#0", "pid": 1, "tid": 1, "ts": 0, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm", "pid": 0, "tid": 7, "ts": 0, "dur": 50},
        {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_f32", "pid": 0, "tid": 20, "ts": 40, "dur": 30},
    ], "gptdist": {"rank": 3}}
    b = analyze_trace(trace)[3]
    assert b.source == "gpu_kernels"
    assert (b.compute_ms, b.comm_ms, b.exposed_ms, b.idle_ms) == pytest.approx((0.05, 0.03, 0.02, 0.03))


# ------------------------------------------------------------------------------------------------
# Sinks and the trainer


def test_namespaced_keys_reach_tensorboard_unchanged(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gptdist.instrument.sinks import MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=True)
    logger.log("train", 1, {"loss": 2.0, "comm/exposed_ms": 1.5})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "comm/exposed_ms"}
    (row,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["comm/exposed_ms"] == 1.5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_token_dataset(tmp_path_factory.mktemp("data"))


def run_cfg(data_dir, out, name, **extra):
    values = {"model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 2, "data.seq_len": 16,
              "train.max_steps": 3, "train.device": "cpu", "eval.val_every": 0, "checkpoint.at_end": False,
              "log.out_dir": str(out), "log.run_name": name, "train.global_batch_tokens": 64}
    values.update(extra)
    return build_config(None, values)


def test_trainer_breakdown_keys_and_switch(data_dir, tmp_path):
    summary = train(run_cfg(data_dir, tmp_path, "on"), init_distributed("cpu"))
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 3
    for r in train_rows:
        for key in ("step_ms", "data_ms", "tokens_per_s", "time/forward_ms", "time/backward_ms", "time/optimizer_ms",
                    "time/compute_ms", "comm/total_ms", "comm/exposed_ms", "mem/peak_mb", "host/cpu_percent"):
            assert key in r, key
        assert r["comm/total_ms"] == 0 and r["comm/count"] == 0 and r["comm/overlap"] is None  # one process
        assert 0 < r["time/compute_ms"] <= r["step_ms"]
        assert r["time/forward_ms"] + r["time/backward_ms"] <= r["step_ms"]
    steps = [json.loads(x) for x in (tmp_path / "on" / "ranks" / "rank0" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert summary["instrument"]["per_rank"][0]["steps"] == 2  # first step left out
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["instrument"]["slowest_rank"] == 0

    off = train(run_cfg(data_dir, tmp_path, "off", **{"instrument.enabled": False}), init_distributed("cpu"))
    assert off["losses"] == summary["losses"]  # measuring changes nothing
    rows = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert rows and not any("comm/total_ms" in r for r in rows) and "step_ms" in rows[0]
    assert not (tmp_path / "off" / "ranks").exists() and "instrument" not in off


def test_work_without_future_is_waited_once_and_ends_after_its_copy():
    """gloo's reduce-scatter Work has no future and copies its result into the output inside wait(). The
    recorder's watcher must be the only caller of that wait(): a second call would copy again, possibly
    after the backend had used (divided) the output. Found by the zero backend's losses drifting."""
    import torch

    from gptdist.instrument.recorder import CollectiveRecorder

    class LambdaLikeWork:
        def __init__(self):
            self.calls, self.output = 0, torch.zeros(2)

        def get_future(self):
            raise RuntimeError("Work::getFuture not implemented.")

        def wait(self, timeout=None):
            self.calls += 1
            self.output.copy_(torch.tensor([4.0, 6.0]))  # the copy-out gloo does in wait()
            return True

    inner = LambdaLikeWork()
    recorder = CollectiveRecorder(torch.device("cpu"), 0, 2)
    work = recorder.track("reduce_scatter", torch.zeros(4), "bucket=0", inner)
    work.wait()
    assert inner.output.tolist() == [4.0, 6.0]  # the caller's wait() returned after the copy
    inner.output.div_(2)  # what the backend does next
    (rec,) = recorder.collect()  # waits for the watcher's completion callback
    assert inner.calls == 1 and inner.output.tolist() == [2.0, 3.0]
    assert rec.op == "reduce_scatter" and rec.end_s is not None and not rec.failed
