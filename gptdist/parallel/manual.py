"""`manual`: data parallelism written by hand, with bucketed all-reduce overlapped with backward.

What it does, in the order it happens:

1. At start, every parameter and buffer is broadcast from rank 0, so all replicas begin identical.
2. Gradients live in a few flat BUCKETS (see `gptdist/parallel/buckets.py`): parameters in reverse
   registration order, a small first bucket (1 MiB) then up to 25 MiB each. Each `p.grad` is a view
   into its bucket's buffer, so autograd accumulates straight into the buffer and the all-reduce
   needs no copy in or out.
3. A hook per parameter (`register_post_accumulate_grad_hook`) fires when its gradient for this
   backward is complete. When every parameter of a bucket is ready, the bucket is ready.
4. THE ORDER RULE. Bucket all-reduces are launched strictly in bucket-index order: bucket i is
   launched only after buckets 0..i-1. Ready order can differ between ranks (thread timing, the
   tied wte/lm_head weight that is ready only at the very end), but collectives on one process group
   must be issued in the same order on every rank, or rank 0's "bucket 3" meets rank 1's "bucket 2"
   and they exchange the wrong data or hang. So a bucket that becomes ready early waits for its
   predecessors.
5. OVERLAP. A launch is asynchronous (`async_op=True`): the all-reduce of bucket 0 runs while
   autograd computes the gradients of earlier layers. `finish_grad_sync()` waits for every bucket and
   divides by the world size. With `parallel.manual.overlap=false` nothing is launched during backward and
   all buckets are all-reduced after it, which shows what overlap buys.

Gradient accumulation: on micro-steps with `set_grad_sync(False)` the hooks do nothing, gradients
accumulate locally in the buckets, and no collective runs. Only the last micro-step all-reduces.

Zeroing: the optimizer must not set grads to None (that would drop the bucket views); the trainer
calls `backend.zero_grad()`, which zeroes the buckets in place.

                         backward (autograd, last layer first)
    compute:  [grads h.N-1 ....][grads h.N-2 ....][ ... ][grads h.0, wpe, wte]
    comm:                   [all_reduce b0]  [all_reduce b1]  ...        [all_reduce bK-1] wait, /world
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from gptdist.dist import DistContext
from gptdist.parallel.base import Backend
from gptdist.parallel.broadcast import broadcast_from_rank0
from gptdist.errors import ConfigError
from gptdist.parallel.buckets import MB, Bucket, plan_buckets


@dataclass
class CommStats:
    """Counters a test or a report can read: how much the backend communicated."""

    all_reduce_calls: int = 0  # bucket all-reduces launched since construction
    all_reduce_bytes: int = 0
    synced_steps: int = 0  # finish_grad_sync calls that averaged gradients


@dataclass
class ManualOptions:
    """`parallel.manual.*`: the handwritten bucketed all-reduce.

    Fields:
        bucket_cap_mb: gradient bucket size cap (MiB)
        first_bucket_mb: the first bucket (last layers' grads) is small so communication starts early (MiB)
        overlap: launch each bucket's all-reduce during backward; false = all after backward
    """

    bucket_cap_mb: float = 25.0
    first_bucket_mb: float = 1.0
    overlap: bool = True

    def __post_init__(self):
        if self.bucket_cap_mb <= 0 or self.first_bucket_mb <= 0:
            raise ConfigError("manual bucket sizes must be > 0")


class ManualBackend(Backend):
    name = "manual"
    needs_group = True
    Options = ManualOptions

    def __init__(self, model: nn.Module, ctx: DistContext, options: ManualOptions, recorder=None):
        super().__init__(model, ctx, options, recorder)
        cfg = options
        self.overlap = cfg.overlap
        self.world_size = dist.get_world_size()
        if self.world_size > 1:
            broadcast_from_rank0(model, self.recorder)

        named = list(model.named_parameters())  # dedups tied parameters: wte/lm_head appears once
        self.buckets: list[Bucket] = plan_buckets(
            named, int(cfg.bucket_cap_mb * MB), int(cfg.first_bucket_mb * MB)
        )
        params_by_name = dict(named)
        self._bucket_params: list[list[nn.Parameter]] = []
        self._grad_views: dict[nn.Parameter, torch.Tensor] = {}
        self._bucket_of: dict[nn.Parameter, int] = {}
        for bucket in self.buckets:
            bucket.buffer = torch.zeros(bucket.numel, dtype=bucket.dtype, device=bucket.device)
            params = []
            for name, shape, offset in zip(bucket.names, bucket.shapes, bucket.offsets):
                p = params_by_name[name]
                view = bucket.buffer[offset : offset + p.numel()].view(shape)
                p.grad = view  # autograd now accumulates into the bucket in place
                self._grad_views[p] = view
                self._bucket_of[p] = bucket.index
                params.append(p)
            self._bucket_params.append(params)

        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in self._grad_views]
        self.stats = CommStats()
        self.last_launch_order: list[int] = []  # bucket indices in launch order, last synced step
        self._reset_step()

    # --- per-step state ------------------------------------------------------------------------
    def _reset_step(self) -> None:
        self._pending = [len(params) for params in self._bucket_params]  # params not yet ready
        self._next_to_launch = 0  # the order rule: only this bucket may be launched next
        self._works: list[dist.Work] = []
        self.launch_order: list[int] = []  # bucket indices launched so far in this synced step

    def _on_grad_ready(self, p: nn.Parameter) -> None:
        """Called by autograd once p.grad holds this backward's full gradient."""
        if p.grad is None or p.grad.data_ptr() != self._grad_views[p].data_ptr():
            raise RuntimeError(
                "manual backend: a gradient is no longer a view of its bucket (was optimizer.zero_grad() "
                "or p.grad = None used?); call backend.zero_grad() instead"
            )
        if not self._sync:
            return  # accumulation micro-step: keep the gradient local
        i = self._bucket_of[p]
        self._pending[i] -= 1
        if self._pending[i] < 0:
            raise RuntimeError("manual backend: a second synced backward before finish_grad_sync()")
        if self._pending[i] == 0:
            self.recorder.mark("bucket_ready", i, self.buckets[i].bytes)  # for the scaling simulator
        if self.overlap:
            self._launch_ready_buckets()

    def _launch_ready_buckets(self) -> None:
        # Launch in index order only: a ready bucket waits until all buckets before it are launched.
        while self._next_to_launch < len(self.buckets) and self._pending[self._next_to_launch] == 0:
            self._launch_bucket(self._next_to_launch)

    def _launch_bucket(self, i: int) -> None:
        """The one place a collective is issued: an async SUM all-reduce of bucket i's flat buffer."""
        assert i == self._next_to_launch, "buckets must be launched in index order"
        bucket = self.buckets[i]
        # SUM, then divide in finish_grad_sync: older gloo builds reject ReduceOp.AVG.
        work = dist.all_reduce(bucket.buffer, op=dist.ReduceOp.SUM, async_op=True)
        self._works.append(self.recorder.track("all_reduce", bucket.buffer, f"bucket={i}", work))
        self.launch_order.append(i)
        self.stats.all_reduce_calls += 1
        self.stats.all_reduce_bytes += bucket.bytes
        self._next_to_launch += 1

    # --- the Backend interface ----------------------------------------------------------------
    def finish_grad_sync(self) -> None:
        if not self._sync:
            return  # the last micro-step did not ask for a sync: gradients stay local
        # Buckets not launched yet: all of them with overlap off, or any whose parameters got no
        # gradient this step (unused parameters; their slice is zero). Same index order as always.
        while self._next_to_launch < len(self.buckets):
            self._launch_bucket(self._next_to_launch)
        for work in self._works:
            work.wait()
        for bucket in self.buckets:
            bucket.buffer.div_(self.world_size)  # sum -> mean over ranks
        self.stats.synced_steps += 1
        self.last_launch_order = self.launch_order
        self._reset_step()

    def zero_grad(self) -> None:
        for bucket in self.buckets:
            bucket.buffer.zero_()
        for p, view in self._grad_views.items():
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view  # re-attach if someone set it to None

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.raw_model.parameters()

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
