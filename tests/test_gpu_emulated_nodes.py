"""Emulated nodes on one GPU host (the scaling study's `2x2`): each gets its own GPUs (finding 10)."""

from __future__ import annotations

import subprocess

import pytest

from gptdist.studies import scaling
from gptdist.dist import emulated_node_devices
from gptdist.errors import ConfigError


def test_each_emulated_node_gets_its_own_gpus():
    assert emulated_node_devices(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert emulated_node_devices(2, 1, ["4", "6"]) == ["4", "6"]  # a user's CUDA_VISIBLE_DEVICES is kept
    assert emulated_node_devices(2, 2, []) == [None, None]  # CPU runs: nothing to split
    with pytest.raises(ConfigError, match="need 4 GPUs; 2 visible"):
        emulated_node_devices(2, 2, ["0", "1"])


def test_run_spec_starts_each_node_on_its_own_gpus(tmp_path, monkeypatch):
    envs = []

    class FakeProc:
        returncode = 0

        def __init__(self, cmd, env, **_):
            envs.append(env.get("CUDA_VISIBLE_DEVICES"))

        def communicate(self, timeout=None):
            return "", None

    monkeypatch.setattr(subprocess, "Popen", FakeProc)
    monkeypatch.setattr("gptdist.studies.scaling.plan.visible_gpus", lambda: ["0", "1", "2", "3"])
    spec = scaling.RunSpec("ddp", scaling.Layout(2, 2), 4, 32, ("strong",))
    scaling.run_spec(spec, "configs/scaling_cpu.yaml", tmp_path, steps=1, threads_per_rank=1, timeout=10, log=lambda _: None)
    assert envs == ["0,1", "2,3"]
