"""The lock-step contention probe (`simulate.py lockstep`, gptdist/studies/simulator/lockstep.py) with real
processes: each copy trains its own replica and waits at a barrier before every step, so no copy starts step s
before every copy has ended step s − 1 (the barrier's meaning, checked on the copies' shared monotonic clock)."""

from __future__ import annotations

import json

import pytest

from launchers import python, torchrun

pytestmark = pytest.mark.slow

CONFIG = """
model: {preset: test}
data: {seq_len: 16}
train: {lr: 1.0e-3}
"""


def probe(tmp_path, nproc: int, name: str, *extra: str):
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / f"{name}.json"
    proc = torchrun(["launch/simulate.py", "lockstep", "--config", str(cfg), "--batch", "2", "--steps", "6",
                     "--skip", "1", "--out", str(out), *extra], nproc=nproc, timeout=120)
    return json.loads(out.read_text()), proc.stdout


def test_copies_in_lockstep_start_each_step_after_every_copy_ended_the_last(tmp_path):
    solo, _ = probe(tmp_path, 1, "solo")
    assert solo["copies"] == 1 and solo["lockstep"] and len(solo["step_times_per_copy"][0]) == 6
    pair, stdout = probe(tmp_path, 2, "pair", "--solo", str(tmp_path / "solo.json"))
    times = pair["step_times_per_copy"]
    assert pair["copies"] == 2 and [len(t) for t in times] == [6, 6]
    for s in range(1, 6):
        last_end = max(times[c][s - 1][-1] for c in range(2))  # rows: start, backward end, update start, end
        assert all(times[c][s][0] >= last_end for c in range(2)), (s, times)
    # the factor it prints is the pair's mean median step over the solo one
    factor = float(stdout.strip().splitlines()[-1])
    assert factor == pytest.approx(pair["median_step_ms"] / solo["median_step_ms"], rel=1e-3)
    assert pair["median_step_ms"] == pytest.approx(sum(pair["median_step_ms_per_copy"]) / 2)


