"""Data-parallel backends. `parallelize(model, cfg, ctx)` returns the one the config names.

Adding a backend means adding one file with a `Backend` subclass and one line in `BACKENDS`.
"""

from __future__ import annotations

import importlib

import torch.nn as nn

from gptdist.config import Config
from gptdist.dist import DistContext
from gptdist.errors import ConfigError
from gptdist.parallel.base import Backend

# name -> "module:Class", imported lazily so `none` never imports torch.distributed wrappers
BACKENDS = {
    "none": "gptdist.parallel.none:NoneBackend",
    "manual": "gptdist.parallel.manual:ManualBackend",
    "ddp": "gptdist.parallel.ddp:DDPBackend",
    "fsdp": "gptdist.parallel.fsdp:FSDPBackend",
    "zero": "gptdist.parallel.zero:ZeroBackend",
}

# Backends that need a process group even on one process.
NEEDS_GROUP = {"manual", "ddp", "fsdp", "zero"}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def zero_options(parallel):
    """The flat `parallel.*` options as the zero backend's Options (the one place they are mapped;
    becomes the `parallel.zero` config section)."""
    from gptdist.parallel.zero import ZeroOptions

    return ZeroOptions(
        stage=parallel.zero_stage, bucket_cap_mb=parallel.bucket_cap_mb, first_bucket_mb=parallel.first_bucket_mb,
        overlap=parallel.overlap, overlap_param_gather=parallel.zero_overlap_param_gather,
        reduce_dtype=parallel.zero_reduce_dtype,
    )


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block in place, before any wrapping (torchtitan's order).

    Per block rather than the whole model: every backend then wraps compiled blocks the same way, FSDP2's
    per-block hooks and the manual backend's per-parameter hooks stay outside the compiled graphs, and all
    blocks share one compiled graph (same shapes), so compiling costs one block's time, not n_layer's."""
    for block in model.transformer.h:
        block.compile()


def parallelize(model: nn.Module, cfg: Config, ctx: DistContext, recorder=None) -> Backend:
    """Apply, in order: torch.compile of each block (if train.compile), then the data-parallel backend
    `cfg.backend` names. `model` is already on ctx.device. `recorder` (gptdist.instrument.recorder) sees every
    collective the backend issues, from construction on."""
    cls = backend_class(cfg.backend)
    if cfg.train.compile:
        compile_blocks(model)
    if cfg.backend == "none":
        if ctx.world_size > 1:
            raise ConfigError("backend 'none' runs on one process; use manual, ddp, fsdp or zero under torchrun")
        return cls(model, ctx, recorder=recorder)
    options = zero_options(cfg.parallel) if cfg.backend == "zero" else cfg.parallel
    return cls(model, ctx, options, recorder=recorder)
