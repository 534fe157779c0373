"""The device check's CPU rehearsal (launch/gpu_check.py --cpu): the same legs on gloo/CPU with tiny shapes,
so the script a GPU user runs does not rot. Each leg checks itself against a reference (single-process losses,
comm_bench's own correctness count, the recorder's issue-order chain); here they must all pass."""

from __future__ import annotations

import json

import pytest
import torch

from gptdist.gpu_check import run_check
from launchers import python

# train_ddp and train_fsdp (3 runs: whole, first half, resumed) are left out here for time; they run in the
# full rehearsal (`python launch/gpu_check.py --cpu`) and the backends are covered by test_backends.py.
LEGS = ["train_manual", "queued_collectives", "comm_bench", "two_ranks_one_device"]


def test_cpu_rehearsal_passes_and_writes_raw_results(tmp_path):
    results = run_check(tmp_path / "check", cuda=False, timeout_s=240, legs=LEGS)
    assert [r["leg"] for r in results] == ["reference", *LEGS]
    assert all(r["status"] == "pass" for r in results), results
    saved = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert saved["results"] == results
    assert any(p.name.startswith("rank0") for p in (tmp_path / "check" / "traces").rglob("*.json"))  # the profiler ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_gpu_check_refuses_in_one_line(tmp_path):
    proc = python(["launch/gpu_check.py", "--out", str(tmp_path / "x")], check=False)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "x").exists()
