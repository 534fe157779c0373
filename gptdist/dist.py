"""Process-group set-up from torchrun's environment, device choice, timeouts and teardown.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every
process it starts (single node with --standalone, or several nodes through a c10d rendezvous).
`init_distributed` reads them; a plain `python` launch is a world of one. NCCL is used when each local
rank has a CUDA device, gloo otherwise.

GPTDIST_FAKE_WORLD=N (a plain `python` launch only): one process rehearses rank 0 of a world of N on torch's
fake process group. Every collective returns at once and moves nothing, so the values are wrong, but the
process does all of its backend's own work at N ranks: FSDP's 1/N shards, its copies into and out of the
collectives' buffers, the optimizer on the shard, a bucketed backend's buckets. The scaling simulator replays
such a run's timeline (a rank's compute at N ranks, measured without a multi-rank run), and its peak memory is
rank 0's at N ranks.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from gptdist.errors import ConfigError
from gptdist.net import free_port


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: Optional[str]  # "nccl", "gloo", or None when no process group was made

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes shared files and prints the step line."""
        return self.rank == 0

    @property
    def has_group(self) -> bool:
        return self.backend is not None

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """One device per local rank: cuda:LOCAL_RANK when CUDA is there (or asked for), else the CPU."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible "
                "(use --nproc-per-node <= the number of GPUs)"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _attempt_store(timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store, with keys prefixed by the restart attempt.

    Under `torchrun --max-restarts=K` the rendezvous store outlives a failed attempt. Without a prefix,
    the restarted workers read the previous attempt's peer addresses (gloo's full-mesh connect then
    fails with "connection refused" and the group never forms again).
    """
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"gptdist/attempt_{attempt}", store)


def fake_world_size() -> int:
    """GPTDIST_FAKE_WORLD as a world size (0 when unset; 1 is a plain world of one)."""
    text = os.environ.get("GPTDIST_FAKE_WORLD", "").strip()
    if not text:
        return 0
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"GPTDIST_FAKE_WORLD must be a world size >= 1, not {text!r}")
    if n > 1 and launched_by_torchrun():
        raise ConfigError("GPTDIST_FAKE_WORLD rehearses a world of N in ONE process: launch with `python`, not torchrun")
    return n


def init_distributed(
    device_preference: str = "auto",
    timeout_s: float = 600.0,
    need_group: bool = False,
) -> DistContext:
    """Join the process group torchrun describes, or make a world of one.

    need_group: make a one-rank process group even without torchrun (the ddp and fsdp backends need
    one; `python launch/train.py --backend fsdp` then runs them on a single process).
    """
    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        rank, world, local_rank, local_world = 0, 1, 0, 1
    fake_world = fake_world_size()
    if fake_world > 1:
        device = choose_device(device_preference, 0)
        if not dist.is_initialized():
            import torch.testing._internal.distributed.fake_pg  # noqa: F401  (registers the "fake" backend)

            dist.init_process_group("fake", store=dist.HashStore(), rank=0, world_size=fake_world)
        elif dist.get_world_size() != fake_world:
            raise ConfigError(f"GPTDIST_FAKE_WORLD={fake_world}, but this process already has a process group of "
                              f"{dist.get_world_size()} rank(s)")
        return DistContext(0, fake_world, 0, fake_world, device, "fake")
    # GPTDIST_GLOO_ON_CUDA=1: gloo with CUDA tensors, every local rank on the visible GPUs in turn. NCCL
    # refuses two ranks on one GPU; the device check (gptdist/gpu_check.py) runs 2 ranks on one GPU this way.
    gloo_on_cuda = os.environ.get("GPTDIST_GLOO_ON_CUDA") == "1" and torch.cuda.is_available()
    device = choose_device(device_preference, local_rank % torch.cuda.device_count() if gloo_on_cuda else local_rank)
    if world == 1 and not need_group:
        return DistContext(rank, world, local_rank, local_world, device, None)

    backend = "nccl" if device.type == "cuda" and not gloo_on_cuda else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if backend == "nccl":
        # NCCL's own per-collective start/end events (Work._get_duration): the collective recorder's
        # source of async collective durations on GPUs (gptdist/instrument/recorder.py). Read by
        # ProcessGroupNCCL at creation, so it must be set before init_process_group.
        os.environ.setdefault("TORCH_NCCL_ENABLE_TIMING", "1")
        # NCCL's flight recorder: the last collectives and their states, dumped into the run folder by
        # gptdist/instrument/watchdog.py when a peer stalls. Also read at process-group creation.
        os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        if launched_by_torchrun():
            # device_id binds the NCCL communicator to this GPU eagerly (no lazy init on first collective).
            kwargs = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend=backend, store=_attempt_store(timeout), rank=rank, world_size=world, timeout=timeout, **kwargs)
        else:
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://127.0.0.1:{free_port()}",
                rank=0,
                world_size=1,
                timeout=timeout,
            )
    return DistContext(rank, world, local_rank, local_world, device, backend)


def teardown() -> None:
    """Destroy the process group if there is one (safe to call twice, and after an error)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - teardown after a failed collective must not mask it
            pass


@contextmanager
def distributed(device_preference: str = "auto", timeout_s: float = 600.0, need_group: bool = False) -> Iterator[DistContext]:
    """`with distributed(...) as ctx:` — the process group lives exactly as long as the block."""
    ctx = init_distributed(device_preference, timeout_s, need_group)
    try:
        yield ctx
    finally:
        teardown()


def barrier(ctx: DistContext) -> None:
    if ctx.has_group:
        dist.barrier()


def all_reduce_scalar(value: float, ctx: DistContext, op: str = "sum") -> float:
    """Reduce one Python number across ranks (on the CPU for gloo, on the device for NCCL)."""
    if not ctx.has_group:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    dist.all_reduce(t, op=reduce_op)
    return t.item()


def emulated_node_devices(nodes: int, per_node: int, visible: list[str]) -> list[Optional[str]]:
    """CUDA_VISIBLE_DEVICES for each of `nodes` emulated nodes on one host (the scaling study's `2x2`):
    node i gets GPUs [i*per_node, (i+1)*per_node) of the visible ones, so no two "nodes" share a GPU
    (NCCL refuses that: duplicate GPU). No GPUs visible: None for every node (CPU runs). Too few: an error."""
    if not visible:
        return [None] * nodes
    if nodes * per_node > len(visible):
        raise ConfigError(f"{nodes} emulated nodes x {per_node} GPUs need {nodes * per_node} GPUs; "
                          f"{len(visible)} visible ({','.join(visible)})")
    return [",".join(visible[i * per_node:(i + 1) * per_node]) for i in range(nodes)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]
