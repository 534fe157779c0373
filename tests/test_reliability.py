"""Reliability with real processes: SIGTERM, elastic restart after SIGKILL, kills during checkpoint saves,
a stalled rank, non-finite losses, and bad input refused on every rank before any damage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptdist import checkpoint as ckpt
from gptdist.config import build_config
from gptdist.dist import init_distributed
from gptdist.errors import GptdistError
from gptdist.trainer import train
from launchers import REPO, free_port, python, subprocess_env, torchrun
from synthetic import make_token_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_token_dataset(tmp_path_factory.mktemp("data"))


def settings(data_dir: Path, out: Path, name: str, **extra) -> dict:
    """Constant learning rate (no warmup, no decay) so a run's losses don't depend on max_steps."""
    base = {
        "model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 4, "data.seq_len": 32,
        "train.max_steps": 8, "train.global_batch_tokens": 4 * 32 * 2, "train.warmup_steps": 0, "train.min_lr_ratio": 1.0, "train.lr": 3e-3,
        "train.device": "cpu", "eval.val_every": 0, "log.out_dir": str(out), "log.run_name": name,
    }
    base.update(extra)
    return base


def argv(values: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in values.items()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; a step logged twice (before and after a restart) keeps its last value."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"kind": "train"' in line) if path.exists() else 0


def worker_pid(run_dir: Path, rank: int) -> int:
    log = run_dir / "logs" / f"rank{rank}.log"
    found = re.findall(r"\| pid (\d+)", log.read_text()) if log.exists() else []
    return int(found[-1]) if found else 0


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def torchrun_cmd(nproc: int, *args: str, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *extra, "launch/train.py", *args]


# The uninterrupted reference is this long, so an interrupted run can always be resumed past its stop step.
REFERENCE_STEPS = 20


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("ref")
    train(build_config(None, settings(data_dir, out, "ref", **{"train.max_steps": REFERENCE_STEPS})), init_distributed("cpu"))
    return train_losses(out / "ref")


# --------------------------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_saves_at_step_boundary_exits_0_and_resumes_exactly(data_dir, tmp_path, uninterrupted, nproc):
    values = settings(data_dir, tmp_path, "run", **{"train.max_steps": 100000})
    if nproc == 1:
        proc = start([sys.executable, "launch/train.py", *argv(values)])
    else:
        proc = start(torchrun_cmd(nproc, *argv(dict(values, backend="manual"))))
    run = tmp_path / "run"
    wait_for(lambda: logged_steps(run) >= 3, 120, "three training steps")
    if nproc == 1:
        proc.send_signal(signal.SIGTERM)
    else:
        # Slurm signals every task; here each worker gets SIGTERM directly, at slightly different times.
        for rank in range(nproc):
            os.kill(worker_pid(run, rank), signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    assert "SIGTERM: stopping at step" in (run / "logs" / "rank0.log").read_text()
    saved = ckpt.latest_checkpoint(run / "checkpoints")
    stopped_at = int(saved.name.split("_")[1])
    assert stopped_at == max(train_losses(run))  # the checkpoint is of the last finished step
    assert sorted(p.name for p in saved.glob("rank*.pt")) == [f"rank{r}.pt" for r in range(nproc)]

    # Always resume, 3 steps past the stop (the losses are world-size independent: same global batch per
    # step), so the test proves the resume even when the signal landed late on a busy machine.
    end = stopped_at + 3
    assert end <= REFERENCE_STEPS, f"SIGTERM acted on only at step {stopped_at}; the reference has {REFERENCE_STEPS} steps"
    resume = dict(values, **{"train.max_steps": end, "checkpoint.resume": "auto"})
    if nproc == 1:
        python(["launch/train.py", *argv(resume)])
    else:
        torchrun(["launch/train.py", *argv(dict(resume, backend="manual"))], nproc=nproc)
    assert re.search(rf"resumed from \S*{saved.name} at step {stopped_at}\b", (run / "logs" / "rank0.log").read_text())
    got = train_losses(run)
    assert sorted(got) == list(range(1, end + 1))
    assert [got[s] for s in range(1, end + 1)] == pytest.approx([uninterrupted[s] for s in range(1, end + 1)], rel=1e-5)
    if nproc == 1:
        assert [got[s] for s in range(1, end + 1)] == [uninterrupted[s] for s in range(1, end + 1)]  # bitwise on one process


# ------------------------------------------------------------------------------------ elastic restart


def test_sigkill_of_one_rank_restarts_the_group_which_resumes_and_finishes(data_dir, tmp_path, uninterrupted):
    """torchrun --max-restarts=2: SIGKILL rank 1 mid-run; the group restarts, resumes from the latest
    complete checkpoint (--checkpoint.resume=auto) and ends with the uninterrupted run's losses."""
    values = settings(data_dir, tmp_path, "elastic", **{
        "backend": "ddp", "train.max_steps": 8, "checkpoint.every": 2, "checkpoint.resume": "auto",
    })
    values["train.max_steps"] = 8
    run = tmp_path / "elastic"
    proc = start(torchrun_cmd(2, *argv(values), extra=["--max-restarts", "2"]))
    wait_for(lambda: logged_steps(run) >= 3 and worker_pid(run, 1), 120, "step 3")
    os.kill(worker_pid(run, 1), signal.SIGKILL)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output
    log0 = (run / "logs" / "rank0.log").read_text()
    assert "resumed from" in log0, "the group did not restart from a checkpoint"
    got = train_losses(run)
    assert [got[s] for s in range(1, 9)] == pytest.approx([uninterrupted[s] for s in range(1, 9)], rel=1e-5)


# ----------------------------------------------------------------------------- atomic checkpoints


