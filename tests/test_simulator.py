"""The scaling simulator against hand-computed schedules, and the bucket-ready marks it is fed from."""

import json
import math

import pytest

from gptdist.config import build_config
from gptdist.dist import init_distributed
from gptdist.errors import ConfigError
from gptdist.studies.simulator import (PROFILES, BucketTiming, Timeline, comm_from_fit, comm_from_profile, comm_from_table, inter_tables,
                               contention_from_runs, cpu_contention, cpu_overlap, fsdp_units, load_timeline,
                               modelled_timeline, simulate, timeline_from_run, timeline_from_steps)
from gptdist.trainer import train
from synthetic import make_token_dataset


def linear_comm(alpha_ms: float, ms_per_byte: float):
    """time = α + β·bytes for every op (so hand computations stay simple)."""
    return lambda op, nbytes, n: alpha_ms + ms_per_byte * nbytes


def two_buckets(ready0=5.0, ready1=20.0) -> Timeline:
    # forward 10 ms, backward 20 ms, optimizer 5 ms, 1 ms other; bucket 0 ready at 5 ms, bucket 1 at 20 ms
    return Timeline(pre_ms=10.0, backward_ms=20.0, post_ms={"optimizer": 5.0}, other_ms=1.0,
                    buckets=[BucketTiming(0, 1000, ready0), BucketTiming(1, 1000, ready1)])


def test_no_overlap_adds_every_collective_after_backward():
    comm = linear_comm(1.0, 0.002)  # each bucket: 1 + 2 = 3 ms; the 8-byte loss all-reduce 1.016 ms
    p = simulate(two_buckets(), comm, 2, "manual", overlap=False)
    assert p.step_ms == pytest.approx(10 + 20 + 3 + 3 + 5 + 1.016 + 1)
    assert p.exposed_ms == pytest.approx(3 + 3 + 1.016) and p.comm_ms == pytest.approx(p.exposed_ms)
    assert p.overlap == pytest.approx(0.0)
    assert [e.start_ms for e in p.schedule] == pytest.approx([30, 33])


def test_full_overlap_hides_early_buckets():
    # bucket 0 runs 15-18 ms (inside backward), bucket 1 is ready at 25 ms (5 ms before backward ends)
    comm = linear_comm(1.0, 0.002)
    p = simulate(two_buckets(ready0=5.0, ready1=15.0), comm, 2, "manual")
    assert [(e.start_ms, e.end_ms) for e in p.schedule] == pytest.approx([(15, 18), (25, 28)])
    assert p.step_ms == pytest.approx(10 + 20 + 5 + 1.016 + 1)  # backward end (30) is later than 28
    assert p.exposed_ms == pytest.approx(1.016)  # only the blocking loss all-reduce
    assert p.overlap == pytest.approx(1 - 1.016 / (3 + 3 + 1.016))


def test_last_bucket_tail_is_exposed_and_order_rule_delays_launch():
    comm = linear_comm(1.0, 0.002)
    # bucket 1 ready before bucket 0: it may only launch after bucket 0 (launched at 10 + 18 = 28)
    p = simulate(two_buckets(ready0=18.0, ready1=2.0), comm, 2, "manual")
    assert [e.launch_ms for e in p.schedule] == pytest.approx([28, 28])
    assert [(e.start_ms, e.end_ms) for e in p.schedule] == pytest.approx([(28, 31), (31, 34)])
    assert p.step_ms == pytest.approx(34 + 5 + 1.016 + 1)
    assert p.exposed_ms == pytest.approx(4 + 1.016)


def test_latency_bound_many_small_buckets():
    # 10 buckets of 4 bytes, all ready at the start of backward, α = 3 ms, β = 0: they queue one after the other
    t = Timeline(pre_ms=0.0, backward_ms=20.0, post_ms={}, other_ms=0.0,
                 buckets=[BucketTiming(i, 4, 0.0) for i in range(10)])
    p = simulate(t, linear_comm(3.0, 0.0), 4, "ddp")
    assert p.schedule[-1].end_ms == pytest.approx(30.0)
    assert p.step_ms == pytest.approx(30.0 + 3.0)  # + loss all-reduce
    assert p.exposed_ms == pytest.approx(10.0 + 3.0)


def test_compute_scale_and_contention():
    comm = linear_comm(0.0, 0.0)
    p = simulate(two_buckets(), comm, 4, "manual", compute_scale=0.25, contention=2.0)
    # batch-dependent compute x 0.5, whole-model work (optimizer) x 2
    assert p.step_ms == pytest.approx((10 + 20) * 0.5 + 5 * 2 + 1)
    assert cpu_contention(4, 1, 2) == 2.0 and cpu_contention(2, 1, 2) == 1.0 and cpu_contention(1, 2, 2) == 1.0


def test_update_contention_slows_only_the_work_after_backward():
    """Per-phase contention (an interleaved probe's forward-backward and clip + optimizer factors): forward 10 and
    backward 20 ms x 1.1, the optimizer's 5 ms x 1.6, other 1 ms as measured; free comm. FSDP: forward 30 and
    backward 60 x 1.1, its optimizer 8 ms on a quarter shard x 1.6."""
    free = linear_comm(0.0, 0.0)
    p = simulate(two_buckets(), free, 2, "manual", contention=1.1, update_contention=1.6)
    assert p.step_ms == pytest.approx(30 * 1.1 + 5 * 1.6 + 1)
    assert p.compute_ms == pytest.approx(30 * 1.1 + 5 * 1.6)
    same = simulate(two_buckets(), free, 2, "manual", contention=1.1)  # default: the one factor for both
    assert same.step_ms == pytest.approx(35 * 1.1 + 1)
    f = simulate(fsdp_timeline(), free, 4, "fsdp", contention=1.1, update_contention=1.6)
    assert f.step_ms == pytest.approx(90 * 1.1 + 8 / 4 * 1.6)



def test_cpu_overlap_is_spare_cores_per_rank():
    assert cpu_overlap(1, 1, 2) == 1.0  # one rank, a spare core for gloo
    assert cpu_overlap(2, 1, 2) == 0.0 and cpu_overlap(4, 1, 2) == 0.0  # the ranks fill the cores
    assert cpu_overlap(2, 1, 3) == 0.5 and cpu_overlap(2, 1, 8) == 1.0


