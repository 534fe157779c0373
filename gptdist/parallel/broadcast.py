"""Start-up: make every rank's replica equal to rank 0's (shared by every backend that wraps a model)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from gptdist.instrument.recorder import NullRecorder


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module, recorder=None) -> None:
    """Make every rank's parameters and buffers equal to rank 0's (one broadcast per tensor)."""
    recorder = recorder if recorder is not None else NullRecorder()
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in named:
        with recorder.timed("broadcast", tensor, f"init {name}"):
            dist.broadcast(tensor.data, src=0)
