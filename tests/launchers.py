"""Run real multi-process jobs from tests: torchrun with gloo on 127.0.0.1."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

from gptdist.net import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def torchrun(
    script_and_args: list[str],
    nproc: int,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    extra_torchrun_args: list[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N script args...`; raises with the output on failure."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        *(extra_torchrun_args or []),
        *script_and_args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"torchrun failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def python(script_and_args: list[str], timeout: float = 300, env: dict[str, str] | None = None, check: bool = True):
    cmd = [sys.executable, *script_and_args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def launcher_main(script: str):
    """The main(argv) of a launch/ script, loaded in this process: for a test that calls one CLI many times on
    its success path (each `python launch/...` pays ~3 s of imports on 2 cores). Errors raise here; a refusal's
    one-line error and exit code are tested through `python` (main_guard leaves with os._exit)."""
    return runpy.run_path(str(REPO / script), run_name="launched_in_test")["main"]