def test_killing_during_saves_never_leaves_a_broken_latest_checkpoint(data_dir, tmp_path):
    """A checkpoint every step, SIGKILL at many different moments: every time, `latest` names a complete
    checkpoint that loads, and a resume continues from it."""
    values = settings(data_dir, tmp_path, "kills", **{
        "train.max_steps": 100000, "checkpoint.every": 1, "checkpoint.keep_last": 2, "checkpoint.resume": "auto",
    })
    run = tmp_path / "kills"
    for attempt in range(8):
        proc = start([sys.executable, "launch/train.py", *argv(values)])
        before = logged_steps(run)
        wait_for(lambda: logged_steps(run) >= before + 1 and (run / "checkpoints" / "latest").exists(), 120, "a step and a save")
        time.sleep(0.013 * attempt)  # a different moment within the step/save cycle each time
        proc.kill()
        proc.wait()
        latest = ckpt.latest_checkpoint(run / "checkpoints")
        assert latest is not None and ckpt.is_complete(latest)
        assert (run / "checkpoints" / "latest").read_text().strip() == latest.name
        ckpt.load_model(latest)  # loads without error
        assert len(ckpt.list_checkpoints(run / "checkpoints")) <= 2 + 1  # keep_last (+1 while a save completes)


# ------------------------------------------------------------------------------------ no silent hangs


def test_a_stalled_rank_makes_the_others_fail_within_the_timeout(data_dir, tmp_path):
    values = settings(data_dir, tmp_path, "stall", **{"backend": "manual", "train.max_steps": 100000, "dist.timeout_s": 5})
    run = tmp_path / "stall"
    proc = start(torchrun_cmd(2, *argv(values)))
    wait_for(lambda: logged_steps(run) >= 2 and worker_pid(run, 1), 120, "two steps")
    stalled = worker_pid(run, 1)
    os.kill(stalled, signal.SIGSTOP)  # rank 1 stops answering, but doesn't die
    t0 = time.time()

    def rank0_failed() -> bool:
        log = run / "logs" / "rank0.log"
        return proc.poll() is not None or (log.exists() and "collective failed" in log.read_text())

    try:
        wait_for(rank0_failed, 90, "rank 0 to report the stalled collective")
        took = time.time() - t0
    finally:
        # torchrun would otherwise wait out its grace period for the stopped worker to answer SIGTERM
        try:
            os.kill(stalled, signal.SIGKILL)
        except ProcessLookupError:
            pass
    output = proc.communicate(timeout=90)[0]
    assert took < 60, f"rank 0 took {took:.0f} s to give up (dist.timeout_s 5)"
    assert proc.returncode != 0
    assert "error: rank 0: collective failed" in (run / "logs" / "rank0.log").read_text()  # the run's log says why
    # The message names the rank, the step, the phase and the collective it was waiting on.
    assert re.search(r"\[rank0\] error: rank 0: collective failed at step \d+ during .*, waiting on all_reduce "
                     r"(bucket=\d+|loss) \([\d.]+ MB\) \(timeout 5s", output), output


# ----------------------------------------------------------------------------------- numerical faults


def test_non_finite_loss_stops_without_saving_a_corrupted_checkpoint(data_dir, tmp_path):
    values = settings(data_dir, tmp_path, "nan", **{"train.lr": 1e30, "train.grad_clip": 0.0, "checkpoint.every": 1})
    with pytest.raises(GptdistError, match=r"non-finite loss \(.*\) or gradient norm \(.*\) at step (\d+); stopping"):
        train(build_config(None, values), init_distributed("cpu"))
    bad_step = max(train_losses(tmp_path / "nan"), default=0) + 1
    saved = [int(p.name.split("_")[1]) for p in ckpt.list_checkpoints(tmp_path / "nan" / "checkpoints")]
    assert all(step < bad_step for step in saved)


def test_non_finite_loss_can_skip_the_update(data_dir, tmp_path):
    values = settings(data_dir, tmp_path, "skip", **{
        "train.lr": 1e30, "train.grad_clip": 0.0, "train.on_nonfinite": "skip", "train.max_steps": 4,
    })
    train(build_config(None, values), init_distributed("cpu"))
    rows = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert any(r.get("skipped") for r in rows) and len(rows) == 4


# ---------------------------------------------------------------------------------------- bad input


BAD_INPUTS = {
    "unknown key": ({"train.max_stepz": 3}, r"unknown config key 'train.max_stepz'"),
    "wrong type": ({"data.batch_size": "four"}, r"data.batch_size: expected an integer"),
    "batch vs world size": ({"train.global_batch_tokens": 4 * 32 * 3}, r"not a multiple of batch_size\*seq_len\*world_size"),
    "fsdp option on manual": ({"parallel.fsdp.reshard_after_forward": False}, r"is a fsdp option but backend is 'manual'"),
    "missing data": ({"data.dir": "/nonexistent/data"}, r"no manifest.json in /nonexistent/data"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_on_every_rank_with_one_line(data_dir, tmp_path, case):
    extra, message = BAD_INPUTS[case]
    values = dict(settings(data_dir, tmp_path, "bad", backend="manual"), **extra)
    proc = torchrun(["launch/train.py", *argv(values)], nproc=2, check=False, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if re.match(r"\[rank\d\] error: ", line)]
    assert sorted(line[:7] for line in errors) == ["[rank0]", "[rank1]"], proc.stderr[-3000:]
    assert all(re.search(message, line) for line in errors), errors
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_output_folder_that_cannot_be_created_is_refused(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # A path under a regular file can't be created, even by root (which ignores permission bits).
    proc = python(["launch/train.py", *argv(settings(data_dir, blocker / "runs", "x"))], check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"
