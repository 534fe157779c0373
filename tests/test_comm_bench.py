"""comm_bench: real gloo sweeps on 2 and 4 ranks, the busbw arithmetic, output files, the α–β fit,
bad arguments, the plot script and the bucket-sweep plumbing."""

from __future__ import annotations

import csv
import json
import math
import textwrap

import numpy as np
import pytest
import torch

from comm_bench import bucket_sweep, harness
from gptdist.studies import alphabeta
from gptdist.errors import ConfigError
from launchers import python, torchrun

FACTORS_N4 = {"all_reduce": 1.5, "all_gather": 0.75, "reduce_scatter": 0.75, "all_to_all": 0.75, "broadcast": 1.0}


# ---------------------------------------------------------------------------------------------
# Real sweeps (one run per world size, shared by the checks below)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """{2: out_dir, 4: out_dir}: every op, 4 B .. 64 KiB; 2 ranks in-place, 4 ranks out-of-place."""
    outs = {}
    for n, placement in ((2, "--inplace"), (4, "--out-of-place")):
        out = tmp_path_factory.mktemp(f"cb{n}")
        proc = torchrun(["comm_bench/run_all.py", "-b", "4", "-e", "64K", "-w", "1", "-n", "2", placement, "--out", str(out), "--overwrite"],
                        nproc=n, timeout=120)
        (out / "stdout.txt").write_text(proc.stdout)
        outs[n] = out
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_sweep_rows_obey_nccl_tests_arithmetic(sweeps, n):
    data = json.loads((sweeps[n] / "results.json").read_text())
    rows, meta = data["results"], data["metadata"]
    assert meta["world_size"] == n and meta["backend"] == "gloo" and meta["torch_version"] == torch.__version__
    assert meta["hardware"]["cpu_logical_cores"] >= 1 and meta["nodes"] == 1
    # measured under the allocator setting a CPU training step runs with (gptdist/cpu_memory.py), so the
    # simulator's tables price the step's collectives, not glibc's page faults on gloo's large buffers
    assert meta["cpu_keeps_freed_memory"] is True
    assert {r["op"] for r in rows} == set(alphabeta.OPS)
    for r in rows:
        assert r["wrong"] == 0, r
        assert r["time_us"] > 0 and r["time_us_min_rank"] <= r["time_us"] <= r["time_us_max_rank"]  # max over ranks
        assert r["algbw_gbps"] == pytest.approx(r["size_bytes"] / (r["time_us"] * 1e-6) / 1e9, rel=1e-9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * alphabeta.busbw_factor(r["op"], n), rel=1e-9)
        elt = 4  # float32
        if r["op"] in ("all_gather", "reduce_scatter", "all_to_all"):
            # nccl-tests: size is the whole buffer, count the per-rank (per-peer) element count
            assert r["size_bytes"] % (n * elt) == 0 and r["count"] * n * elt == r["size_bytes"]
        else:
            assert r["count"] * elt == r["size_bytes"]
    sizes = sorted(r["size_bytes"] for r in rows if r["op"] == "all_reduce")
    assert sizes == [4 << k for k in range(15)]  # 4 B .. 64 KiB in powers of two
    placements = {r["op"]: r["placement"] for r in rows}
    assert placements["all_reduce"] == "in-place" and placements["all_to_all"] == "out-of-place"
    assert placements["all_gather"] == ("in-place" if n == 2 else "out-of-place")
    if n == 4:
        assert {op: alphabeta.busbw_factor(op, 4) for op in alphabeta.OPS} == FACTORS_N4

    # the CSV holds the same rows
    with open(sweeps[n] / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert all(float(c["busbw_gbps"]) == pytest.approx(r["busbw_gbps"]) and c["op"] == r["op"] for c, r in zip(csv_rows, rows))

    # the console table, like nccl-tests'
    out = (sweeps[n] / "stdout.txt").read_text()
    assert f"nranks {n}" in out and "backend gloo" in out and "Avg bus bandwidth" in out and "#wrong" in out
    assert "Out of bounds values : 0 OK" in out and "FAILED" not in out

    # fit.json loads and answers for every op at this world size
    model = alphabeta.load_fit(sweeps[n] / "fit.json")
    for op in alphabeta.OPS:
        fit = model.get(op, n)
        assert fit.alpha_us >= 0 and fit.beta_us_per_byte >= 0
        assert fit.n_points == sum(r["op"] == op for r in rows)
        assert model.predict_time(op, 1 << 20, n) > 0


@pytest.mark.slow
def test_single_op_script_with_other_dtype(tmp_path):
    # --sizes: exact sizes besides the sweep (a training step's buckets), each rounded down to whole bf16
    # elements per rank: 3001 B -> 3000 (2 ranks x 2 B = 4 B units), 10000 stays, 2048 is already in the sweep
    proc = torchrun(["comm_bench/reducescatter.py", "-b", "1K", "-e", "4K", "-w", "0", "-n", "1", "-d", "bf16",
                     "--sizes", "3001,10000,2K", "--out", str(tmp_path)], nproc=2)
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["results"]
    assert [r["size_bytes"] for r in rows] == [1024, 2048, 3000, 4096, 10000]
    assert data["metadata"]["extra_sizes"] == [3001, 10000, 2048]
    assert all(r["op"] == "reduce_scatter" and r["dtype"] == "bf16" and r["wrong"] == 0 for r in rows)
    assert "reduce_scatter" in proc.stdout


@pytest.mark.slow
def test_plot_writes_pngs_with_one_line_per_world_size(sweeps, tmp_path):
    python(["comm_bench/plot.py", str(sweeps[2]), str(sweeps[4] / "results.json"), "--out", str(tmp_path), "--write-fit"])
    for name in ("busbw_vs_size.png", "time_vs_size.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = alphabeta.load_fit(tmp_path / "fit.json")
    assert model.world_sizes("all_reduce") == [2, 4]


def test_after_a_gap_each_call_is_timed_alone_without_the_idle_spell(monkeypatch):
    """--gap-ms on a fake clock: every timed call comes after a barrier and a sleep of the gap, and the time is
    the mean of the calls alone (2, 4 and 6 ms: 4 ms), not of the spells between them (50 ms each)."""
    clock, log = [0.0], []
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(harness.time, "sleep", lambda s: (log.append(("sleep", s)), clock.__setitem__(0, clock[0] + s)))
    monkeypatch.setattr(harness.dist, "barrier", lambda: log.append(("barrier",)))
    durations = iter([0.001, 0.002, 0.004, 0.006])  # one warm-up call, then the three timed ones

    def call():
        log.append(("call",))
        clock[0] += next(durations)

    seconds = harness.time_calls(call, warmup=1, iters=3, device=torch.device("cpu"), gap_ms=50.0)
    assert seconds == pytest.approx(0.004)
    assert log == [("call",)] + [("barrier",), ("sleep", 0.05), ("call",)] * 3


def test_after_a_gap_on_a_gpu_the_call_is_timed_on_the_stream_not_the_host(monkeypatch):
    """The CUDA branch of --gap-ms on a fake device: a call returns to the host at once and its work runs on the
    stream (a 100 ms warm-up call, then 2, 4, 6 ms); CUDA events stamp the stream's time. Each timed call finds
    the stream idle for the whole 50 ms gap (the host drains the stream before it sleeps: a sleep beside the
    warm-up's queued work would leave no idle at all), and the result is the calls' device time, 4 ms."""
    clock = {"host": 0.0, "stream": 0.0}

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = max(clock["host"], clock["stream"])

        def synchronize(self):
            clock["host"] = max(clock["host"], self.t)

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    def sync(device=None):
        clock["host"] = max(clock["host"], clock["stream"])

    def sleep(seconds):
        clock["host"] += seconds

    monkeypatch.setattr(harness.torch.cuda, "Event", Event)
    monkeypatch.setattr(harness.torch.cuda, "synchronize", sync)
    monkeypatch.setattr(harness.time, "sleep", sleep)
    monkeypatch.setattr(harness.dist, "barrier", lambda: None)
    durations, idle = iter([0.100, 0.002, 0.004, 0.006]), []

    def call():  # enqueue on the stream; the host does not wait
        idle.append(max(0.0, clock["host"] - clock["stream"]))  # how long the stream sat idle before this call
        clock["stream"] = max(clock["host"], clock["stream"]) + next(durations)

    seconds = harness.time_calls(call, warmup=1, iters=3, device=torch.device("cuda"), gap_ms=50.0)
    assert seconds == pytest.approx(0.004)
    assert idle[1:] == pytest.approx([0.05, 0.05, 0.05])


def test_gap_rows_record_it_and_leave_the_idle_out(tmp_path):
    """Real gloo ranks with --gap-ms 300: each row and the metadata say so, and a 1 KiB all-reduce's time is far
    below the 300 ms of idle before each call (timing the sleep would put every row at 300 ms or more)."""
    proc = torchrun(["comm_bench/allreduce.py", "-b", "1K", "-e", "2K", "-w", "0", "-n", "2", "--gap-ms", "300",
                     "--no-fit", "--out", str(tmp_path)], nproc=2, timeout=120)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["metadata"]["gap_ms"] == 300.0
    assert [(r["size_bytes"], r["gap_ms"], r["wrong"]) for r in data["results"]] == [(1024, 300.0, 0), (2048, 300.0, 0)]
    assert all(r["time_us"] < 300_000 for r in data["results"]), data["results"]
    assert "each call timed alone after 300 ms of idle link" in proc.stdout


def test_refuses_to_overwrite_results(sweeps):
    proc = torchrun(["comm_bench/broadcast.py", "-b", "4", "-e", "8", "--out", str(sweeps[2])], nproc=2, check=False)
    assert proc.returncode != 0
    assert "already holds results.json" in proc.stderr
    assert json.loads((sweeps[2] / "results.json").read_text())["metadata"]["ops"] == list(alphabeta.OPS)  # untouched


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "args, message",
    [
        (["-b", "1M", "-e", "1K"], "larger than max size"),
        (["--op", "allshuffle"], "unknown op 'allshuffle'"),
        (["-d", "float8"], "unknown dtype 'float8'"),
        ([], "must run under torchrun"),
    ],
)
def test_bad_arguments_exit_with_one_line_error(args, message):
    proc = python(["comm_bench/allreduce.py", *args], check=False, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-e", "8", "-b", "9"], "larger than max size"),
        (["-b", "12X"], "bad size"),
        (["-f", "1"], "step-factor"),
        (["-a", "7"], "average"),
        (["--sizes", "1K,0"], "--sizes must be at least 1 byte"),
        (["--sizes", "1K,big"], "bad size"),
        (["--frobnicate"], "unrecognized arguments"),
        (["--gap-ms", "-1"], "--gap-ms must be between 0 and 10000"),
        (["--gap-ms", "nan"], "--gap-ms must be between 0 and 10000"),
    ],
)
def test_parse_args_rejects(argv, message):
    with pytest.raises(ConfigError, match=message):
        harness.parse_args(argv, "all_reduce")