def test_no_cpu_overlap_pauses_backward_while_a_collective_runs():
    # bucket 0 (3 ms) launches at 15 ms (5 ms of backward work done); compute waits until 18, the other
    # 15 ms of backward end at 33, bucket 1 runs 33-36; full overlap would end backward at 30, bucket 1 at 33
    comm = linear_comm(1.0, 0.002)
    full = simulate(two_buckets(), comm, 2, "manual")
    p = simulate(two_buckets(), comm, 2, "manual", cpu_overlap=0.0)
    assert [(e.start_ms, e.end_ms) for e in p.schedule] == pytest.approx([(15, 18), (33, 36)])
    assert p.step_ms == pytest.approx(36 + 5 + 1.016 + 1) and full.step_ms == pytest.approx(33 + 5 + 1.016 + 1)
    assert p.exposed_ms == pytest.approx(6 + 1.016)  # bucket 0's 3 ms now cost compute time too


def test_half_cpu_overlap_computes_at_half_speed_during_a_collective():
    # 15-18 ms: bucket 0 runs, backward advances 1.5 ms of work (5 -> 6.5); the other 13.5 ms end at 31.5
    comm = linear_comm(1.0, 0.002)
    p = simulate(two_buckets(), comm, 2, "manual", cpu_overlap=0.5)
    assert [(e.start_ms, e.end_ms) for e in p.schedule] == pytest.approx([(15, 18), (31.5, 34.5)])
    assert p.step_ms == pytest.approx(34.5 + 5 + 1.016 + 1)
    assert p.exposed_ms == pytest.approx(4.5 + 1.016)


def test_contention_from_runs_is_mean_concurrent_compute_over_solo():
    solo = two_buckets()  # compute 10 + 20 + 5 = 35 ms
    double = Timeline(pre_ms=20.0, backward_ms=40.0, post_ms={"optimizer": 10.0}, other_ms=0.0, buckets=[])  # 70
    slower = Timeline(pre_ms=24.0, backward_ms=48.0, post_ms={"optimizer": 12.0}, other_ms=9.0, buckets=[])  # 84
    assert contention_from_runs(solo, [double, slower]) == pytest.approx((70 + 84) / 2 / 35)
    with pytest.raises(ConfigError):
        contention_from_runs(solo, [])


def test_world_of_one_communicates_nothing():
    p = simulate(two_buckets(), linear_comm(5.0, 1.0), 1, "manual")
    assert p.step_ms == pytest.approx(36.0) and p.comm_ms == 0.0 and p.schedule == []


def fsdp_timeline():
    return Timeline(pre_ms=30.0, backward_ms=60.0, post_ms={"optimizer": 8.0}, other_ms=0.0, buckets=[],
                    model={"n_layer": 2, "n_embd": 8, "n_head": 2, "vocab_size": 16, "seq_len": 4})


def test_fsdp_free_comm_is_pure_compute_and_optimizer_is_sharded():
    p = simulate(fsdp_timeline(), linear_comm(0.0, 0.0), 4, "fsdp")
    assert p.step_ms == pytest.approx(30 + 60 + 8 / 4)
    ops = [(e.op, e.label) for e in p.schedule]
    assert ops.count(("all_gather", "module=root")) == 1
    assert sum(op == "all_gather" for op, _ in ops) == 1 + 2 + 2  # root, 2 blocks forward, 2 blocks backward
    assert sum(op == "reduce_scatter" for op, _ in ops) == 3
    units = fsdp_units(fsdp_timeline().model)
    assert sum(share for _, _, share in units) == pytest.approx(1.0)


def test_an_fsdp_rehearsal_is_replayed_as_measured_less_its_fake_collectives():
    """A rehearsal at 2 ranks (GPTDIST_FAKE_WORLD=2) measured the optimizer on its own half shard, fixed costs and
    all: 2 ranks replay it whole (a 1-rank timeline's is halved). Its fake collectives took 9 ms inside forward and
    backward, which the comm model already prices: taken out, 3 ms from the 30 ms forward, 6 from the backward."""
    rehearsal = fsdp_timeline()
    rehearsal.world_size, rehearsal.comm_ms = 2, 9.0
    p = simulate(rehearsal, linear_comm(0.0, 0.0), 2, "fsdp")
    assert p.step_ms == pytest.approx(27 + 54 + 8)
    one_rank = simulate(fsdp_timeline(), linear_comm(0.0, 0.0), 2, "fsdp")
    assert one_rank.step_ms == pytest.approx(30 + 60 + 8 / 2)
    # at 4 ranks the rehearsal's shard halves again
    assert simulate(rehearsal, linear_comm(0.0, 0.0), 4, "fsdp").step_ms == pytest.approx(27 + 54 + 4)


def test_fsdp_without_prefetch_exposes_every_gather():
    comm = linear_comm(1.0, 0.0)  # every collective 1 ms
    t = fsdp_timeline()
    blocking = simulate(t, comm, 2, "fsdp", prefetch=False)
    # One stream. Forward: root + 2 blocks gathered in the open (3 ms). Backward: h.1's gather (1 ms);
    # h.0's gather queues behind h.1's reduce-scatter (2 ms); after the last compute, h.0's and the
    # root's reduce-scatters (2 ms); then the grad-norm and loss all-reduces (2 ms).
    assert blocking.step_ms == pytest.approx(30 + 60 + 8 / 2 + 3 + 1 + 2 + 2 + 2)
    prefetched = simulate(t, comm, 2, "fsdp", prefetch=True)
    assert prefetched.step_ms < blocking.step_ms


def test_fsdp_without_prefetch_waits_for_each_reduce_scatter():
    """CPU/gloo: FSDP2's reduce-scatters are blocking too. Without backward all-gathers (no reshard after
    forward) nothing else would stop h.1's reduce-scatter from overlapping h.0's backward."""
    from gptdist.studies.simulator import simulate_fsdp

    comm = linear_comm(5.0, 0.0)  # every collective 5 ms
    t = fsdp_timeline()
    blocking = simulate_fsdp(t, comm, 2, prefetch=False, reshard_after_forward=False)
    # forward: 3 gathers (15 ms); backward: 3 reduce-scatters, each waited for (15 ms); norm + loss (10 ms)
    assert blocking.step_ms == pytest.approx(30 + 60 + 8 / 2 + 15 + 15 + 10)
    overlapped = simulate_fsdp(t, comm, 2, prefetch=True, reshard_after_forward=False)
    assert overlapped.step_ms < blocking.step_ms  # h.1's reduce-scatter runs during h.0's backward


# ----------------------------------------------------------------------------- the straggler wait


def test_expected_lag_of_the_slowest_rank_matches_the_closed_forms():
    from gptdist.studies.simulator import expected_max_excess

    assert expected_max_excess(1) == 0.0
    assert expected_max_excess(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)  # E[max(X1, X2)]
    assert expected_max_excess(3) == pytest.approx(3 / (2 * math.sqrt(math.pi)), rel=1e-6)
    assert expected_max_excess(2) < expected_max_excess(4) < expected_max_excess(8)


