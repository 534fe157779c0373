"""The run folder: one per training run, created by rank 0, agreed on by every rank.

    runs/<run_name>/
        config.yaml          the resolved config (every field, after overrides)
        metrics.jsonl        one JSON object per step (and per evaluation)
        samples.txt          text samples
        checkpoints/         see gptdist/checkpoint.py
        logs/rank{r}.log     every rank's own log (rank 0 also prints to the console)
        tensorboard/, wandb/ when those sinks are on
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch.distributed as dist
import yaml

from gptdist.config import Config
from gptdist.dist import DistContext
from gptdist.errors import ConfigError


def _broadcast_from_main(value, ctx: DistContext):
    """Rank 0's Python object, on every rank."""
    if not ctx.has_group:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _decide(cfg: Config) -> tuple[str, str]:
    """On rank 0: (run folder path, "") or ("", error message). Nothing is created or deleted here."""
    name = cfg.log.run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.log.out_dir) / name
    resuming = bool(cfg.checkpoint.resume)
    if run_dir.exists() and any(run_dir.iterdir()) and not (resuming or cfg.log.overwrite):
        return "", (
            f"run folder {run_dir} already exists; pass --checkpoint.resume=auto to continue it, "
            "--log.overwrite=true to replace it, or another --log.run_name"
        )
    parent = run_dir.parent
    probe = parent if parent.exists() else next((p for p in parent.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        return "", f"output folder {probe} is not writable"
    return str(run_dir), ""


def prepare_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """Decide the run folder on rank 0, create it, and return the same path on every rank.
    Raises the same ConfigError on every rank if it can't be used (so no rank hangs waiting)."""
    path, error = _broadcast_from_main(_decide(cfg) if ctx.is_main else None, ctx)
    if error:
        raise ConfigError(error)
    run_dir = Path(path)
    if ctx.is_main:
        if cfg.log.overwrite and not cfg.checkpoint.resume and run_dir.exists():
            shutil.rmtree(run_dir)
        try:
            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        except OSError as e:
            error = f"cannot write the run folder {run_dir}: {e.strerror or e}"
    error = _broadcast_from_main(error if ctx.is_main else None, ctx)
    if error:
        raise ConfigError(error)
    return run_dir


def setup_logging(run_dir: Path, ctx: DistContext) -> logging.Logger:
    """Every rank logs to logs/rank{r}.log; rank 0 also to stdout (one readable line per step)."""
    logger = logging.getLogger("gptdist")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(run_dir / "logs" / f"rank{ctx.rank}.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s rank" + str(ctx.rank) + " %(message)s"))
    logger.addHandler(file_handler)
    if ctx.is_main:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
    return logger


def log_to_files_only(logger: logging.Logger, message: str) -> None:
    """An ERROR line in the rank's log file but not on the console (where main_guard prints the error once)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