def test_sizes_ops_and_dtypes_parse():
    assert [harness.parse_size(s) for s in ("8", "1K", "64M", "1G", "2KiB", "3kb")] == [8, 1024, 64 << 20, 1 << 30, 2048, 3072]
    assert harness.sweep_sizes(8, 64, 2) == [8, 16, 32, 64] and harness.sweep_sizes(1, 100, 10) == [1, 10, 100]
    assert harness.parse_ops("allreduce,all-gather") == ["all_reduce", "all_gather"] and harness.parse_ops("all") == list(alphabeta.OPS)
    assert harness.parse_dtype("bf16") is torch.bfloat16
    assert harness.dtype_name(torch.bfloat16) == "bf16"
    with pytest.raises(ConfigError, match="dtype 'bfloat16': use 'bf16'"):
        harness.parse_dtype("bfloat16")
    assert harness.aligned_size("all_gather", 100, 4, 4) == 96 and harness.aligned_size("all_reduce", 100, 4, 4) == 100
    assert harness.aligned_size("all_to_all", 8, 4, 4) == 0  # skipped: less than one element per rank
    lo, hi = harness.resolve_size_range(harness.parse_args([], "all_reduce"), "cuda")
    assert hi >= 1 << 30  # GPUs sweep up to 1 GiB by default


