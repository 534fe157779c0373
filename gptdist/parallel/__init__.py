"""Data-parallel backends. `parallelize(model, cfg, ctx)` returns the one the config names.

THE REGISTRY: `BACKENDS` below is the one place that knows which backends exist. Adding a backend means
adding one file with a `Backend` subclass (name, needs_group, Options; see `gptdist/parallel/base.py`) and
one line here. The config (`backend:` choices, the `parallel.<name>.*` subsections), the launchers and the
error messages all derive from it (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from gptdist.dist import DistContext
from gptdist.errors import ConfigError
from gptdist.parallel.base import Backend
from gptdist.parallel.ddp import DDPBackend
from gptdist.parallel.fsdp import FSDPBackend
from gptdist.parallel.manual import ManualBackend
from gptdist.parallel.none import NoneBackend
from gptdist.parallel.zero import ZeroBackend

if TYPE_CHECKING:  # config.py reads BACKENDS: no import of it at run time
    from gptdist.config import Config

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (
    NoneBackend,
    ManualBackend,
    DDPBackend,
    FSDPBackend,
    ZeroBackend,
)}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def needs_group(name: str) -> bool:
    """Whether backend `name` needs a torch.distributed process group (even on one process)."""
    return backend_class(name).needs_group


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block in place, before any wrapping (torchtitan's order).

    Per block rather than the whole model: every backend then wraps compiled blocks the same way, FSDP2's
    per-block hooks and the manual backend's per-parameter hooks stay outside the compiled graphs, and all
    blocks share one compiled graph (same shapes), so compiling costs one block's time, not n_layer's."""
    for block in model.transformer.h:
        block.compile()


def parallelize(model: nn.Module, cfg: "Config", ctx: DistContext, recorder=None) -> Backend:
    """Apply, in order: torch.compile of each block (if train.compile), then the data-parallel backend
    `cfg.backend` names, with its options `cfg.parallel.<backend>`. `model` is already on ctx.device.
    `recorder` (gptdist.instrument.recorder) sees every collective the backend issues, from construction on."""
    cls = backend_class(cfg.backend)
    if not cls.needs_group and ctx.world_size > 1:
        grouped = ", ".join(n for n, c in BACKENDS.items() if c.needs_group)
        raise ConfigError(f"backend {cls.name!r} runs on one process; use {grouped} under torchrun")
    if cfg.train.compile:
        compile_blocks(model)
    return cls(model, ctx, getattr(cfg.parallel, cls.name), recorder=recorder)
