"""Every launcher: --help shows a default for every flag, and bad input ends as one line `error: ...`
with exit code 2, before anything runs (gptdist/cli.py)."""

from __future__ import annotations

import re
import sys

import pytest

from launchers import python

# (launcher, bad arguments, the start of the expected one-line error)
BAD_INPUT = [
    (["launch/train.py", "--train.max_stepz=3"], "error: unknown config key 'train.max_stepz'"),
    (["launch/train.py", "--parallel.bucket_cap_mb=5"], "error: parallel.bucket_cap_mb has moved: use parallel.manual.bucket_cap_mb"),
    (["launch/scaling.py", "--config", "configs/scaling_cpu.yaml", "--out", "OUT", "--", "--train.max_stepz=2"],
     "error: unknown config key 'train.max_stepz'"),
    (["launch/scaling.py", "--config", "configs/scaling_cpu.yaml", "--out", "OUT", "--world-sizes", "1,x"], "error: "),
    (["launch/ladder.py", "--config", "configs/ladder/cpu_tiny.yaml", "--set", "data.batch_size=4"], "error: --set KEY=VALUE is gone"),
    (["launch/ladder.py", "--config", "configs/ladder/cpu_tiny.yaml", "--data.batch_sise=4"], "error: configs/ladder/cpu_tiny.yaml base: 'data.batch_sise' is not a setting the ladder runner reads"),
    (["launch/bench_throughput.py", "--preset", "test", "--n-head", "3"], "error: n_embd 32 is not divisible by n_head 3"),
    (["launch/evaluate.py", "--random-init", "test", "--tasks", "val", "--dtype", "float32"], "error: --dtype: 'float32' is not one of auto, fp32, bf16 (use 'fp32')"),
    (["launch/simulate.py", "predict", "nope.json", "--profile", "h100-nvlink-8"], "error: "),
    (["launch/simulate.py", "contention", "nope", "nope2"], "error: "),
    (["launch/simulate.py", "repeats", "nope.json", "--out", "OUT"], "error: nope.json is not a validation.json"),
    (["launch/analyze_trace.py", "nope.json"], "error: "),
    (["launch/sample.py", "--checkpoint", "nope"], "error: "),
    (["launch/prepare_data.py", "--source", "nope.txt", "--out", "OUT"], "error: "),
    (["launch/replot.py", "OUT"], "error: "),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a[:1] + a[-1:]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    proc = python(args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_rehearsal_saves_no_checkpoint(tmp_path):
    """GPTDIST_FAKE_WORLD=2 with a checkpoint asked for: one line, exit 2, before anything is written."""
    from launchers import subprocess_env

    proc = python(["launch/train.py", "--backend", "fsdp", "--model.preset", "test", "--data.seq_len", "32",
                   "--log.out_dir", str(tmp_path)],
                  check=False, timeout=120, env=subprocess_env(GPTDIST_FAKE_WORLD="2"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a GPTDIST_FAKE_WORLD rehearsal saves and resumes no checkpoint")
    assert not any(tmp_path.iterdir())


HELP = [["launch/train.py"], ["launch/scaling.py"], ["launch/ladder.py"], ["launch/bench_throughput.py"],
        ["launch/evaluate.py"], ["launch/sample.py"], ["launch/analyze_trace.py"], ["launch/prepare_data.py"],
        ["launch/bench_instrumentation.py"], ["launch/simulate.py", "extract"], ["launch/simulate.py", "model"],
        ["launch/simulate.py", "predict"], ["launch/simulate.py", "validate"], ["launch/simulate.py", "contention"],
        ["launch/simulate.py", "repeats"], ["launch/replot.py"]]


@pytest.mark.parametrize("launcher", [h for h in HELP if h != ["launch/train.py"]], ids=lambda h: " ".join(h))
def test_every_flag_has_help_with_its_default(launcher):
    proc = python([*launcher, "--help"], timeout=120)
    # Each option's entry starts on a line "  --flag ..." and runs to the next entry.
    entries = re.split(r"\n  (?=-)", proc.stdout.split("options:", 1)[1])[1:]
    assert entries
    for entry in entries:
        if entry.startswith("-h, --help"):
            continue
        assert "(default:" in entry, f"{launcher}: no default shown in\n  {entry}"


def test_main_guard_turns_any_exception_into_one_line(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("from gptdist.cli import main_guard\n"
                      "def main(argv):\n    raise KeyError('x')\n"
                      "main_guard(main, [])\n")
    proc = python([str(script)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: KeyError: 'x' (set GPTDIST_TRACEBACK=1 for the traceback)"


def test_main_guard_exits_with_mains_return_code(tmp_path):
    script = tmp_path / "three.py"
    script.write_text("from gptdist.cli import main_guard\nmain_guard(lambda argv: 3, [])\n")
    assert python([str(script)], check=False).returncode == 3