def test_count_wrong_counts_each_bad_element():
    want = torch.arange(10, dtype=torch.float32)
    got = want.clone()
    got[[2, 7]] += 1
    assert harness.count_wrong(want.clone(), want) == 0 and harness.count_wrong(got, want) == 2


# ---------------------------------------------------------------------------------------------
# The α–β fit


SIZES = [1 << k for k in range(10, 27)]  # 1 KiB .. 64 MiB


def test_fit_recovers_known_alpha_beta_exactly():
    alpha, beta = 85.0, 1 / 2500.0  # 85 µs, 2.5 GB/s
    fit = alphabeta.fit_op("all_reduce", 4, SIZES, [alpha + beta * s for s in SIZES])
    assert fit.alpha_us == pytest.approx(alpha, rel=1e-9) and fit.beta_us_per_byte == pytest.approx(beta, rel=1e-9)
    assert fit.algbw_gbps == pytest.approx(2.5) and fit.busbw_gbps == pytest.approx(2.5 * 1.5)
    assert fit.rel_rms_error < 1e-9 and fit.r2_log == pytest.approx(1.0)


def test_fit_with_noise_is_close_in_both_regimes():
    rng = np.random.default_rng(0)
    alpha, beta = 20.0, 1 / 100_000.0  # 20 µs, 100 GB/s: latency-bound below ~2 MB
    times = [(alpha + beta * s) * (1 + 0.05 * rng.standard_normal()) for s in SIZES]
    a, b = alphabeta.fit_alpha_beta(SIZES, times)
    # relative-error weighting keeps α right although the largest times are ~30x larger
    assert a == pytest.approx(alpha, rel=0.1) and b == pytest.approx(beta, rel=0.1)


