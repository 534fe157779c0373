"""Checkpoints: sharded (DCP) or full, written atomically, resumable at any world size and backend.

Layout of one checkpoint (a folder):

    <run>/checkpoints/step_000100/
        meta.json        step, world size, backend, format, model shape, the run's config
        state/           sharded format: a torch.distributed.checkpoint (DCP) folder {"model", "optim"}
        state.pt         full format: one file {"model", "optim"} written by rank 0
        rank{r}.pt       per-rank trainer state: data-loader position and RNG states
        COMPLETE         written last; a folder without it is not a checkpoint
    <run>/checkpoints/latest   text file naming the newest complete checkpoint

Atomicity: everything is written into `step_000100.tmp/`, then rank 0 writes COMPLETE and renames the
folder (an atomic rename on POSIX), then replaces `latest` (write + fsync + os.replace). A process killed at
any point leaves the previous checkpoint and `latest` untouched; a stale `.tmp` folder is removed by the
next save.

Model and optimizer state go through `torch.distributed.checkpoint.state_dict`, which gives the same
fully-qualified names for a plain module, DDP and FSDP2. So a checkpoint saved by fsdp on 4 ranks loads into
manual on 2, or into a plain GPT on one process, and DCP reshards as needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from gptdist.dist import DistContext, barrier
from gptdist.errors import CheckpointError
from gptdist.model import GPT, GPTConfig

COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
# DCP warns on every single-process save/load that it "assumes a single process", even with no_dist=True.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
# GPTConfig fields that change parameter shapes; the others (attention path, dropout, ...) may differ on resume.
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# RNG state (per rank)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Finding checkpoints


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "meta.json").is_file()


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_") and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The checkpoint `latest` names (if complete), else the newest complete one, else None."""
    pointer = ckpt_dir / LATEST_POINTER
    if pointer.is_file():
        candidate = ckpt_dir / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, a run's `checkpoints/` folder, or a run folder -> one complete checkpoint."""
    p = Path(path)
    if is_complete(p):
        return p
    for ckpt_dir in (p, p / "checkpoints"):
        found = latest_checkpoint(ckpt_dir)
        if found is not None:
            return found
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    raise CheckpointError(f"no complete checkpoint at {p} (missing {COMPLETE_MARKER} or meta.json)")


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable checkpoint metadata {path / 'meta.json'}: {e}") from None


def check_model_compatible(meta: dict[str, Any], model_config: GPTConfig, where: Path) -> None:
    saved = meta.get("model", {})
    diffs = [
        f"{k}={saved.get(k)!r} (checkpoint) vs {getattr(model_config, k)!r} (config)"
        for k in SHAPE_FIELDS
        if saved.get(k) != getattr(model_config, k)
    ]
    if diffs:
        raise CheckpointError(f"checkpoint {where} is from another model shape: " + "; ".join(diffs))


# ---------------------------------------------------------------------------------------------
# Save


def save(
    ckpt_dir: Path,
    step: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank_state: dict[str, Any],
    meta: dict[str, Any],
    ctx: DistContext,
    fmt: str = "sharded",
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint of `step` atomically; every rank must call this. Returns the final folder."""
    final = ckpt_dir / checkpoint_name(step)
    tmp = ckpt_dir / (final.name + ".tmp")
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was killed
        tmp.mkdir()
    barrier(ctx)

    full = fmt == "full"
    # Full format gathers everything to rank 0 (on the CPU); sharded keeps each rank's shard.
    options = StateDictOptions(full_state_dict=full, cpu_offload=full)
    model_sd, optim_sd = get_state_dict(module, optimizer, options=options)
    if full:
        if ctx.is_main:
            torch.save({"model": model_sd, "optim": optim_sd}, tmp / "state.pt")
    else:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "state"), no_dist=not ctx.has_group)
    torch.save(rank_state, tmp / f"rank{ctx.rank}.pt")
    barrier(ctx)

    if ctx.is_main:
        meta = dict(meta, step=step, world_size=ctx.world_size, format=fmt, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=2))
        _write_text_atomic(tmp / COMPLETE_MARKER, "ok\n")
        if final.exists():  # re-saving the same step (e.g. end of a resumed run that saved it already)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        _write_text_atomic(ckpt_dir / LATEST_POINTER, final.name + "\n")
        for old in list_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return final


# ---------------------------------------------------------------------------------------------
# Load


@torch.no_grad()
def materialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state tensors (Adam's moments) so DCP has something to load into.

    torch's own initialiser (`_init_optim_state`, run inside get_state_dict) does nothing when parameters
    already have `.grad` — as the manual backend's bucket views always do — and DCP then silently loads
    no optimizer state at all. So: one step with zero gradients at lr 0 (no parameter changes: the update
    and the decoupled weight decay are both scaled by lr), then the original gradients are put back.
    """
    if optimizer.state:
        return
    saved_grads, saved_lrs = [], []
    for group in optimizer.param_groups:
        saved_lrs.append(group["lr"])
        group["lr"] = 0.0
        for p in group["params"]:
            saved_grads.append((p, p.grad))
            p.grad = torch.zeros_like(p)
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, saved_lrs):
        group["lr"] = lr
    for p, grad in saved_grads:
        p.grad = grad


def load(
    path: Path,
    module: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    model_config: GPTConfig,
    ctx: DistContext,
) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """Load model (+ optimizer) state into a (wrapped) module on every rank.

    Returns (meta, this rank's trainer state or None when the world size changed: the caller then
    decides how to place the data loader)."""
    meta = read_meta(path)
    check_model_compatible(meta, model_config, path)
    if meta["format"] == "full":
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False, mmap=True)
        options = StateDictOptions(full_state_dict=True)
        if optimizer is not None:
            materialize_optimizer_state(optimizer)
        if optimizer is None:
            set_model_state_dict(module, state["model"], options=options)
        else:
            set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options)
    else:
        if optimizer is None:
            model_sd = get_model_state_dict(module)
            dcp.load({"model": model_sd}, checkpoint_id=str(path / "state"), no_dist=not ctx.has_group)
            set_model_state_dict(module, model_sd)
        else:
            # Templates with this run's sharding; DCP fills them, resharding from the saved layout.
            materialize_optimizer_state(optimizer)
            model_sd, optim_sd = get_state_dict(module, optimizer)
            dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "state"), no_dist=not ctx.has_group)
            set_state_dict(module, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    rank_file = path / f"rank{ctx.rank}.pt"
    rank_state = None
    if meta["world_size"] == ctx.world_size and rank_file.is_file():
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
    return meta, rank_state


def load_model(path: str | Path, device: str | torch.device = "cpu", **config_overrides: Any) -> GPT:
    """A plain single-device GPT from any checkpoint (any backend, any world size), for evaluation
    and sampling. config_overrides may change non-shape fields such as `attention`."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    model_config = GPTConfig(**dict(meta["model"], **config_overrides))
    model = GPT(model_config)
    if meta["format"] == "full":
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False, mmap=True)
        model.load_state_dict(state["model"])
    else:
        model_sd = get_model_state_dict(model)
        # A plain module on one process: DCP reads the shards of every saved rank and reassembles them.
        dcp.load({"model": model_sd}, checkpoint_id=str(ckpt / "state"), no_dist=not (dist.is_available() and dist.is_initialized()))
        set_model_state_dict(model, model_sd)
    return model.to(device)


def model_meta(config: GPTConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
