"""Instrumentation with real gloo processes (torchrun, 2 ranks):

- every backend's collectives are recorded: the manual backend's K bucket all-reduces per synced
  step (bytes summing to the gradient bytes, none on non-sync micro-steps); DDP with the timing hook
  gives bitwise the gradients of DDP without it; FSDP's all-gathers and reduce-scatters match the
  sharded parameter sizes;
- in the training loop: exposed <= total comm <= step time; overlap off makes all comm exposed;
- profiling: valid Chrome traces with the named ranges, a merged trace with one process per rank,
  and the trace analysis agrees with the live recorder on the same steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gptdist.instrument.profiler import load_trace
from gptdist.instrument.trace_analysis import analyze_trace, live_totals, profiled_steps
from launchers import python, subprocess_env, torchrun
from synthetic import make_token_dataset

pytestmark = pytest.mark.slow
WORLD = 2


@pytest.fixture(scope="module")
def backend_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("instr") / "records.json"
    torchrun(["tests/dist_scripts/instr_backends.py", "--out", str(out)], nproc=WORLD, timeout=300)
    return json.loads(out.read_text())


def test_manual_backend_issues_one_all_reduce_per_bucket_per_synced_step(backend_records):
    m = backend_records["manual"]
    K = m["num_buckets"]
    assert K > 5 and sum(m["bucket_bytes"]) == m["grad_bytes"]
    for micro in m["micro_steps"]:
        if not micro["sync"]:
            assert micro["records"] == []  # accumulation micro-step: no collective at all
            continue
        recs = micro["records"]
        assert [r["op"] for r in recs] == ["all_reduce"] * K
        assert [r["label"] for r in recs] == [f"bucket={i}" for i in range(K)]
        assert [r["bytes"] for r in recs] == m["bucket_bytes"]
        assert sum(r["bytes"] for r in recs) == m["grad_bytes"]
        assert all(r["duration_ms"] is not None and r["duration_ms"] >= 0 and r["group_size"] == WORLD for r in recs)
    assert {r["op"] for r in m["start_up"]} == {"broadcast"}


def test_ddp_timing_hook_gives_bitwise_identical_gradients(backend_records):
    d = backend_records["ddp"]
    assert d["bitwise_identical_all_ranks"] and d["max_abs_diff"] == 0.0
    for step in d["steps"]:  # the hook saw every bucket: together they hold every gradient once
        assert step and all(r["op"] == "all_reduce" for r in step)
        assert sum(r["bytes"] for r in step) == d["grad_bytes"]


def padded_bytes(shapes, world, elt=4):
    """FSDP2 shards dim 0, padded up to a multiple of the world size."""
    total = 0
    for shape in shapes:
        rows = math.ceil(shape[0] / world) * world
        total += rows * math.prod(shape[1:]) * elt
    return total


@pytest.mark.parametrize("variant, reduce_op", [("zero1", "all_reduce"), ("zero2", "reduce_scatter")])
def test_zero_records_every_reduction_and_all_gather(backend_records, variant, reduce_op):
    """Per step: nothing on the accumulation micro-step; on the synced one, one gradient collective per
    bucket in order, each the bucket padded to a multiple of the world size (what the collective moves);
    one 4-byte norm all-reduce at the clip; one parameter all-gather per bucket, in forward order."""
    z = backend_records[variant]
    padded = [math.ceil(n / WORLD) * WORLD * 4 for n in z["bucket_numels"]]
    K = len(padded)
    assert K > 5 and sum(z["bucket_numels"]) * 4 == z["param_bytes"]  # every parameter in one bucket, once
    for step in z["steps"]:
        assert step["micro"][0] == []
        recs = step["micro"][1]
        assert [(r["op"], r["label"], r["bytes"]) for r in recs] == [(reduce_op, f"bucket={i}", padded[i]) for i in range(K)]
        assert [(r["op"], r["label"], r["bytes"]) for r in step["clip"]] == [("all_reduce", "grad_norm", 4)]
        gathers = step["optimizer"]
        assert [(r["op"], r["label"], r["bytes"]) for r in gathers] == [
            ("all_gather", f"params bucket={i}", padded[i]) for i in reversed(range(K))]
        assert all(r["duration_ms"] is not None and r["duration_ms"] >= 0 for r in recs + gathers)


def test_fsdp_all_gathers_and_reduce_scatters_match_sharded_parameters(backend_records):
    f = backend_records["fsdp"]
    groups = f["group_param_shapes"]
    for step in f["steps"]:
        for label, shapes in groups.items():
            expected = padded_bytes(shapes, WORLD)  # whole gathered output = whole scattered input
            gathers = [r for r in step if r["op"] == "all_gather" and r["label"] == label]
            scatters = [r for r in step if r["op"] == "reduce_scatter" and r["label"] == label]
            assert gathers and all(r["bytes"] == expected for r in gathers), label
            assert len(scatters) == 1 and scatters[0]["bytes"] == expected, label
            # each rank sends/receives 1/world of it: its local shard
            assert expected // WORLD == sum(math.ceil(s[0] / WORLD) * math.prod(s[1:]) * 4 for s in shapes)
        # forward gathers every group once; backward again for blocks resharded after forward (not the root)
        assert len([r for r in step if r["op"] == "all_gather"]) == len(groups) + (len(groups) - 1)
        assert [r["label"] for r in step if r["op"] == "all_reduce"] == ["grad_norm"]


# ------------------------------------------------------------------------------------------------
# The training loop


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_token_dataset(tmp_path_factory.mktemp("data"))


def train_run(data_dir, out, name, backend, **extra):
    args = {"model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 4, "data.seq_len": 32,
            "train.max_steps": 6, "train.device": "cpu", "eval.val_every": 0, "checkpoint.at_end": False,
            "log.out_dir": str(out), "log.run_name": name, "backend": backend,
            "train.global_batch_tokens": 4 * 32 * WORLD * 2}  # 2 micro-steps per step
    args.update(extra)
    torchrun(["launch/train.py", *[f"--{k}={v}" for k, v in args.items()]], nproc=WORLD, timeout=300)
    run = out / name
    steps = {r: [json.loads(x) for x in (run / "ranks" / f"rank{r}" / "steps.jsonl").read_text().splitlines()]
             for r in range(WORLD)}
    return run, steps


SMALL_BUCKETS = {"parallel.manual.bucket_cap_mb": 0.01, "parallel.manual.first_bucket_mb": 0.002}


@pytest.fixture(scope="module")
def profiled_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run, steps = train_run(data_dir, out, "prof", "manual", **SMALL_BUCKETS, **{
        "profile.enabled": True, "profile.wait": 1, "profile.warmup": 1, "profile.active": 3,
        "profile.dir": str(out / "traces")})
    return run, steps, out / "traces" / "prof"


def check_invariants(steps):
    for rows in steps.values():
        assert len(rows) == 6
        for r in rows:
            eps = 1e-6
            assert 0 <= r["comm/exposed_ms"] <= r["comm/total_ms"] + eps
            assert r["comm/total_ms"] <= r["step_ms"] + eps
            assert r["time/compute_ms"] + r["comm/exposed_ms"] <= r["step_ms"] + eps
            assert r["comm/count"] > 0


def test_step_invariants_and_metrics_keys(profiled_run):
    run, steps, _ = profiled_run
    check_invariants(steps)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["comm/total_ms"] == steps[0][-1]["comm/total_ms"]  # rank 0's breakdown
    summary = json.loads((run / "summary.json").read_text())["instrument"]
    assert set(summary["per_rank"]) == {"0", "1"} and summary["slowest_rank"] in (0, 1)
    # collectives.jsonl: every synced step has K bucket all-reduces + the loss all-reduce
    recs = [json.loads(x) for x in (run / "ranks" / "rank1" / "collectives.jsonl").read_text().splitlines()]
    per_step = {}
    for r in recs:
        per_step.setdefault(r["step"], []).append(r)
    buckets = {len([r for r in per_step[s] if r["label"].startswith("bucket=")]) for s in range(1, 7)}
    assert len(buckets) == 1 and buckets.pop() > 5
    assert all(r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (WORLD - 1) / WORLD)
               for r in recs if r["op"] == "all_reduce" and r["busbw_gbps"])


def test_overlap_off_exposes_all_communication(data_dir, tmp_path, profiled_run):
    _, steps, _ = profiled_run
    _, off = train_run(data_dir, tmp_path, "overlap_off", "manual", **SMALL_BUCKETS, **{"parallel.manual.overlap": False})
    check_invariants(off)
    for rows in off.values():
        for r in rows:  # every collective runs after backward, outside compute
            assert r["comm/exposed_ms"] == pytest.approx(r["comm/total_ms"], rel=1e-6, abs=1e-6)
    on_overlapped = [r["comm/overlapped_ms"] for rows in steps.values() for r in rows]
    assert all(x > 0 for x in on_overlapped)  # with overlap, bucket all-reduces run during backward


ONE_DDP_BUCKET = {"parallel.ddp.bucket_cap_mb": 100.0}


@pytest.fixture(scope="module")
def ddp_run(data_dir, tmp_path_factory):
    return train_run(data_dir, tmp_path_factory.mktemp("ddp"), "ddp_one_bucket", "ddp", **ONE_DDP_BUCKET)


def test_ddp_wait_inside_backward_counts_as_exposed_communication(ddp_run):
    """One DDP bucket: its all-reduce can only start once backward has computed every gradient, and DDP
    waits for it inside loss.backward(). That wait must show as exposed communication, not compute."""
    _, steps = ddp_run
    check_invariants(steps)
    for rows in steps.values():
        for r in rows[1:]:  # step 1: DDP still builds its buckets
            assert r["comm/exposed_ms"] >= 0.9 * r["comm/total_ms"], r


def test_fsdp_run_invariants(data_dir, fsdp_run):
    _, steps = fsdp_run
    check_invariants(steps)


@pytest.fixture(scope="module")
def fsdp_run(data_dir, tmp_path_factory):
    return train_run(data_dir, tmp_path_factory.mktemp("fsdp"), "fsdp", "fsdp")


def rehearse(data_dir, out, name, backend, **extra):
    """The same job as train_run's, rehearsed: ONE process doing rank 0's work at WORLD ranks (GPTDIST_FAKE_WORLD)."""
    args = {"model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 4, "data.seq_len": 32,
            "train.max_steps": 6, "train.device": "cpu", "eval.val_every": 0, "checkpoint.at_end": False,
            "log.out_dir": str(out), "log.run_name": name, "backend": backend,
            "train.global_batch_tokens": 4 * 32 * WORLD * 2, **extra}
    python(["launch/train.py", *[f"--{k}={v}" for k, v in args.items()]],
           env=subprocess_env(GPTDIST_FAKE_WORLD=str(WORLD)))
    return out / name


def collectives_per_step(run):
    rows = [json.loads(x) for x in (run / "ranks" / "rank0" / "collectives.jsonl").read_text().splitlines()]
    return [(r["step"], r["op"], r["label"], r["bytes"], r["group_size"]) for r in rows]


@pytest.mark.parametrize("backend", ["fsdp", "manual", "ddp"])
def test_a_rehearsal_does_rank_0s_collectives_and_is_the_simulators_input(backend, data_dir, tmp_path, fsdp_run,
                                                                           profiled_run, ddp_run):
    """GPTDIST_FAKE_WORLD=2: one process issues exactly the collectives (op, label, bytes, group size, every
    step) that rank 0 of the real 2-rank gloo run issued -- FSDP's per-unit gathers and scatters of its shards,
    the manual backend's buckets -- so it does rank 0's work; and it is the one multi-rank-shaped run folder
    the simulator takes in (a real 2-rank run is refused)."""
    from gptdist.errors import ConfigError
    from gptdist.studies.simulator import timeline_from_run

    real, settings = {"fsdp": (fsdp_run[0], {}), "manual": (profiled_run[0], SMALL_BUCKETS),
                      "ddp": (ddp_run[0], ONE_DDP_BUCKET)}[backend]
    rehearsal = rehearse(data_dir, tmp_path, "rehearsal", backend, **settings)
    assert collectives_per_step(rehearsal) == collectives_per_step(real)
    assert len(collectives_per_step(real)) > 6
    host = json.loads((rehearsal / "ranks" / "rank0" / "host.json").read_text())
    assert host["world_size"] == WORLD and host["fake_world"] is True
    assert not (rehearsal / "ranks" / "rank1").exists()
    t = timeline_from_run(rehearsal, skip=1)
    assert t.world_size == WORLD and t.tokens_per_step == 4 * 32 * 2 and t.backend == backend  # per rank: 2 micro-steps
    with pytest.raises(ConfigError, match="multi-rank run"):
        timeline_from_run(real, skip=1)


def is_complete_event(e):
    return e.get("ph") == "X" and all(k in e for k in ("ts", "dur", "pid", "tid", "name"))


def test_traces_are_valid_and_merged_has_one_process_per_rank(profiled_run):
    run, steps, trace_dir = profiled_run
    for r in range(WORLD):
        raw = json.loads((trace_dir / f"rank{r}.json").read_text())  # plain JSON, not only our loader
        events = raw["traceEvents"]
        assert all("ph" in e and "pid" in e for e in events)
        names = {e["name"] for e in events if is_complete_event(e)}
        for phase in ("forward", "backward", "grad_sync", "optimizer"):
            assert f"phase:{phase}" in names
        assert "comm:all_reduce bucket=0" in names and "comm:all_reduce loss" in names
    merged = json.loads((trace_dir / "merged.json").read_text())
    pids = {e["pid"] for e in merged["traceEvents"]}
    assert pids == set(range(WORLD))
    process_names = sorted(e["args"]["name"] for e in merged["traceEvents"] if e.get("name") == "process_name")
    assert process_names == [f"rank {r}" for r in range(WORLD)]
    # aligned clocks: rank 1's first profiled step starts within a few ms of rank 0's
    starts = {r: min(e["ts"] for e in merged["traceEvents"] if e["pid"] == r and str(e.get("name", "")).startswith("ProfilerStep"))
              for r in range(WORLD)}
    assert abs(starts[0] - starts[1]) < 50_000  # us


def test_trace_analysis_agrees_with_the_live_recorder(profiled_run):
    run, _, trace_dir = profiled_run
    trace = load_trace(trace_dir / "merged.json")
    steps = profiled_steps(trace)
    assert steps == [3, 4, 5]  # wait 1, warmup 1, active 3
    from_trace = analyze_trace(trace)
    live = live_totals(run, list(from_trace), steps)
    for r in range(WORLD):
        t, l = from_trace[r], live[r]
        assert t.steps == 3
        # Same events seen two ways (record_function ranges vs the timer's own clock reads): they differ
        # by the cost of entering/leaving a range, microseconds per phase.
        assert t.compute_ms == pytest.approx(l["compute_ms"], rel=0.10, abs=0.3)
        assert t.comm_ms == pytest.approx(l["comm_ms"], rel=0.05, abs=0.05)
        assert t.exposed_ms == pytest.approx(l["exposed_ms"], rel=0.10, abs=0.2)