def test_fit_keeps_coefficients_non_negative():
    a, b = alphabeta.fit_alpha_beta(SIZES, [s / 1000.0 for s in SIZES])  # pure bandwidth
    assert a == pytest.approx(0.0, abs=1e-9) and b == pytest.approx(1e-3)
    a, b = alphabeta.fit_alpha_beta(SIZES, [50.0 - 1e-9 * s for s in SIZES])  # slightly falling: no bandwidth term
    assert b == 0.0 and a == pytest.approx(50.0, rel=1e-3)


def test_fit_file_round_trip_and_extrapolation(tmp_path):
    rows = [{"op": "all_reduce", "world_size": 4, "size_bytes": s, "time_us": 10 + s / 1000.0, "dtype": "float32", "backend": "gloo"} for s in SIZES]
    model = alphabeta.fit_rows(rows)
    model.save(tmp_path / "fit.json")
    loaded = alphabeta.load_fit(tmp_path / "fit.json")
    assert loaded.predict_time("all_reduce", 1e6, 4) == pytest.approx(10 + 1000.0)
    assert alphabeta.predict_time_us(loaded, "all_reduce", 1e6, 1) == 0.0
    with pytest.raises(KeyError, match="no fit for all_reduce at world size 8"):
        loaded.predict_time("all_reduce", 1e6, 8)
    # ring model: same α and bus bandwidth, bytes scaled by 2(n-1)/n: (2·7/8) / (2·3/4) = 7/6
    assert loaded.predict_time("all_reduce", 1e6, 8, extrapolate=True) == pytest.approx(10 + 1000.0 * 7 / 6)
    with pytest.raises(ConfigError, match="not a comm_bench fit.json"):
        (tmp_path / "bad.json").write_text("{}")
        alphabeta.load_fit(tmp_path / "bad.json")
    assert math.isclose(alphabeta.busbw_factor("broadcast", 8), 1.0)