def test_step_jitter_is_step_to_step_and_ignores_a_drift():
    """Periods alternating 100/110 ms: every successive difference is 10 ms, σ = 10 / (0.6745·√2) = 10.48 ms.
    Shifting the second half by +100 ms (the machine got slower) adds one 90 ms difference of seven: the median,
    and so the jitter, stays."""
    def rows(periods):
        return [{"step": i + 1, "step_ms": p, "timeline": {"phases": [["backward", 0, 1]],
                                                            "marks": [["bucket_ready", 0, 8, 1]]}}
                for i, p in enumerate(periods)]

    steady = timeline_from_steps(rows([100, 110] * 4), skip=0)
    drifting = timeline_from_steps(rows([100, 110, 100, 110, 200, 210, 200, 210]), skip=0)
    assert steady.step_jitter_ms == pytest.approx(10 / (0.6745 * math.sqrt(2)))
    assert drifting.step_jitter_ms == pytest.approx(steady.step_jitter_ms)


def test_ranks_wait_for_the_slowest_at_each_meeting():
    """σ = 10 ms of jitter, 2 ranks: the all-reduce schedule meets once per step and waits e_2·σ = 5.64 ms;
    FSDP without prefetch meets at each of its 8 collectives: each stretch between them jitters by σ/√8,
    8 waits of e_2·σ/√8 = e_2·σ·√8 = 15.96 ms. The wait is added to the step, and scales with the compute."""
    e2 = 1 / math.sqrt(math.pi)
    t = two_buckets()
    t.step_jitter_ms = 10.0
    quiet = simulate(two_buckets(), linear_comm(1.0, 0.0), 2, "manual")
    jittery = simulate(t, linear_comm(1.0, 0.0), 2, "manual")
    assert jittery.wait_ms == pytest.approx(e2 * 10) and quiet.wait_ms == 0.0
    assert jittery.step_ms - quiet.step_ms == pytest.approx(e2 * 10)
    assert simulate(t, linear_comm(1.0, 0.0), 2, "manual", contention=2.0).wait_ms == pytest.approx(e2 * 20)
    assert simulate(t, linear_comm(1.0, 0.0), 1, "manual").wait_ms == 0.0  # alone: nobody to wait for
    f = fsdp_timeline()
    f.step_jitter_ms = 10.0
    blocking = simulate(f, linear_comm(1.0, 0.0), 2, "fsdp", prefetch=False)
    assert len(blocking.schedule) == 8 and blocking.wait_ms == pytest.approx(e2 * 10 * math.sqrt(8))
    assert blocking.step_ms == pytest.approx(30 + 60 + 8 / 2 + 3 + 1 + 2 + 2 + 2 + e2 * 10 * math.sqrt(8))


def test_hardware_profile_ring_and_hierarchy():
    h = PROFILES["2x8-h100-ib-400g"]
    size = 100e6
    t8 = h.time_ms("all_reduce", size, 8)
    assert t8 == pytest.approx((h.intra_alpha_us + size * 2 * 7 / 8 / (h.intra_busbw_gbps * 1e3)) / 1e3)
    t16 = h.time_ms("all_reduce", size, 16)
    inter = (h.inter_alpha_us + size / 8 * 2 * 1 / 2 / (h.inter_busbw_gbps * 1e3)) / 1e3
    assert t16 == pytest.approx(t8 + inter)
    assert comm_from_profile("h100-nvlink-8")("all_reduce", size, 1) == 0.0
    with pytest.raises(ConfigError, match="unknown hardware profile"):
        comm_from_profile("tpu")


def test_comm_from_fit_reads_comm_bench_fit(tmp_path):
    fit = {"fits": [{"op": "all_reduce", "world_size": 2, "alpha_us": 100.0, "beta_us_per_byte": 0.001,
                     "algbw_gbps": 1.0, "busbw_gbps": 1.0, "rel_rms_error": 0.0, "r2_log": 1.0, "n_points": 2,
                     "min_bytes": 1, "max_bytes": 2}]}
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    comm = comm_from_fit(tmp_path / "fit.json")
    assert comm("all_reduce", 1e6, 2) == pytest.approx((100 + 1000) / 1e3)
    # 4 ranks, extrapolated with the same busbw: time = α + bytes·(2·3/4)/(busbw)
    assert comm("all_reduce", 1e6, 4) == pytest.approx((100 + 1e6 * 1.5 * 0.001) / 1e3)


def test_timeline_from_steps_takes_medians_relative_to_backward():
    def row(step, shift):
        return {"step": step, "step_ms": 40.0 + shift, "timeline": {
            "phases": [["data", 0, 1], ["forward", 1, 10 + shift], ["backward", 10 + shift, 30 + shift],
                       ["grad_sync", 30 + shift, 31 + shift], ["optimizer", 31 + shift, 36 + shift]],
            "marks": [["bucket_ready", 0, 100, 15 + shift], ["bucket_ready", 1, 400, 30 + shift]]}}

    t = timeline_from_steps([row(1, 50.0), row(2, 0.0), row(3, 1.0), row(4, 2.0)], skip=1)
    assert t.pre_ms == pytest.approx(11.0) and t.backward_ms == pytest.approx(20.0)
    assert [(b.index, b.bytes, b.ready_ms) for b in t.buckets] == [(0, 100, 5.0), (1, 400, 20.0)]
    assert t.post_ms["optimizer"] == pytest.approx(5.0) and t.post_ms["grad_sync"] == pytest.approx(1.0)
    assert t.other_ms == pytest.approx(4.0) and t.data_ms == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="bucket_ready"):
        timeline_from_steps([{"step": 1, "step_ms": 1.0, "timeline": {"phases": [["backward", 0, 1]], "marks": []}}], 0)


def test_runs_of_one_job_pool_their_kept_steps():
    """Two runs of the same job (e.g. before and after a study, on a machine whose speed drifts): each leaves
    out its own warm-up, and every median is over all the kept steps. By hand: pre = 10 + shift, so the kept
    pres are 10, 12 (first run) and 20, 22 (second run): median 16; steps 40 + shift: median 46."""
    def row(step, shift):
        return {"step": step, "step_ms": 40.0 + shift, "timeline": {
            "phases": [["forward", 0, 10 + shift], ["backward", 10 + shift, 30 + shift]],
            "marks": [["bucket_ready", 0, 100, 30 + shift]]}}

    first = [row(1, 90.0), row(2, 0.0), row(3, 2.0)]
    second = [row(1, 90.0), row(2, 10.0), row(3, 12.0)]  # the same step numbers: pooled, not merged by step
    t = timeline_from_steps(first, skip=1, more_runs=[second])
    assert t.pre_ms == pytest.approx(16.0) and t.step_ms == pytest.approx(46.0) and t.backward_ms == pytest.approx(20.0)
    assert timeline_from_steps(first, skip=1).pre_ms == pytest.approx(11.0)  # one run alone: its own median


