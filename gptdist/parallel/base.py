"""The one small interface between the training loop and a data-parallel backend.

The trainer never asks which backend it has. Per optimizer step it does:

    for micro_step in range(grad_accum):
        backend.set_grad_sync(micro_step == grad_accum - 1)   # BEFORE the forward (DDP reads it there)
        _, loss = backend.module(x, y)
        (loss / grad_accum).backward()
    backend.finish_grad_sync()                               # gradients now averaged over ranks
    grad_norm = backend.clip_grad_norm(max_norm)             # global norm, correct for sharded grads
    backend.optimizer_step(optimizer)                        # optimizer = backend.build_optimizer(...)
    backend.zero_grad()

The optimizer belongs to the backend: `build_optimizer` and `optimizer_step` default to AdamW over
`module` and `optimizer.step()`; a backend that shards the optimizer (zero) overrides them, and its
`checkpoint_optimizer` hands checkpoints the per-parameter form every other backend saves.

Collectives: a backend reports every collective it issues to `self.recorder`
(`gptdist.instrument.recorder`): `recorder.track(op, tensor, label, work)` right after an async call,
`with recorder.timed(op, tensor, label): ...` around a blocking one. Without instrumentation the
recorder is a NullRecorder whose methods do nothing.

State dicts go through `torch.distributed.checkpoint.state_dict` on `backend.module`, which understands
plain modules, DDP and FSDP2 alike (see gptdist/checkpoint.py), so backends need no save/load code.
How to add a backend: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from gptdist.dist import DistContext
from gptdist.instrument.recorder import NullRecorder
from gptdist.optim import build_optimizer as build_adamw


@dataclass
class NoOptions:
    """A backend without options (its `parallel.<name>` subsection is empty)."""


class Backend:
    """Base class. A backend is one file with one subclass that declares:

    - `name`: what `backend:` in the config says (and the `parallel.<name>` subsection's name);
    - `needs_group`: whether it needs a torch.distributed process group, even on one process;
    - `Options`: a dataclass whose fields are the backend's config subsection `parallel.<name>.*` (each field
      commented, no None defaults); the constructed backend receives an instance as `options`.

    Every backend is constructed as `cls(model, ctx, options, recorder=None)` and registered with one line
    in `gptdist/parallel/__init__.py`; the config, the launchers and the error messages derive from there.
    """

    name: str = ""
    needs_group: bool = True
    Options: type = NoOptions

    def __init__(self, model: nn.Module, ctx: DistContext, options=None, recorder=None):
        self.ctx = ctx
        self.options = options if options is not None else self.Options()
        self.recorder = recorder if recorder is not None else NullRecorder()
        self.raw_model = model  # the plain GPT (generate, num_params, config)
        self.module: nn.Module = model  # what the trainer calls forward on (may be a wrapper)
        self._sync = True

    # --- gradient synchronisation -------------------------------------------------------------
    def set_grad_sync(self, sync: bool) -> None:
        """Whether the coming forward+backward should synchronise gradients (False on the
        micro-steps of gradient accumulation that are not the last)."""
        self._sync = sync

    def finish_grad_sync(self) -> None:
        """Block until every gradient is averaged over all ranks (no-op on one process)."""

    # --- after the sync --------------------------------------------------------------------------
    def parameters(self) -> Iterable[nn.Parameter]:
        return self.module.parameters()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global L2 norm of all gradients (clipped to max_norm when max_norm > 0)."""
        params = [p for p in self.parameters() if p.grad is not None]
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(norm)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- the optimizer -------------------------------------------------------------------------
    def build_optimizer(self, train, device: torch.device) -> torch.optim.Optimizer:
        """AdamW with the trainer's parameter groups (train: config.TrainSection)."""
        return build_adamw(self.module, train, device)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    @contextlib.contextmanager
    def checkpoint_optimizer(self, optimizer: torch.optim.Optimizer) -> Iterator[torch.optim.Optimizer]:
        """The optimizer in the per-parameter form checkpoints hold (over `module`'s parameters), for
        the duration of a save or a load; a sharding backend gathers it on entry and scatters it on exit."""
        yield optimizer

    def close(self) -> None:
        """Remove hooks and free buffers (called once at the end of a run)."""
