"""Where metrics go: JSONL (always), TensorBoard and W&B (by config). Rank 0 writes them.

Every sink gets the same flat dict of namespaced keys (`train/loss`, `val/loss`, `perf/tokens_per_s`,
...) so a number has one name everywhere. A key that already has a namespace (`comm/exposed_ms`,
`time/forward_ms`, `mem/peak_mb`, the step breakdown of gptdist/instrument/instrumentation.py) keeps
it as is: it is `comm/exposed_ms` in metrics.jsonl, TensorBoard and W&B alike. `metrics.jsonl` is the source of truth: one JSON object per line,
with `step` and `kind` ("train", "val", "eval", ...) and the keys without the namespace for easy reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


def metric_name(kind: str, key: str) -> str:
    """`train` + `loss` -> `train/loss`; a key with its own namespace (`comm/exposed_ms`) stays as is."""
    return key if "/" in key else f"{kind}/{key}"


class JsonlSink:
    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a", buffering=1)  # line-buffered: a killed run keeps every full line

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, **values}
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(metric_name(kind, key), value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Offline unless WANDB_API_KEY is set (or WANDB_MODE says otherwise): never waits on the network."""

    def __init__(self, run_dir: Path, project: str, run_name: str, config: dict[str, Any]):
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project,
            name=run_name,
            dir=str(run_dir),
            config=config,
            settings=wandb.Settings(init_timeout=30, silent=True),
        )

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.run.log({metric_name(kind, k): v for k, v in values.items() if not isinstance(v, str)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """Fans one record out to every enabled sink. On ranks other than 0 it writes nothing."""

    def __init__(
        self,
        run_dir: Optional[Path],
        enabled: bool,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "gptdist",
        run_name: str = "",
        config: Optional[dict[str, Any]] = None,
    ):
        self.sinks: list[Any] = []
        if not enabled or run_dir is None:
            return
        self.sinks.append(JsonlSink(run_dir / "metrics.jsonl"))
        if tensorboard:
            self.sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        if wandb:
            self.sinks.append(WandbSink(run_dir, wandb_project, run_name, config or {}))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(kind, step, values)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