def test_pooling_refuses_runs_of_another_job(tmp_path):
    data = make_token_dataset(tmp_path / "data")

    def run(name, batch):
        cfg = build_config(None, {
            "backend": "manual", "model.preset": "test", "data.dir": str(data), "data.batch_size": batch,
            "data.seq_len": 16, "train.max_steps": 3, "eval.val_every": 0, "checkpoint.at_end": False,
            "log.out_dir": str(tmp_path), "log.run_name": name})
        train(cfg, init_distributed("cpu", need_group=True))
        return tmp_path / name

    a, b, other = run("a", 2), run("b", 2), run("other", 4)
    pooled = timeline_from_run(a, skip=1, more_runs=[b])
    assert pooled.tokens_per_step == 32 and pooled.source == f"{a},{b}"
    # the pooled medians lie within what the two runs measured alone
    alone = [timeline_from_run(r, skip=1) for r in (a, b)]
    assert min(t.step_ms for t in alone) <= pooled.step_ms <= max(t.step_ms for t in alone)
    with pytest.raises(ConfigError, match="not the same job"):
        timeline_from_run(a, skip=1, more_runs=[other])


def test_timeline_other_is_taken_from_the_step_period():
    """With end times, `other` is the period (previous step's end to this one's) minus the phases: the work
    between steps counts, as in the scaling study's step."""
    def row(step, end_s):
        return {"step": step, "step_ms": 40.0, "end_unix_s": end_s, "timeline": {
            "phases": [["forward", 0, 10], ["backward", 10, 30], ["optimizer", 30, 36]],
            "marks": [["bucket_ready", 0, 100, 30]]}}

    # periods 45 ms (40 in the step + 5 between steps); the phases account for 36
    t = timeline_from_steps([row(1, 100.000), row(2, 100.045), row(3, 100.090)], skip=1)
    assert t.step_ms == pytest.approx(45.0) and t.other_ms == pytest.approx(9.0)


def test_ddp_marks_its_own_bucket_layout(tmp_path):
    """A 1-rank DDP run marks each bucket as DDP launches it, with DDP's bucket sizes (its rebuilt layout,
    not the manual backend's), so the simulator replays DDP as it runs."""
    data = make_token_dataset(tmp_path / "data")
    cfg = build_config(None, {
        "backend": "ddp", "model.preset": "test", "data.dir": str(data), "data.batch_size": 2, "data.seq_len": 16,
        "train.max_steps": 3, "eval.val_every": 0, "checkpoint.at_end": False, "log.out_dir": str(tmp_path),
        "log.run_name": "run", "parallel.ddp.bucket_cap_mb": 0.01})
    train(cfg, init_distributed("cpu", need_group=True))
    rank_dir = tmp_path / "run/ranks/rank0"
    rows = [json.loads(line) for line in (rank_dir / "steps.jsonl").read_text().splitlines()]
    launched = [json.loads(line) for line in (rank_dir / "collectives.jsonl").read_text().splitlines()]
    for r in rows:
        marks = r["timeline"]["marks"]
        buckets = {c["label"]: c["bytes"] for c in launched if c["step"] == r["step"] and c["label"].startswith("bucket=")}
        assert {f"bucket={m[1]}": m[2] for m in marks} == buckets
        b_start, b_end = next((s, e) for name, s, e in r["timeline"]["phases"] if name == "backward")
        assert all(b_start <= m[3] <= b_end for m in marks)
    assert len(rows[-1]["timeline"]["marks"]) >= 2  # a 0.01 MB cap: several buckets (torch 2.13: from step 2 on)
    # every step's end time: the period (end to end) is at least the step itself
    ends = [r["end_unix_s"] for r in rows]
    assert all(b - a >= r["step_ms"] / 1e3 - 1e-4 for a, b, r in zip(ends, ends[1:], rows[1:]))
    t = timeline_from_run(tmp_path / "run", skip=1)
    assert t.backend == "ddp" and t.param_bytes == sum(c["bytes"] for c in launched if c["step"] == rows[-1]["step"]
                                                       and c["label"].startswith("bucket="))


def test_fsdp_run_gives_a_timeline_without_buckets(tmp_path):
    data = make_token_dataset(tmp_path / "data")
    cfg = build_config(None, {
        "backend": "fsdp", "model.preset": "test", "data.dir": str(data), "data.batch_size": 2, "data.seq_len": 16,
        "train.max_steps": 3, "eval.val_every": 0, "checkpoint.at_end": False, "log.out_dir": str(tmp_path),
        "log.run_name": "run"})
    train(cfg, init_distributed("cpu", need_group=True))
    t = timeline_from_run(tmp_path / "run", skip=1)
    assert t.backend == "fsdp" and t.buckets == [] and t.pre_ms > 0 and t.backward_ms > 0 and t.model["n_layer"] > 0
    # the units' bytes are the real model's parameters (fp32): the root holds wte (tied to lm_head), wpe (block_size
    # rows, not seq_len) and ln_f; each block its own
    from gptdist.config import resolve_model
    from gptdist.model import GPT

    params = dict(GPT(resolve_model(cfg)).named_parameters())  # a tied weight once
    root = sum(p.numel() for n, p in params.items() if ".h." not in n)
    blocks = [sum(p.numel() for n, p in params.items() if f".h.{i}." in n) for i in range(t.model["n_layer"])]
    assert [b for _, b, _ in fsdp_units(t.model)] == [4 * root] + [4 * b for b in blocks]
    # The reference is the same timeline with free communication, not the measured step: the prediction
    # divides the (noisy) optimizer time by N, which can outweigh a tiny comm cost. With 1 ms per collective
    # and no prefetch every collective is waited for, so the step grows by exactly one ms per collective:
    # forward all-gathers (root + L blocks), backward all-gathers (L blocks, resharded after forward),
    # reduce-scatters (L blocks + root), the grad-norm and the loss all-reduces: 3L + 4 ms.
    n_layer = t.model["n_layer"]
    free, costly = (simulate(t, linear_comm(a, 0.0), 2, "fsdp", prefetch=False) for a in (0.0, 1.0))
    assert len(costly.schedule) == 3 * n_layer + 2
    assert costly.step_ms - free.step_ms == pytest.approx(3 * n_layer + 4)
    assert costly.exposed_ms == pytest.approx(3 * n_layer + 4) and free.exposed_ms == pytest.approx(0.0)
    # With prefetch, part of it hides behind compute, never more than all of it.
    free_p, costly_p = (simulate(t, linear_comm(a, 0.0), 2, "fsdp") for a in (0.0, 1.0))
    assert 0 < costly_p.step_ms - free_p.step_ms <= 3 * n_layer + 4 + 1e-9
    with pytest.raises(ConfigError, match="no gradient buckets"):
        simulate(t, linear_comm(1.0, 0.0), 2, "manual")


