"""`ddp`: torch's DistributedDataParallel, the production version of what `manual.py` does by hand.

DDP broadcasts rank 0's parameters and buffers at construction, buckets the gradients (reverse
parameter order, `parallel.ddp.bucket_cap_mb`, a small first bucket) and all-reduces each bucket
during backward, in bucket order. `gradient_as_bucket_view=True` makes each `p.grad` a view of its
bucket, as in the manual backend (no copy, less memory).

The accumulation pitfall: DDP decides in FORWARD whether the coming backward syncs. `forward` reads
`require_backward_grad_sync` (what the `no_sync()` context manager toggles) and only then prepares the
reducer. Setting it after the forward and before the backward is too late: the backward would
all-reduce anyway (or, the other way round, skip a sync it needed). Hence the trainer's contract:
`set_grad_sync` is called BEFORE each micro-step's forward.

Timing the bucket all-reduces: the reducer issues them in C++, where Python cannot see them. With an
active recorder the backend registers `timed_allreduce_hook`, a DDP communication hook that does what
DDP does without a hook (and what torch's `default_hooks.allreduce_hook` does): divide the flat
bucket by the world size, SUM all-reduce it asynchronously, hand the result back. The only addition
is `recorder.track(...)` on the Work (and a "bucket_ready" mark for the scaling simulator).
tests/test_instrument_dist.py checks gradients are bitwise equal with and without the hook. DDP's
construction (a coalesced broadcast of rank 0's parameters and buffers, plus a check that every rank
has the same parameter shapes) is timed as one block.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from gptdist.errors import ConfigError
from gptdist.dist import DistContext
from gptdist.parallel.base import Backend


def timed_allreduce_hook(state, bucket):
    """DDP's default all-reduce (mean over ranks of the flat bucket), recorded. state: (recorder, group);
    bucket: dist.GradBucket; returns a Future[Tensor]. (No annotations: with `from __future__ import
    annotations` they are strings, which DDP's signature check rejects.)"""
    recorder, group = state
    buffer = bucket.buffer()
    # DDP calls the hook when the bucket is ready and buckets are launched in index order, so this is the
    # bucket's launch point: what the scaling simulator replays (with DDP's own, rebuilt bucket layout).
    recorder.mark("bucket_ready", bucket.index(), buffer.numel() * buffer.element_size())
    buffer.div_(group.size())  # divide first, as DDP does (keeps fp16 sums in range)
    work = dist.all_reduce(buffer, group=group, async_op=True)
    recorder.track("all_reduce", buffer, f"bucket={bucket.index()}", work, group_size=group.size(), group=group)

    def reduced(fut):
        fut.wait()  # raises if the all-reduce failed
        return buffer  # reduced in place (a fake process group's future, GPTDIST_FAKE_WORLD, carries no value)

    return work.get_future().then(reduced)


@dataclass
class DDPOptions:
    """`parallel.ddp.*`: torch's DistributedDataParallel.

    Fields:
        bucket_cap_mb: DDP's bucket_cap_mb (MiB)
        gradient_as_bucket_view: gradients are views of DDP's buckets (no copy in or out)
    """

    bucket_cap_mb: float = 25.0
    gradient_as_bucket_view: bool = True

    def __post_init__(self):
        if self.bucket_cap_mb <= 0:
            raise ConfigError("ddp bucket_cap_mb must be > 0")


class DDPBackend(Backend):
    name = "ddp"
    needs_group = True
    Options = DDPOptions

    def __init__(self, model: nn.Module, ctx: DistContext, options: DDPOptions, recorder=None):
        super().__init__(model, ctx, options, recorder)
        cfg = options
        self.gradient_as_bucket_view = cfg.gradient_as_bucket_view
        # The model's only buffer is the constant causal mask, the same on every rank: re-broadcasting
        # it before every forward would be a useless collective per micro-step. Newer torch names
        # the option forward_sync_buffers (and still syncs buffers once at construction).
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            buffer_option = {"forward_sync_buffers": False}
        else:
            buffer_option = {"broadcast_buffers": False}
        state_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        with self.recorder.timed("broadcast", label="ddp_init (coalesced, + shape check)", nbytes=state_bytes):
            self.module = DistributedDataParallel(
                model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                bucket_cap_mb=cfg.bucket_cap_mb,
                gradient_as_bucket_view=cfg.gradient_as_bucket_view,
                **buffer_option,
            )
        self._ready_hooks = []
        if self.recorder.enabled:
            self.module.register_comm_hook((self.recorder, dist.group.WORLD), timed_allreduce_hook)
            # The reducer waits for its last bucket inside loss.backward(). Marking when each gradient is
            # computed lets the step breakdown count the rest of backward as waiting, not compute.
            self._ready_hooks = [
                p.register_post_accumulate_grad_hook(lambda _p: self.recorder.grad_ready())
                for p in model.parameters() if p.requires_grad
            ]

    def set_grad_sync(self, sync: bool) -> None:
        super().set_grad_sync(sync)
        # The flag `with ddp.no_sync():` sets; read by DDP's forward, so it must be set before it.
        self.module.require_backward_grad_sync = sync

    def finish_grad_sync(self) -> None:
        # DDP's backward ends only after every bucket's all-reduce finished and was copied back
        # (averaged) into the gradients, so there is nothing left to wait for.
        pass

    def zero_grad(self) -> None:
        # With bucket views, zero in place: setting .grad to None would drop the views
        # (DDP re-creates them, but zeroing keeps the memory layout fixed).
        self.module.zero_grad(set_to_none=not self.gradient_as_bucket_view)

    def parameters(self):
        return self.raw_model.parameters()

    def close(self) -> None:
        for hook in self._ready_hooks:
            hook.remove()
        self._ready_hooks = []
