"""launch/slurm_2nodes.sbatch under a real Slurm (slurmctld + one slurmd per node namespace of the emulated
cluster): the job runs to the end with the single-process losses; `scancel --signal=TERM` makes it save and
exit 0; resubmitting the same job resumes from that checkpoint. Needs root and iproute2 (skips otherwise);
installs Debian's slurm-wlm when absent (CI included). Polls job states with generous timeouts."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptdist.cluster import netns, slurm, state
from launchers import REPO, subprocess_env
from synthetic import make_token_dataset

pytestmark = [pytest.mark.slow, pytest.mark.skipif(netns.missing_requirements() is not None,
                                                   reason=netns.missing_requirements() or "")]
NAME, SUBNET = "gdts", "10.214.4.0/24"


def install_slurm() -> None:
    if slurm.missing_requirements() is None:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"could not install slurm-wlm ({' '.join(cmd)}): {proc.stderr.strip().splitlines()[-1:]}")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "launch/cluster.py", "--name", NAME, *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"cluster.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def cluster():
    install_slurm()
    cli("down")
    try:
        cli("up", "--nodes", "2", "--rate", "1gbit", "--subnet", SUBNET, "--slurm")
        yield state.require(NAME)
    finally:
        cli("down", check=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_token_dataset(tmp_path_factory.mktemp("data"))


def settings(data_dir: Path, **extra) -> dict:
    """Constant learning rate, so losses don't depend on max_steps (as in test_reliability.py)."""
    values = {"model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 4, "data.seq_len": 32,
              "train.global_batch_tokens": 4 * 32 * 2, "train.warmup_steps": 0, "train.min_lr_ratio": 1.0,
              "train.lr": 3e-3, "eval.val_every": 0, "train.max_steps": 6}
    values.update(extra)
    return values


def submit(cluster, out: Path, run_name: str, values: dict, export_more: str = "") -> str:
    train_args = " ".join(f"--{k}={v}" for k, v in values.items())
    export = f"ALL,CONFIG=,BACKEND=manual,DEVICE=cpu,NPROC_PER_NODE=1,OUT_DIR={out},RUN_NAME={run_name},RDZV_PORT=29621{export_more}"
    # --time stays generous: SIGTERM comes from scancel in the test, never from a time limit on a busy machine.
    cmd = ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30:00", f"--chdir={REPO}",
           f"--output={out}/slurm-%j.out", f"--export={export},TRAIN_ARGS={train_args}", "launch/slurm_2nodes.sbatch"]
    proc = cli("exec", "n0", "--", *cmd)
    return proc.stdout.strip().split(";")[0]


def job_fields(job: str) -> dict[str, str]:
    out = cli("exec", "n0", "--", "scontrol", "show", "job", "-o", job).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_until_done(job: str, timeout: float = 400) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = job_fields(job)
        if fields.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", None):
            return fields
        time.sleep(1)
    raise AssertionError(f"job {job} still {job_fields(job).get('JobState')} after {timeout:g}s")


def train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> dict[int, float]:
    """The single-process run of the same 8 steps."""
    from gptdist.config import build_config
    from gptdist.dist import init_distributed
    from gptdist.trainer import train
    out = tmp_path_factory.mktemp("ref")
    values = dict(settings(data_dir, **{"train.max_steps": 8}), **{"train.device": "cpu", "log.out_dir": str(out), "log.run_name": "ref"})
    train(build_config(None, values), init_distributed("cpu"))
    return train_losses(out / "ref")


def test_job_spans_two_nodes_and_runs_to_the_end(cluster, data_dir, tmp_path, reference):
    job = submit(cluster, tmp_path, "full", settings(data_dir))
    fields = wait_until_done(job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", log[-4000:]
    assert fields["NodeList"] == "gdts-n[0-1]" and "2 nodes (gdts-n[0-1]) x 1 cpu ranks" in log
    got = train_losses(tmp_path / "full")
    assert [got[s] for s in range(1, 7)] == pytest.approx([reference[s] for s in range(1, 7)], rel=1e-5)


def test_sigterm_checkpoints_exits_0_and_the_resubmitted_job_resumes(cluster, data_dir, tmp_path, reference):
    run = tmp_path / "preempted"
    # torchrun's grace after SIGTERM cut to 1 s (default 30 s): shorter than what the workers need to reach
    # the step boundary, save and exit. The job must not depend on it (torchrun ignores SIGTERM).
    job = submit(cluster, tmp_path, "preempted", settings(data_dir, **{"train.max_steps": 100000}),
                 export_more=",TORCH_ELASTIC_SHUTDOWN_TIMEOUT=1")
    deadline = time.monotonic() + 400
    while not ((run / "metrics.jsonl").exists() and len(train_losses(run)) >= 2):
        assert time.monotonic() < deadline and job_fields(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), \
            "the job never logged two steps"
        time.sleep(1)
    cli("exec", "n0", "--", "scancel", "--signal=TERM", job)
    fields = wait_until_done(job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", log[-4000:]
    assert "SIGTERM: stopping at step" in (run / "logs" / "rank0.log").read_text()
    from gptdist import checkpoint as ckpt
    stopped_at = int(ckpt.latest_checkpoint(run / "checkpoints").name.split("_")[1])
    assert stopped_at == max(train_losses(run))

    # The same job again (same run name, a new job id) resumes from that checkpoint and finishes.
    until = max(stopped_at + 2, 8)
    job2 = submit(cluster, tmp_path, "preempted", settings(data_dir, **{"train.max_steps": until}))
    fields = wait_until_done(job2)
    log2 = (tmp_path / f"slurm-{job2}.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", log2[-4000:]
    assert f"at step {stopped_at}" in "".join(re.findall(r"resumed from .*", (run / "logs" / "rank0.log").read_text()))
    got = train_losses(run)
    assert sorted(got) == list(range(1, until + 1))
    assert [got[s] for s in range(1, 9)] == pytest.approx([reference[s] for s in range(1, 9)], rel=1e-5)