def test_timeline_other_is_the_residual_of_the_medians_and_can_be_negative():
    """Medians do not add: here the parts' medians (pre 20 + backward 20) exceed the median step (35), so
    `other` is -5 and the timeline replayed at one rank gives back the measured 35 ms."""
    def row(step, pre, bwd):
        return {"step": step, "step_ms": pre + bwd, "timeline": {
            "phases": [["forward", 0, pre], ["backward", pre, pre + bwd]], "marks": [["bucket_ready", 0, 8, pre + bwd]]}}

    t = timeline_from_steps([row(1, 10, 25), row(2, 20, 20), row(3, 25, 10)], skip=0)
    assert t.step_ms == 35 and t.pre_ms == 20 and t.backward_ms == 20 and t.other_ms == pytest.approx(-5.0)
    assert simulate(t, linear_comm(1.0, 0.0), 1, "manual").step_ms == pytest.approx(35.0)


def test_manual_backend_marks_every_bucket_ready_inside_backward(tmp_path):
    """The hook: a real 1-rank manual run writes bucket_ready marks, and the timeline round-trips."""
    data = make_token_dataset(tmp_path / "data")
    cfg = build_config(None, {
        "backend": "manual", "model.preset": "test", "data.dir": str(data), "data.batch_size": 2, "data.seq_len": 16,
        "train.max_steps": 3, "eval.val_every": 0, "checkpoint.at_end": False, "log.out_dir": str(tmp_path),
        "log.run_name": "run", "parallel.manual.bucket_cap_mb": 0.01, "parallel.manual.first_bucket_mb": 0.001})
    train(cfg, init_distributed("cpu", need_group=True))
    rows = [json.loads(line) for line in (tmp_path / "run/ranks/rank0/steps.jsonl").read_text().splitlines()]
    for r in rows:
        phases = {name: (s, e) for name, s, e in r["timeline"]["phases"]}
        marks = r["timeline"]["marks"]
        assert len(marks) >= 3 and sorted(m[1] for m in marks) == list(range(len(marks)))  # every bucket once
        b_start, b_end = phases["backward"]
        assert all(b_start <= m[3] <= b_end for m in marks)
    t = timeline_from_run(tmp_path / "run", skip=1)
    assert len(t.buckets) == len(rows[0]["timeline"]["marks"]) and t.model["n_layer"] > 0
    t.save(tmp_path / "t.json")
    assert load_timeline(tmp_path / "t.json") == t


def test_modelled_timeline_is_flops_at_mfu():
    model = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50304, "seq_len": 1024}
    t = modelled_timeline(model, tokens_per_rank=16 * 1024, peak_tflops=989.0, mfu=0.4)
    from gptdist.flops import flops_per_token
    from gptdist.model import GPTConfig

    fpt = flops_per_token(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304), 1024)
    assert t.pre_ms + t.backward_ms == pytest.approx(fpt * 16 * 1024 / (989e12 * 0.4) * 1e3)
    assert t.buckets[-1].ready_ms == pytest.approx(t.backward_ms)  # the tied embedding bucket is ready last
    assert all(a.ready_ms <= b.ready_ms for a, b in zip(t.buckets, t.buckets[1:]))
    assert not math.isnan(simulate(t, comm_from_profile("h100-nvlink-8"), 8).step_ms)


def test_batch_compute_scale_is_affine_through_two_points():
    from gptdist.studies.simulator import batch_compute_scale

    big = Timeline(pre_ms=30.0, backward_ms=70.0, post_ms={}, other_ms=0.0, buckets=[], tokens_per_step=800)
    small = Timeline(pre_ms=10.0, backward_ms=20.0, post_ms={}, other_ms=0.0, buckets=[], tokens_per_step=200)
    # work = 100 ms at 800 tokens, 30 ms at 200: slope 70/600 ms per token, intercept 100 - 800*70/600 = 6.67 ms
    assert batch_compute_scale(big, small, 400) == pytest.approx((100 - 400 * 70 / 600) / 100)
    assert batch_compute_scale(big, small, 200) == pytest.approx(0.3)
    with pytest.raises(ConfigError):
        batch_compute_scale(big, big, 100)


def test_timeline_for_tokens_replays_the_measured_batch_or_the_nearest_scaled():
    """Strong scaling on 2 cores: a rank at 2 and 2x1 computes 4 sequences, at 2x2 2 sequences; the timeline
    measured at that batch is replayed as it is, any other batch the nearest one scaled affinely."""
    from gptdist.studies.simulator import timeline_for_tokens

    def at(tokens, work):  # pre 1/4 of the work, backward 3/4
        return Timeline(pre_ms=work / 4, backward_ms=3 * work / 4, post_ms={}, other_ms=0.0, buckets=[],
                        tokens_per_step=tokens)

    b8, b4, b2 = at(800, 100.0), at(400, 60.0), at(200, 40.0)  # work: 20 ms fixed + 0.1 ms/token
    assert timeline_for_tokens([b8, b4, b2], 400) == (b4, 1.0)
    assert timeline_for_tokens([b8, b4, b2], 200) == (b2, 1.0)
    # 300 tokens: 100 from both 200 and 400 (a tie: the larger), affine through them: 20 + 30 = 50 ms of 60
    t, scale = timeline_for_tokens([b8, b2, b4], 300)
    assert t is b4 and scale == pytest.approx(50 / 60)
    # 700 tokens: nearest 800, between 400 and 800 (slope 0.1): 90 ms of 100
    t, scale = timeline_for_tokens([b8, b4, b2], 700)
    assert t is b8 and scale == pytest.approx(0.9)
    # 100 tokens, below every batch: the two nearest (200, 400) extrapolated: 30 ms of the 200's 40
    t, scale = timeline_for_tokens([b8, b4, b2], 100)
    assert t is b2 and scale == pytest.approx(30 / 40)
    # one timeline: a straight share (strong scaling's 1/N)
    assert timeline_for_tokens([b8], 200) == (b8, 0.25)
    # a rehearsal of 2 ranks at 400 tokens: replayed as is by a 2-rank layout at that batch, by nothing else
    r2 = at(400, 70.0)
    r2.world_size = 2
    assert timeline_for_tokens([b8, r2, b4, b2], 400, world=2) == (r2, 1.0)
    assert timeline_for_tokens([b8, r2, b4, b2], 400, world=1) == (b4, 1.0)
    assert timeline_for_tokens([b8, r2, b4, b2], 400, world=4) == (b4, 1.0)
    assert timeline_for_tokens([b8, r2, b2], 200, world=2) == (b2, 1.0)
    t, scale = timeline_for_tokens([b8, r2, b2], 300, world=2)  # scaled between the 1-rank ones only
    assert t is b2 and scale == pytest.approx(50 / 40)
    with pytest.raises(ConfigError, match="tokens_per_step"):
        timeline_for_tokens([b8, at(0, 10.0)], 400)


