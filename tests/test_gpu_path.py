"""The CUDA/NCCL measurement paths, run on a simulated GPU (tests/fake_cuda.py) so they run in CI on CPU.

Each test sets up a timeline whose true answer is known by construction (kernels and collectives of
given lengths on given streams) and checks what the recorder / step breakdown report against it.
"""

from __future__ import annotations

import types

import pytest
import torch

from fake_cuda import FakeGPU
from gptdist.config import build_config
from gptdist.dist import DistContext
from gptdist.instrument.instrumentation import Instrumentation
from gptdist.instrument.recorder import CollectiveRecorder
from gptdist.parallel.fsdp import TimedAllGather, TimedReduceScatter

CUDA = torch.device("cuda", 0)  # only a label here: nothing is allocated on it
MS = 1e-3


def recorder(gpu) -> CollectiveRecorder:
    return CollectiveRecorder(CUDA, rank=0, world_size=2, clock=gpu)


def finish(gpu, rec):
    """What end_step does: synchronize, take the reference, collect."""
    gpu.synchronize()
    ref_event = gpu.record()
    gpu.wait(ref_event)
    return rec.collect((ref_event, gpu.host_now()))


def test_queued_collectives_each_get_their_own_duration():
    """Four 5 ms all-reduces issued back to back run one after another on the group's NCCL stream: each
    lasts 5 ms, the k-th starting at 5k ms. (The old chaining read 5 / 0 / 0 / 0.)"""
    gpu, x = FakeGPU(), torch.zeros(4)
    rec = recorder(gpu)
    for i in range(4):
        rec.track("all_reduce", x, f"bucket={i}", gpu.collective(5 * MS))
        gpu.host(0.01 * MS)  # the host returns at once
    records = finish(gpu, rec)
    assert [round(r.duration_s / MS, 6) for r in records] == [5, 5, 5, 5]
    assert [round(r.start_s / MS, 6) for r in records] == [0, 5, 10, 15]


def test_queued_collectives_are_chained_per_process_group():
    """Two groups have two NCCL streams: their collectives run side by side, each chain in its own order."""
    gpu, x = FakeGPU(), torch.zeros(4)
    a, b = object(), object()
    rec = recorder(gpu)
    rec.track("all_gather", x, "a0", gpu.collective(4 * MS, "a"), group=a)
    rec.track("reduce_scatter", x, "b0", gpu.collective(6 * MS, "b"), group=b)
    rec.track("all_gather", x, "a1", gpu.collective(4 * MS, "a"), group=a)
    records = {r.label: r for r in finish(gpu, rec)}
    assert (records["a0"].start_s, records["a0"].end_s) == pytest.approx((0, 4 * MS))
    assert (records["b0"].start_s, records["b0"].end_s) == pytest.approx((0, 6 * MS))
    assert (records["a1"].start_s, records["a1"].end_s) == pytest.approx((4 * MS, 8 * MS))


def test_collective_waits_for_the_issuing_streams_queued_compute():
    """The host issues the all-reduce at t=0, but the stream still has 20 ms of backward queued: NCCL's
    stream waits for that point, so the collective runs 20..25 ms, not 0..5."""
    gpu, x = FakeGPU(), torch.zeros(4)
    rec = recorder(gpu)
    gpu.kernel(20 * MS)
    rec.track("all_reduce", x, "bucket=0", gpu.collective(5 * MS))
    (r,) = finish(gpu, rec)
    assert (r.start_s, r.end_s) == pytest.approx((20 * MS, 25 * MS))


def test_nccl_timing_off_counts_the_collective_says_why_once_and_does_not_raise(capsys):
    gpu, x = FakeGPU(nccl_timing=False), torch.zeros(4)
    rec = recorder(gpu)
    rec.track("all_reduce", x, "bucket=0", gpu.collective(5 * MS))
    rec.track("all_reduce", x, "bucket=1", gpu.collective(5 * MS))
    with rec.timed("all_reduce", x, "loss"):
        gpu.kernel(1 * MS)  # a blocking call: timed by events, needs no NCCL timing
    records = finish(gpu, rec)
    assert [r.label for r in records] == ["bucket=0", "bucket=1", "loss"]
    assert [r.duration_s for r in records[:2]] == [None, None]
    assert records[2].duration_s == pytest.approx(1 * MS)
    out = capsys.readouterr().out
    assert out.count("NCCL work timing unavailable") == 1 and "TORCH_NCCL_ENABLE_TIMING" in out
    assert rec.untimed == 2


def test_marks_are_device_times_not_the_hooks_host_times():
    """A bucket is ready when the GPU computed its last gradient (30 ms), not when autograd's thread,
    running ahead, called the hook (host time 0)."""
    gpu = FakeGPU()
    rec = recorder(gpu)
    gpu.kernel(30 * MS)
    rec.mark("bucket_ready", 0, 1024)
    gpu.synchronize()
    ref = gpu.record()
    gpu.wait(ref)
    ((name, index, nbytes, t),) = rec.take_marks((ref, gpu.host_now()))
    assert (name, index, nbytes) == ("bucket_ready", 0, 1024) and t == pytest.approx(30 * MS)


# --- the step breakdown on a simulated GPU ----------------------------------------------------------------