def test_aligned_phases_start_clip_and_optimizer_together_and_leave_the_wait_out(tmp_path):
    """--align-phases: no copy starts clip + optimizer of step s before every copy has ended its forward-backward
    of step s (where a data-parallel job's all-reduce aligns its ranks), and the step it reports is the two
    phases' time without the wait between them."""
    pair, _ = probe(tmp_path, 2, "aligned", "--align-phases")
    times = pair["step_times_per_copy"]
    assert pair["align_phases"] and [len(t) for t in times] == [6, 6]
    for s in range(6):
        backward_done = max(times[c][s][1] for c in range(2))
        assert all(times[c][s][2] >= backward_done for c in range(2)), (s, times)
    for c in range(2):
        kept = times[c][1:]  # --skip 1
        work = sorted((t[1] - t[0] + t[3] - t[2]) * 1e3 for t in kept)
        assert pair["median_step_ms_per_copy"][c] == pytest.approx(work[len(work) // 2])  # 5 kept: the middle one
        phases = pair["median_phase_ms_per_copy"][c]
        assert phases["forward_backward"] == pytest.approx(sorted((t[1] - t[0]) * 1e3 for t in kept)[2])
        assert phases["clip_optimizer"] == pytest.approx(sorted((t[3] - t[2]) * 1e3 for t in kept)[2])
    bad = python(["launch/simulate.py", "lockstep", "--config", "x.yaml", "--batch", "2", "--free", "--align-phases",
                  "--out", str(tmp_path / "o.json")], check=False)
    assert bad.returncode == 2 and "contradict" in bad.stderr


def test_lockstep_outside_torchrun_is_one_line_and_exit_2(tmp_path):
    proc = python(["launch/simulate.py", "lockstep", "--config", "x.yaml", "--batch", "2", "--out", str(tmp_path / "o.json")],
                  check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: lockstep runs under torchrun, one process per copy: "
                                   "torchrun --nproc-per-node K launch/simulate.py lockstep ...")


def test_contention_is_over_the_mean_of_the_solo_measurements():
    """A solo copy measured before (100 ms) and after (140 ms) the pair (median step 132 ms): the machine's speed
    moved between them, and the factor is over their mean, 132 / 120 = 1.1."""
    from gptdist.errors import ConfigError
    from gptdist.studies.simulator.lockstep import contention_factor

    pair = {"copies": 2, "batch": 4, "median_step_ms": 132.0}
    before, after = ({"copies": 1, "batch": 4, "median_step_ms": ms} for ms in (100.0, 140.0))
    assert contention_factor(pair, [before, after]) == pytest.approx(1.1)
    assert contention_factor(pair, [before]) == pytest.approx(1.32)
    with pytest.raises(ConfigError, match="same batch"):
        contention_factor(pair, [{"copies": 1, "batch": 2, "median_step_ms": 100.0}])


def test_lockstep_factor_cli_takes_the_copies_and_the_solos_files(tmp_path):
    """`simulate.py lockstep-factor K.json BEFORE.json AFTER.json`: the same numbers as above from files (how
    the repeat scripts get the factor once the solo after the copies has run); a bad file is one line, exit 2."""
    for name, copies, ms in (("pair", 2, 132.0), ("before", 1, 100.0), ("after", 1, 140.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"copies": copies, "batch": 4, "median_step_ms": ms}))
    proc = python(["launch/simulate.py", "lockstep-factor", *(str(tmp_path / f"{n}.json") for n in ("pair", "before", "after"))])
    assert proc.stdout.strip() == "1.1000"
    bad = python(["launch/simulate.py", "lockstep-factor", str(tmp_path / "pair.json"), str(tmp_path / "none.json")],
                 check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "none.json" in bad.stderr


def test_interleaved_probe_runs_every_other_step_one_copy_alone_and_reads_the_factors_from_them(tmp_path):
    """--interleave: even steps both copies run; odd steps one copy alone, taking turns (step 1 copy 0, step 3
    copy 1, ...), the other sitting the step out (None). A step alone starts after every copy ended the step
    before (the barrier), and the printed factor is each copy's median together over its median alone, averaged
    over the copies, recomputed here from the raw rows; `lockstep-factor --phases` the same per phase."""
    import statistics

    pair, stdout = probe(tmp_path, 2, "interleaved", "--interleave", "--steps", "10", "--skip", "2")
    times = pair["step_times_per_copy"]
    assert pair["interleave"] and pair["align_phases"]
    for s in range(10):
        ran = [c for c in range(2) if times[c][s] is not None]
        if s % 2 == 0:
            assert ran == [0, 1] and all(times[c][s][4] == 0 for c in ran)
        else:
            assert ran == [(s // 2) % 2] and times[ran[0]][s][4] == 1
            ended = max(times[c][r][3] for c in range(2) for r in range(s) if times[c][r] is not None)
            assert times[ran[0]][s][0] >= ended

    def median_ms(c, alone, phase=None):
        rows = [t for t in times[c][2:] if t is not None and t[4] == alone]
        part = {None: lambda t: t[1] - t[0] + t[3] - t[2], "fb": lambda t: t[1] - t[0], "up": lambda t: t[3] - t[2]}
        return statistics.median(part[phase](t) for t in rows)

    step = statistics.fmean(median_ms(c, 0) / median_ms(c, 1) for c in range(2))
    assert float(stdout.strip().splitlines()[-1]) == pytest.approx(step, abs=1e-4)
    fb, up = (statistics.fmean(median_ms(c, 0, ph) / median_ms(c, 1, ph) for c in range(2)) for ph in ("fb", "up"))
    out = python(["launch/simulate.py", "lockstep-factor", "--phases", str(tmp_path / "interleaved.json")]).stdout
    assert [float(x) for x in out.strip().split(":")] == pytest.approx([fb, up], abs=1e-4)


def test_phase_factors_pool_probes_by_their_mean(tmp_path):
    """Two interleaved probes (e.g. before and after a backend's part of a study), hand-made: probe A's copies
    120/100 and 90/100 forward-backward (mean 1.05), 39/30 and 36/30 clip + optimizer (1.25); probe B 1.15 and
    1.35: pooled 1.10:1.30. A probe that is not interleaved is refused (one line, exit 2)."""
    def probe_json(fb, up):
        return {"copies": 2, "batch": 2, "interleave": True, "align_phases": True,
                "median_step_ms_per_copy": [fb[0] + up[0], fb[1] + up[1]], "alone_step_ms_per_copy": [130.0, 130.0],
                "median_phase_ms_per_copy": [{"forward_backward": fb[c], "clip_optimizer": up[c]} for c in range(2)],
                "alone_phase_ms_per_copy": [{"forward_backward": 100.0, "clip_optimizer": 30.0}] * 2}
    (tmp_path / "a.json").write_text(json.dumps(probe_json((120.0, 90.0), (39.0, 36.0))))
    (tmp_path / "b.json").write_text(json.dumps(probe_json((115.0, 115.0), (40.5, 40.5))))
    out = python(["launch/simulate.py", "lockstep-factor", "--phases", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert out.stdout.strip() == "1.1000:1.3000"
    (tmp_path / "plain.json").write_text(json.dumps({"copies": 2, "batch": 2, "median_step_ms": 100.0}))
    bad = python(["launch/simulate.py", "lockstep-factor", "--phases", str(tmp_path / "plain.json")], check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: per-phase factors need a probe run with --interleave (which aligns the phases)")


def test_interleave_refusals_are_one_line_and_exit_2(tmp_path):
    """--interleave with --free, with one copy, or with too few steps for every copy to run one alone."""
    free = python(["launch/simulate.py", "lockstep", "--config", "x.yaml", "--batch", "2", "--free", "--interleave",
                   "--out", str(tmp_path / "o.json")], check=False)
    assert free.returncode == 2 and "--free and --interleave contradict" in free.stderr
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(CONFIG)
    # both are refused from torchrun's environment, before any process group: a rank's view of it is enough
    from launchers import subprocess_env

    for nproc, steps, why in ((1, "10", "--interleave needs at least 2 copies (torchrun --nproc-per-node K, K >= 2)"),
                              (2, "5", "--interleave with 2 copies needs --steps >= --skip + 4 (every copy one step "
                                       "alone after the warm-up)")):
        proc = python(["launch/simulate.py", "lockstep", "--config", str(cfg), "--batch", "2", "--steps", steps,
                       "--skip", "2", "--interleave", "--out", str(tmp_path / "o.json")],
                      env=subprocess_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(nproc)), check=False)
        prefix = "[rank0] " if nproc > 1 else ""  # a rank of a multi-process job names itself
        assert proc.returncode == 2 and proc.stderr.strip() == f"{prefix}error: {why}", proc.stderr
    assert not (tmp_path / "o.json").exists()