def test_cli_validate_uses_each_backends_own_timeline(tmp_path):
    """`simulate.py validate manual=A,ddp=B`: each backend is replayed from its own timeline (DDP's bucket
    layout differs from the manual backend's), errors are predicted / measured - 1, per row."""
    from launchers import launcher_main, python

    simulate_cli = launcher_main("launch/simulate.py")  # the success paths in this process, the refusals as commands

    manual = two_buckets()
    manual.tokens_per_step = 16  # the timeline's run: 4 sequences of 4 tokens
    ddp = Timeline(pre_ms=10.0, backward_ms=20.0, post_ms={"optimizer": 5.0}, other_ms=1.0,
                   buckets=[BucketTiming(0, 2000, 20.0)], backend="ddp", tokens_per_step=16)  # one bucket, ready at the end
    manual.save(tmp_path / "manual.json")
    ddp.save(tmp_path / "ddp.json")
    fit = {"fits": [{"op": "all_reduce", "world_size": 2, "alpha_us": 1000.0, "beta_us_per_byte": 2.0,
                     "algbw_gbps": 1.0, "busbw_gbps": 1.0, "rel_rms_error": 0.0, "r2_log": 1.0, "n_points": 2,
                     "min_bytes": 1, "max_bytes": 2}]}
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    # strong: global batch 4 -> 4, 2 sequences per rank; weak: 2 per rank (half the timeline's batch)
    batch = {("strong", 1): 4, ("strong", 2): 2, ("weak", 1): 2, ("weak", 2): 2}
    measured = {(m, b, n): 30.0 + n + (b == "ddp") for m in ("strong", "weak") for b in ("manual", "ddp") for n in (1, 2)}
    study = {"meta": {"seq_len": 4},
             "rows": [{"mode": m, "backend": b, "world": n, "layout": str(n), "batch_size": batch[m, n], "step_ms": ms,
                       "run": f"{b}-n{n}-b{batch[m, n]}",
                       "step_p25": ms, "step_p75": ms, "slowest_step_ms": ms + 2,
                       "parts": {"compute": 1.0, "exposed": 1.0, "wait": 0.0}, "transfer_ms": 4.0}
                      for (m, b, n), ms in measured.items()]}
    (tmp_path / "study.json").write_text(json.dumps(study))
    out = tmp_path / "val"
    simulate_cli(["validate", f"manual={tmp_path / 'manual.json'},ddp={tmp_path / 'ddp.json'}",
                  "--backends", "manual,ddp", "--modes", "strong,weak", "--fit", str(tmp_path / "fit.json"),
                  "--study", str(tmp_path / "study.json"), "--out", str(out)])
    validation = json.loads((out / "validation.json").read_text())
    assert validation["provenance"]["command"].startswith("python launch/simulate.py validate")
    rows = {(r["mode"], r["backend"], r["world"]): r for r in validation["rows"]}
    assert set(rows) == set(measured)
    comm = comm_from_fit(tmp_path / "fit.json")
    for (mode, backend, n), r in rows.items():
        timeline = manual if backend == "manual" else ddp
        expected = simulate(timeline, comm, n, backend, compute_scale=batch[mode, n] * 4 / 16).step_ms
        assert r["predicted_ms"] == pytest.approx(expected, rel=1e-9)
        assert r["error"] == pytest.approx(expected / measured[mode, backend, n] - 1)
        assert r["error_vs_slowest_rank"] == pytest.approx(expected / (measured[mode, backend, n] + 2) - 1)
    # ddp's single bucket cannot start before backward ends: slower than the manual backend's two
    assert rows["strong", "ddp", 2]["predicted_ms"] > rows["strong", "manual", 2]["predicted_ms"]
    # The model's collectives are transfers; they are compared with the measured transfer (4 ms). By hand
    # (alpha 1 ms, 2 us/byte): manual, two 1000-byte buckets 3 ms each + the 8-byte loss all-reduce 1.016 ms;
    # ddp, one 2000-byte bucket 5 ms + 1.016 ms.
    for backend, comm_ms in (("manual", 7.016), ("ddp", 6.016)):
        r = rows["strong", backend, 2]
        assert r["measured_transfer_ms"] == 4.0 and r["predicted_transfer_ms"] == pytest.approx(comm_ms)
        assert r["transfer_error"] == pytest.approx(comm_ms / 4.0 - 1)
    assert "| strong | ddp | 2 |" in (out / "validation.md").read_text()
    assert "| 4.0 / 6.0 |" in (out / "validation.md").read_text()
    assert all((out / f"validation_{mode}.png").stat().st_size > 1000 for mode in ("strong", "weak"))

    # The same study run in parts (one results.json per backend, e.g. each between its own inputs): the same rows
    for backend in ("manual", "ddp"):
        part = {**study, "rows": [r for r in study["rows"] if r["backend"] == backend]}
        (tmp_path / f"study_{backend}.json").write_text(json.dumps(part))
    parts = ["--study", str(tmp_path / "study_manual.json"), "--study", str(tmp_path / "study_ddp.json")]
    simulate_cli(["validate", f"manual={tmp_path / 'manual.json'},ddp={tmp_path / 'ddp.json'}",
                  "--backends", "manual,ddp", "--modes", "strong,weak", "--fit", str(tmp_path / "fit.json"), *parts,
                  "--out", str(tmp_path / "val_parts")])
    in_parts = json.loads((tmp_path / "val_parts" / "validation.json").read_text())["rows"]
    assert [(r["backend"], r["world"], r["predicted_ms"], r["error"]) for r in in_parts] == \
        [(r["backend"], r["world"], r["predicted_ms"], r["error"]) for r in validation["rows"]]
    twice = python(["launch/simulate.py", "validate", str(tmp_path / "manual.json"), "--fit", str(tmp_path / "fit.json"),
                    "--study", str(tmp_path / "study.json"), "--study", str(tmp_path / "study_manual.json")], check=False)
    assert twice.returncode == 2 and "strong/manual/1 is measured in both" in twice.stderr

    # --runs: only the rows of the named runs (one validate per run, each from the inputs measured around it); the
    # run at 2 ranks and 2 sequences serves both modes, so both its rows, predicted as in the whole validation
    simulate_cli(["validate", f"manual={tmp_path / 'manual.json'},ddp={tmp_path / 'ddp.json'}",
                  "--backends", "manual,ddp", "--modes", "strong,weak", "--fit", str(tmp_path / "fit.json"),
                  "--study", str(tmp_path / "study.json"), "--runs", "manual-n2-b2", "--out", str(tmp_path / "val_run")])
    one_run = json.loads((tmp_path / "val_run" / "validation.json").read_text())["rows"]
    assert [(r["mode"], r["backend"], r["world"]) for r in one_run] == [("strong", "manual", 2), ("weak", "manual", 2)]
    assert [r["predicted_ms"] for r in one_run] == [rows["strong", "manual", 2]["predicted_ms"],
                                                    rows["weak", "manual", 2]["predicted_ms"]]
    bad = python(["launch/simulate.py", "validate", str(tmp_path / "manual.json"), "--fit", str(tmp_path / "fit.json"),
                  "--study", str(tmp_path / "study.json"), "--runs", "manual-n8-b1"], check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: --runs: manual-n8-b1 not in {tmp_path / 'study.json'}"]
    with pytest.raises(ConfigError, match="--runs: manual-n2-b2 has no row of --backends ddp"):
        simulate_cli(["validate", str(tmp_path / "ddp.json"), "--backends", "ddp", "--fit", str(tmp_path / "fit.json"),
                      "--study", str(tmp_path / "study.json"), "--runs", "manual-n2-b2"])

    # Measured contention: 2=1.2 for every backend, ddp@2=1.1:1.5 (forward-backward : clip + optimizer, measured
    # during ddp's part) for ddp only; N=1 keeps the formula's 1 (no --cores: 1).
    simulate_cli(["validate", f"manual={tmp_path / 'manual.json'},ddp={tmp_path / 'ddp.json'}",
                  "--backends", "manual,ddp", "--modes", "strong", "--fit", str(tmp_path / "fit.json"),
                  "--study", str(tmp_path / "study.json"), "--contention", "2=1.2,ddp@2=1.1:1.5", "--out", str(tmp_path / "val_c")])
    contended = {(r["backend"], r["world"]): r for r in json.loads((tmp_path / "val_c" / "validation.json").read_text())["rows"]}
    for (backend, n), (fb, up) in {("manual", 2): (1.2, 1.2), ("ddp", 2): (1.1, 1.5), ("ddp", 1): (1.0, 1.0)}.items():
        timeline = manual if backend == "manual" else ddp
        expected = simulate(timeline, comm, n, backend, compute_scale=batch["strong", n] * 4 / 16, contention=fb,
                            update_contention=up).step_ms
        assert contended[backend, n]["predicted_ms"] == pytest.approx(expected, rel=1e-9)
        assert (contended[backend, n]["contention"], contended[backend, n]["update_contention"]) == (fb, up)
    bad = python(["launch/simulate.py", "validate", str(tmp_path / "manual.json"), "--fit", str(tmp_path / "fit.json"),
                  "--study", str(tmp_path / "study.json"), "--contention", "2=1.1:0"], check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "'2=1.1:0'" in bad.stderr

    # With a second timeline measured at 2 sequences, the runs at that batch are replayed from it as they are
    # (the weak rows), the others from the affine compute(batch) through both (the strong N=1 row: the first).
    small = Timeline(pre_ms=4.0, backward_ms=9.0, post_ms={"optimizer": 5.0}, other_ms=0.5,
                     buckets=[BucketTiming(0, 1000, 2.0), BucketTiming(1, 1000, 9.0)], tokens_per_step=8)
    small.save(tmp_path / "small.json")
    simulate_cli(["validate", str(tmp_path / "manual.json"), "--small-timeline", str(tmp_path / "small.json"),
                  "--modes", "strong,weak", "--fit", str(tmp_path / "fit.json"), "--study", str(tmp_path / "study.json"),
                  "--out", str(out)])
    rows = {(r["mode"], r["world"]): r for r in json.loads((out / "validation.json").read_text())["rows"]}
    for n in (1, 2):
        assert rows["weak", n]["predicted_ms"] == pytest.approx(simulate(small, comm, n, "manual").step_ms, rel=1e-9)
        assert rows["weak", n]["timeline"] == str(tmp_path / "small.json")
    assert rows["strong", 1]["predicted_ms"] == pytest.approx(simulate(manual, comm, 1, "manual").step_ms, rel=1e-9)
    assert rows["strong", 2]["predicted_ms"] == pytest.approx(simulate(small, comm, 2, "manual").step_ms, rel=1e-9)
    # a batch between the two (3 sequences = 12 tokens): compute affine through both timelines' pre + backward,
    # (13 ms at 8 tokens, 30 at 16) -> 21.5 ms at 12, a scale of 21.5 / 30 on the big timeline
    study["rows"] = [{**r, "batch_size": 3} for r in study["rows"] if r["mode"] == "weak"]
    (tmp_path / "study3.json").write_text(json.dumps(study))
    simulate_cli(["validate", str(tmp_path / "manual.json"), "--small-timeline", str(tmp_path / "small.json"),
                  "--modes", "weak", "--fit", str(tmp_path / "fit.json"), "--study", str(tmp_path / "study3.json"),
                  "--out", str(out)])
    rows = {r["world"]: r for r in json.loads((out / "validation.json").read_text())["rows"] if r["backend"] == "manual"}
    for n in (1, 2):
        expected = simulate(manual, comm, n, "manual", compute_scale=21.5 / 30).step_ms
        assert rows[n]["predicted_ms"] == pytest.approx(expected, rel=1e-9)

    bad = python(["launch/simulate.py", "validate", f"tpu={tmp_path / 'manual.json'}", "--fit", str(tmp_path / "fit.json"),
                  "--study", str(tmp_path / "study.json")], check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: timeline: expected PATH or BACKEND=PATH,... with backends manual, ddp, fsdp; got 'tpu={tmp_path / 'manual.json'}'"]


def test_cli_predict_writes_rows_and_predicted_plots(tmp_path):
    from launchers import python

    two_buckets().save(tmp_path / "t.json")
    out = tmp_path / "pred"
    python(["launch/simulate.py", "predict", str(tmp_path / "t.json"), "--profile", "h100-nvlink-8", "--modes", "weak",
            "--world-sizes", "1,2,4,8", "--out", str(out)])
    data = json.loads((out / "predicted.json").read_text())
    assert [r["world"] for r in data["rows"]] == [1, 2, 4, 8] and set(data["timelines"]) == {"manual"}
    assert data["provenance"]["command"].startswith("python launch/simulate.py predict") and data["provenance"]["torch"]
    comm = comm_from_profile("h100-nvlink-8")
    assert data["rows"][-1]["step_ms"] == pytest.approx(simulate(two_buckets(), comm, 8, "manual").step_ms)
    for name in ("efficiency", "breakdown", "throughput"):
        assert (out / f"{name}_weak.png").stat().st_size > 1000


def test_comm_from_table_interpolates_the_measured_times(tmp_path):
    rows = [{"op": "all_gather", "world_size": 2, "size_bytes": s, "time_us": t}
            for s, t in [(1000, 10.0), (2000, 20.0), (4000, 30.0)]]
    (tmp_path / "n2").mkdir()
    (tmp_path / "n2" / "results.json").write_text(json.dumps({"metadata": {}, "results": rows}))
    comm = comm_from_table([tmp_path / "n2"])  # a folder holding results.json
    assert comm("all_gather", 1500, 2) == pytest.approx(15.0 / 1e3)  # between two measured sizes
    assert comm("all_gather", 3000, 2) == pytest.approx(25.0 / 1e3)
    assert comm("all_gather", 10, 2) == pytest.approx(10.0 / 1e3)  # below the range: the smallest size's time
    assert comm("all_gather", 6000, 2) == pytest.approx((30.0 + 10.0 / 2000 * 2000) / 1e3)  # last slope onwards
    assert comm("all_gather", 6000, 1) == 0.0
    # a noisy top (the largest size measured faster than the one before): never a shorter time for more
    # bytes, nor a negative one; the largest size's 25 us / 4000 B carried on: 25 + 2000 * 25 / 4000 = 37.5 us
    noisy = tmp_path / "noisy.json"
    noisy.write_text(json.dumps({"results": [{"op": "all_gather", "world_size": 2, "size_bytes": s, "time_us": t}
                                             for s, t in [(1000, 10.0), (2000, 30.0), (4000, 25.0)]]}))
    assert comm_from_table([noisy])("all_gather", 6000, 2) == pytest.approx(37.5 / 1e3)
    with pytest.raises(ConfigError, match=r"no reduce_scatter at 2 ranks \(measured: all_gather@2\)"):
        comm("reduce_scatter", 1000, 2)
    with pytest.raises(ConfigError, match="comm table not found"):
        comm_from_table([tmp_path / "missing.json"])
    (tmp_path / "n2x1").mkdir()
    (tmp_path / "n2x1" / "results.json").write_text(json.dumps({"metadata": {}, "results": rows}))
    with pytest.raises(ConfigError, match="both measure all_gather at 2 ranks"):
        comm_from_table([tmp_path / "n2", tmp_path / "n2x1"])


def test_comm_tables_of_one_layout_are_pooled_and_of_two_layouts_refused(tmp_path):
    def table(name, nodes, times):  # all_gather at 2 ranks, 1000 and 2000 B
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"metadata": {"nodes": nodes, "local_world_size": 2 // nodes}, "results": [
            {"op": "all_gather", "world_size": 2, "size_bytes": s, "time_us": t} for s, t in zip((1000, 2000), times)]}))
        return path

    before, after = table("before", 1, (10.0, 30.0)), table("after", 1, (20.0, 50.0))
    pooled = comm_from_table([before, after])  # measured before and after a study: their mean at each size
    assert pooled("all_gather", 1000, 2) == pytest.approx(15.0 / 1e3)
    assert pooled("all_gather", 1500, 2) == pytest.approx(27.5 / 1e3)  # halfway between 15 and 40
    with pytest.raises(ConfigError, match="different .* layouts"):
        comm_from_table([before, table("inter", 2, (100.0, 200.0))])  # 2 ranks in one node vs across two
    inter = inter_tables(f"2x1={table('inter', 2, (100.0, 200.0))},2x1={table('inter_after', 2, (300.0, 400.0))}")
    assert inter["2x1"]("all_gather", 2000, 2) == pytest.approx(300.0 / 1e3)