class NoTelemetry:
    def sample(self):
        return {}


def instrumentation(gpu, tmp_path) -> Instrumentation:
    cfg = build_config(None, {"model.preset": "test", "data.dir": str(tmp_path), "data.seq_len": 32})
    ctx = DistContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=CUDA, backend=None)
    instr = Instrumentation(cfg, ctx, tmp_path, clock=gpu)
    instr.telemetry = NoTelemetry()
    return instr


def test_ddp_wait_inside_backward_is_cut_at_the_last_gradient_on_cuda(tmp_path):
    """backward: 30 ms of kernels; the last gradient's hook runs on the host at once (t≈0). The one bucket's
    10 ms all-reduce follows, and DDP's reducer makes the stream wait for it inside backward, so the
    backward phase spans 40 ms. Compute is 30 ms, communication 10 ms, all of it exposed."""
    gpu = FakeGPU()
    instr = instrumentation(gpu, tmp_path)
    rec = instr.recorder
    instr.begin_step(1)
    with instr.phase("backward"):
        gpu.kernel(30 * MS)
        rec.grad_ready()
        work = rec.track("all_reduce", torch.zeros(4), "bucket=0", gpu.collective(10 * MS))
        work.wait()
    gpu.synchronize()
    values = instr.end_step(40.0)
    assert values["time/backward_ms"] == pytest.approx(40)
    assert values["time/compute_ms"] == pytest.approx(30)
    assert values["comm/total_ms"] == pytest.approx(10)
    assert values["comm/exposed_ms"] == pytest.approx(10)
    instr.close()


class FakeGroup:
    def size(self):
        return 2


def test_fsdp_collectives_on_cuda_are_device_timed_and_do_not_block(tmp_path, monkeypatch):
    """FSDP issues its all-gather with async_op=False from its all-gather stream; on CUDA that blocks
    nothing on the host. An 8 ms all-gather on that stream beside 20 ms of forward kernels is fully
    overlapped: compute 20 ms, comm 8 ms, exposed 0."""
    gpu = FakeGPU()
    calls = []

    def fake_collective(self, output_tensor, input_tensor, group, *rest, async_op=False):
        calls.append(async_op)
        work = gpu.collective(8 * MS, "fsdp")
        if async_op:
            return work
        work.wait()  # what dist.* does with a synchronous call's Work: the current stream waits
        return None

    monkeypatch.setattr("torch.distributed.fsdp._fully_shard._fsdp_collectives.DefaultAllGather.__call__", fake_collective)
    monkeypatch.setattr("torch.distributed.fsdp._fully_shard._fsdp_collectives.DefaultReduceScatter.__call__", fake_collective)
    instr = instrumentation(gpu, tmp_path)
    all_gather = TimedAllGather(instr.recorder, "module=h.0")
    instr.begin_step(1)
    with instr.phase("forward"):
        with gpu.stream("all_gather"):
            host_before = gpu.host_now()
            assert all_gather(torch.zeros(8), torch.zeros(4), FakeGroup(), async_op=False) is None
            assert gpu.host_now() == host_before  # the host did not wait
            assert gpu.busy["all_gather"] == pytest.approx(8 * MS)  # FSDP's stream waits for the collective
        gpu.kernel(20 * MS)
    gpu.synchronize()
    values = instr.end_step(20.0)
    assert values["time/compute_ms"] == pytest.approx(20)
    assert values["comm/total_ms"] == pytest.approx(8)
    assert values["comm/exposed_ms"] == pytest.approx(0)
    assert calls == [True]
    instr.close()


def test_fsdp_reduce_scatter_on_cuda_is_recorded_non_blocking(monkeypatch):
    gpu = FakeGPU()

    def fake_collective(self, output_tensor, input_tensor, group, op, async_op=False):
        return gpu.collective(3 * MS, "fsdp")

    monkeypatch.setattr("torch.distributed.fsdp._fully_shard._fsdp_collectives.DefaultReduceScatter.__call__", fake_collective)
    rec = recorder(gpu)
    reduce_scatter = TimedReduceScatter(rec, "module=h.0")
    assert reduce_scatter(torch.zeros(4), torch.zeros(8), FakeGroup(), op=None, async_op=False) is None
    (r,) = finish(gpu, rec)
    assert (r.op, r.blocking, r.bytes) == ("reduce_scatter", False, 32)
    assert r.duration_s == pytest.approx(3 * MS)


def test_phases_map_device_time_when_the_host_runs_ahead(tmp_path):
    """No synchronize at the start of a step: the host enqueues forward (10 ms) and backward (20 ms) at
    once; the phases still read 10 and 20 ms of device time."""
    gpu = FakeGPU()
    instr = instrumentation(gpu, tmp_path)
    instr.begin_step(1)
    with instr.phase("forward"):
        gpu.kernel(10 * MS)
    with instr.phase("backward"):
        gpu.kernel(20 * MS)
    assert gpu.host_now() == 0  # nothing waited so far
    gpu.synchronize()
    values = instr.end_step(30.0)
    assert values["time/forward_ms"] == pytest.approx(10)
    assert values["time/backward_ms"] == pytest.approx(20)
    assert values["time/compute_ms"] == pytest.approx(30)
    instr.close()
