"""The training step: the one thing the trainer runs and the studies (ladder, throughput) time.

    step = TrainStep(model, cfg, ctx, recorder)   # per-block compile + data-parallel backend, AdamW groups
    loss_sum, data_s = step.forward_backward(next_batch, grad_accum)
    grad_norm = step.sync_and_clip()              # gradients averaged over ranks, clipped to train.grad_clip
    step.update(lr)                               # the trainer skips this on a non-finite loss or norm
    step.zero_grad()

What it is, once for every caller: `parallelize` (torch.compile of each block when train.compile, then the
backend `cfg.backend` names), AdamW with parameter groups (weight decay on >=2-D tensors only,
gptdist/optim.py), autocast in train.dtype, gradient accumulation, the backend's grad sync, global-norm
clipping. The caller owns the clock, the data and the learning rate: the trainer adds its loss all-reduce,
stop vote and non-finite check between `sync_and_clip` and `update`; the studies call `run`.

`phase(name)` is a context manager around each part (the trainer passes its instrumentation's; none by
default), so the breakdown sees data / forward / backward / grad_sync / clip / optimizer / zero_grad.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch
import torch.nn as nn

from gptdist.config import Config
from gptdist.cpu_memory import keep_freed_memory
from gptdist.dist import DistContext
from gptdist.optim import set_lr
from gptdist.parallel import parallelize

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), each (B, T) token ids


def resolve_dtype(setting: str, device: torch.device) -> str:
    """train.dtype "auto": bf16 on CUDA, fp32 elsewhere."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


def autocast_context(dtype: str, device: torch.device):
    """bf16 autocast (matmuls in bf16, master weights and optimizer in fp32), or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _no_phase(name: str) -> ContextManager:
    return contextlib.nullcontext()


class TrainStep:
    def __init__(self, model: nn.Module, cfg: Config, ctx: DistContext, recorder=None,
                 phase: Callable[[str], ContextManager] = _no_phase):
        self.device = ctx.device
        if ctx.device.type == "cpu":
            keep_freed_memory()  # no page faults on the step's large tensors (gptdist/cpu_memory.py)
        self.dtype = resolve_dtype(cfg.train.dtype, ctx.device)
        self.grad_clip = cfg.train.grad_clip
        self.phase = phase
        self.backend = parallelize(model, cfg, ctx, recorder)
        # The optimizer belongs to the backend: AdamW over the module by default; zero shards it.
        self.optimizer = self.backend.build_optimizer(cfg.train, ctx.device)

    def forward_backward(self, next_batch: Callable[[], Batch], grad_accum: int = 1,
                         on_micro_step: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, float]:
        """`grad_accum` micro-steps of forward + backward. Returns the sum of the micro-steps' mean losses
        (detached, on the device: no sync) and the seconds spent in `next_batch`."""
        import time

        backend = self.backend
        backend.module.train()
        loss_sum = torch.zeros((), device=self.device)
        data_s = 0.0
        for micro_step in range(grad_accum):
            if on_micro_step is not None:
                on_micro_step(micro_step)
            t_data = time.perf_counter()
            with self.phase("data"):
                x, y = next_batch()
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            data_s += time.perf_counter() - t_data
            # Must be set before the forward: DDP decides in forward whether backward will all-reduce.
            backend.set_grad_sync(micro_step == grad_accum - 1)
            with self.phase("forward"), autocast_context(self.dtype, self.device):
                _, loss = backend.module(x, y)
            # Each micro-step's loss is a mean over its tokens; dividing by grad_accum makes the summed
            # gradient the mean over the whole step's tokens, as one big batch would give.
            with self.phase("backward"):
                (loss / grad_accum).backward()
            loss_sum += loss.detach()
        return loss_sum, data_s

    def sync_and_clip(self) -> float:
        """Wait for the gradient sync, then the global gradient norm (clipped when train.grad_clip > 0)."""
        with self.phase("grad_sync"):
            self.backend.finish_grad_sync()
        with self.phase("clip"):
            return self.backend.clip_grad_norm(self.grad_clip)  # the global norm: same on every rank

    def update(self, lr: float) -> None:
        with self.phase("optimizer"):
            set_lr(self.optimizer, lr)
            self.backend.optimizer_step(self.optimizer)

    def checkpoint_optimizer(self) -> ContextManager[torch.optim.Optimizer]:
        """The optimizer in the per-parameter form checkpoints hold, for a save or a load (a sharding
        backend gathers its state on entry and scatters it back on exit)."""
        return self.backend.checkpoint_optimizer(self.optimizer)

    def zero_grad(self) -> None:
        with self.phase("zero_grad"):
            self.backend.zero_grad()

    def run(self, next_batch: Callable[[], Batch], lr: float, grad_accum: int = 1) -> tuple[torch.Tensor, float]:
        """One whole step, no checks (the studies' timed step). Returns (mean loss over micro-steps, norm)."""
        loss_sum, _ = self.forward_backward(next_batch, grad_accum)
        grad_norm = self.sync_and_clip()
        self.update(lr)
        self.zero_grad()
        return loss_sum / grad_accum, grad_norm