# ---------------------------------------------------------------------------------------------
# Bucket-size sweep (the trainer is replaced by a stand-in that logs step_ms = 10 + cap)


FAKE_TRAIN = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    opts = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    assert sys.argv[sys.argv.index("--backend") + 1] == "manual"
    cap, steps = float(opts["--parallel.manual.bucket_cap_mb"]), int(opts["--train.max_steps"])
    if os.environ["RANK"] == "0":
        run = Path(opts["--log.out_dir"]) / opts["--log.run_name"]
        run.mkdir(parents=True)
        with open(run / "metrics.jsonl", "w") as f:
            for step in range(steps):
                f.write(json.dumps({"step": step, "loss": 1.0, "step_ms": 1000.0 if step < 2 else 10 + cap + step % 2}) + "\\n")
            f.write(json.dumps({"step": steps, "val_loss": 1.0}) + "\\n")
    """
)


@pytest.mark.slow
def test_bucket_sweep_runs_each_cap_and_takes_median(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    out = tmp_path / "sweep"
    python(["comm_bench/bucket_sweep.py", "--nproc", "1", "--caps", "5,1", "--steps", "6", "--warmup-steps", "2",
            "--train-script", str(script), "--out", str(out)], timeout=120)
    sweep = json.loads((out / "bucket_sweep.json").read_text())
    rows = sweep["results"]
    assert "bucket_sweep.py" in sweep["provenance"]["command"] and sweep["provenance"]["torch"]
    assert [r["bucket_cap_mb"] for r in rows] == [1.0, 5.0]
    assert [r["median_step_ms"] for r in rows] == [11.5, 15.5]  # warm-up steps (1000 ms) left out
    assert all(r["n_steps"] == 4 for r in rows)
    assert (out / "bucket_sweep.png").read_bytes()[:4] == b"\x89PNG" and (out / "bucket_sweep.csv").is_file()


def test_bucket_sweep_command_and_bad_args(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    args = bucket_sweep.parse_args(["--caps", "25,1", "--train-script", str(script), "--out", str(tmp_path), "--", "--data.batch_size=4"])
    assert args.caps_mb == [1.0, 25.0]
    cmd = bucket_sweep.train_command(args, 25.0)
    for piece in ("--backend", "manual", "--parallel.manual.bucket_cap_mb=25", "--model.preset=gpt2-tiny", "--train.max_steps=30",
                  f"--log.out_dir={tmp_path / 'runs'}", "--log.run_name=bucket_25mb", "--data.batch_size=4"):
        assert piece in cmd
    for bad, message in ((["--caps", "1,x"], "comma list"), (["--caps", "0"], "> 0"), (["--steps", "5", "--warmup-steps", "5"], "larger than"),
                         (["--nproc", "0"], "nproc")):
        with pytest.raises(ConfigError, match=message):
            bucket_sweep.parse_args([*bad, "--train-script", str(script)])
    with pytest.raises(ConfigError, match="training script not found"):
        bucket_sweep.parse_args(["--train-script", str(tmp_path / "missing.py")])


def test_read_step_ms_skips_warmup_eval_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "step_ms": 9}\n{"step": 0, "step_ms": 100}\n{"step": 2, "val_loss": 3}\n{"step": 2, "step_ms": 7}\n{"step": 3, "st')
    assert bucket_sweep.read_step_ms(path, warmup_steps=1) == [9.0, 7.0]
    with pytest.raises(ConfigError, match="no step_ms left"):
        bucket_sweep.read_step_ms(path, warmup_steps=5)