def test_cli_sizes_lists_what_the_schedule_will_ask_of_the_comm_tables(tmp_path):
    from launchers import python

    two_buckets().save(tmp_path / "manual.json")  # two 1000-byte buckets
    fsdp = fsdp_timeline()
    fsdp.backend = "fsdp"
    fsdp.save(tmp_path / "fsdp.json")
    proc = python(["launch/simulate.py", "sizes", str(tmp_path / "manual.json"), str(tmp_path / "fsdp.json"),
                   "--world-sizes", "2,2x2"])
    # the 8-byte loss all-reduce; the buckets; FSDP's units in fp32 (d = 8, V = 16, T = 4): the root
    # (V·d + T·d + 2·d) · 4 = (128 + 32 + 16) · 4 = 704 B, a block (12·d² + 13·d) · 4 = (768 + 104) · 4 = 3488 B
    assert proc.stdout.strip() == "8,704,1000,3488"


def test_cli_predict_with_measured_comm_tables(tmp_path):
    from launchers import python

    rows = [{"op": "all_reduce", "world_size": 2, "size_bytes": s, "time_us": t} for s, t in [(8, 50.0), (4000, 2050.0)]]
    (tmp_path / "n2").mkdir()
    (tmp_path / "n2" / "results.json").write_text(json.dumps({"metadata": {}, "results": rows}))
    two_buckets().save(tmp_path / "t.json")
    python(["launch/simulate.py", "predict", str(tmp_path / "t.json"), "--comm-table", str(tmp_path / "n2"),
            "--world-sizes", "1,2", "--out", str(tmp_path / "pred")])
    data = json.loads((tmp_path / "pred" / "predicted.json").read_text())
    expected = simulate(two_buckets(), comm_from_table([tmp_path / "n2"]), 2, "manual", compute_scale=0.5).step_ms
    assert data["rows"][1]["step_ms"] == pytest.approx(expected, rel=1e-9)
    bad = python(["launch/simulate.py", "predict", str(tmp_path / "t.json"), "--comm-table", str(tmp_path / "n2"),
                  "--world-sizes", "1,4"], check=False)
    assert bad.returncode == 2 and "no all_reduce at 4 ranks (measured: all_reduce@2)" in bad.stderr
