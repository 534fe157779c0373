"""Throughput, MFU and step bookkeeping as the trainer reports them (issue 14's CPU-checkable findings)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from gptdist import flops
from gptdist.config import batch_plan, build_config, resolve_model
from gptdist.dist import init_distributed
from gptdist.errors import GptdistError
from gptdist.trainer import Trainer, train
from launchers import torchrun
from synthetic import make_token_dataset
from test_trainer import tiny as tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_token_dataset(tmp_path_factory.mktemp("data"))


def tiny(data_dir: Path, out_dir: Path, **overrides):
    """test_trainer's tiny run: 4 steps, no evaluation (it would restart the step period), no final checkpoint."""
    return tiny_run(data_dir, out_dir, **{"train.max_steps": 4, "eval.val_every": 0, "checkpoint.at_end": False, **overrides})


def rows(path: Path, kind: str | None = None) -> list[dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [r for r in lines if kind is None or r.get("kind") == kind]


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
@pytest.mark.parametrize("world", [1, 2, 4, 8, 16])
def test_shipped_configs_start_at_1_to_16_ranks(config, world):
    """The 8-GPU recipe and the 2x8-GPU Slurm recipe run configs/gpt2_fineweb.yaml: both must get a batch plan
    (64 per GPU x 1024 x 16 ranks was twice the 524,288-token step)."""
    cfg = build_config(str(REPO / "configs" / config), {})
    plan = batch_plan(cfg, world)
    assert plan.micro_batch * plan.seq_len * world * plan.grad_accum == plan.tokens_per_step


def test_fineweb_recipe_keeps_its_step_size_at_8_and_16_gpus():
    cfg = build_config(str(REPO / "configs" / "gpt2_fineweb.yaml"), {})
    assert [batch_plan(cfg, w).tokens_per_step for w in (8, 16)] == [524_288, 524_288]


def test_h200_nvl_has_its_own_peak():
    # NVIDIA's H200 datasheet: NVL BF16 1,671 TFLOPS with sparsity (835.5 dense); SXM 1,979 (989.5 -> 989 here).
    assert flops.peak_flops("NVIDIA H200 NVL", torch.bfloat16) == pytest.approx(835.5e12)
    assert flops.peak_flops("NVIDIA H200", torch.bfloat16) == pytest.approx(989e12)


def test_mfu_is_per_device_at_world_size_2(data_dir, tmp_path):
    """2 ranks, each 4x32 tokens x 2 micro-steps per step, a given peak of 1 GFLOP/s per device. Per-device MFU
    = 256 tokens / period x FLOPs per token / peak. (Counting both ranks' tokens against one peak doubles it.)"""
    peak_tflops = 1e-3
    args = {"model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 4, "data.seq_len": 32,
            "train.max_steps": 3, "train.device": "cpu", "eval.val_every": 0, "checkpoint.at_end": False,
            "log.out_dir": str(tmp_path), "log.run_name": "mfu", "backend": "manual",
            "train.global_batch_tokens": 4 * 32 * 2 * 2, "train.peak_tflops": peak_tflops}
    torchrun(["launch/train.py", *[f"--{k}={v}" for k, v in args.items()]], nproc=2, timeout=300)
    cfg = build_config(None, {k: v for k, v in args.items()})
    per_token = flops.flops_per_token(resolve_model(cfg), 32)
    for r in rows(tmp_path / "mfu" / "metrics.jsonl", "train"):
        tokens_per_rank = 4 * 32 * 2
        expected = tokens_per_rank / (r["period_ms"] / 1e3) * per_token / (peak_tflops * 1e12)
        assert r["mfu"] == pytest.approx(expected, rel=1e-9)
        assert r["tokens_per_s"] == pytest.approx(2 * tokens_per_rank / (r["period_ms"] / 1e3), rel=1e-9)


def test_throughput_counts_host_work_between_steps(data_dir, tmp_path, monkeypatch):
    """Host work between steps (here 50 ms of logging) belongs to the step period that throughput is
    computed from; the step's own time leaves it out."""
    cfg = tiny(data_dir, tmp_path, **{"train.peak_tflops": 1e-3})
    trainer = Trainer(cfg, init_distributed("cpu"))
    logged = []
    original = trainer._log_step

    def slow_log(r):
        original(r)
        logged.append(r)
        time.sleep(0.05)

    monkeypatch.setattr(trainer, "_log_step", slow_log)
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert logged[0].period_ms == logged[0].step_ms  # the first step has no previous end
    for r in logged[1:]:
        assert r.period_ms >= r.step_ms + 50
    metrics = rows(tmp_path / "run" / "metrics.jsonl", "train")
    for m, r in zip(metrics, logged):
        assert m["tokens_per_s"] == pytest.approx(r.tokens / (r.period_ms / 1e3))


def test_one_synchronize_per_step(data_dir, tmp_path, monkeypatch):
    """The step ends with a synchronize (the breakdown reads its events then); none at its start."""
    calls = []
    monkeypatch.setattr("gptdist.trainer.synchronize", lambda device: calls.append(device))
    train(tiny(data_dir, tmp_path), init_distributed("cpu"))
    assert len(calls) == 4


def test_out_of_memory_says_so_with_the_batch(data_dir, tmp_path, monkeypatch):
    trainer = Trainer(tiny(data_dir, tmp_path), init_distributed("cpu"))

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.14 GiB")

    monkeypatch.setattr(trainer, "train_step", oom)
    try:
        with pytest.raises(GptdistError, match=r"out of memory at step 1 .*micro-batch 4x32.*lower data.batch_size"):
            trainer.fit()
    finally:
        trainer.close()


@pytest.mark.parametrize("error, says_collective", [
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x32 and 33x32)"), False),
    (RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:1234"), True),
    (dist.DistError("NCCL communicator was aborted on rank 1"), True),
])
def test_only_transport_errors_under_a_group_are_called_collective_failures(data_dir, tmp_path, monkeypatch, error,
                                                                           says_collective):
    import dataclasses

    trainer = Trainer(tiny(data_dir, tmp_path), init_distributed("cpu"))
    trainer.ctx = dataclasses.replace(trainer.ctx, backend="gloo")  # as under a process group

    def fails():
        raise error

    monkeypatch.setattr(trainer, "train_step", fails)
    try:
        if says_collective:
            with pytest.raises(GptdistError, match=r"rank 0: collective failed at step 1 .*another rank may have died"):
                trainer.fit()
        else:  # a compute bug keeps its own type and message (main_guard still prints one line)
            with pytest.raises(RuntimeError, match=r"^mat1 and mat2 shapes") as raised:
                trainer.fit()
            assert not isinstance(raised.value, GptdistError)
    finally:
        trainer.close()


def test_steps_jsonl_numbers_continue_after_a_resume_without_collective_records(data_dir, tmp_path):
    off = {"instrument.collectives": False, "checkpoint.every": 2}
    train(tiny(data_dir, tmp_path, **{"train.max_steps": 2, "checkpoint.at_end": True, **off}), init_distributed("cpu"))
    train(tiny(data_dir, tmp_path, **{"checkpoint.resume": "auto", **off}), init_distributed("cpu"))
    steps = [r["step"] for r in rows(tmp_path / "run" / "ranks" / "rank0" / "steps.jsonl")]
    assert steps == [1, 2, 3, 4]
