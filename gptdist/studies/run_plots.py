"""Loss curves of finished or running gptdist runs: train and validation loss against optimizer step,
tokens, epochs of the training data and training time, several runs on one figure.

Read from each run folder: metrics.jsonl (the source of truth; a resumed run repeats the steps between its
last checkpoint and the interruption, and the later record of a step wins), config.yaml (the legend) and
the data folder's manifest.json (tokens per epoch). "Training time" is the sum of step times (`step_ms`):
it leaves out start-up, validation and checkpoints, so runs on one machine compare fairly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

from gptdist.errors import DataError
from gptdist.jsonl import read_jsonl

X_AXES = {"step": "optimizer step", "tokens": "tokens", "epochs": "epochs of the training data",
          "time": "training time (s, sum of step times)"}


@dataclass
class RunCurves:
    name: str
    label: str
    train: dict[str, np.ndarray] = field(default_factory=dict)  # step, loss, tokens, time, epochs
    val: dict[str, np.ndarray] = field(default_factory=dict)


def _train_tokens(data_dir: str) -> Optional[int]:
    try:
        from gptdist.data.loader import load_manifest

        manifest = load_manifest(data_dir)
    except (DataError, OSError):
        return None
    return sum(int(e["tokens"]) for e in manifest["shards"] if e.get("split") == "train") or None


def label_from_config(name: str, cfg: dict) -> str:
    model, data, train = cfg.get("model", {}), cfg.get("data", {}), cfg.get("train", {})
    shape = f"L{model.get('n_layer')} d{model.get('n_embd')}" if model.get("n_layer") else model.get("preset", "?")
    return f"{name} ({shape}, lr {train.get('lr', 0):g}, {data.get('batch_size')}x{data.get('seq_len')}, {cfg.get('backend')})"


def load_run(folder: str | Path) -> RunCurves:
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise DataError(f"{folder}: no metrics.jsonl (is it a gptdist run folder?)")
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    train: dict[int, dict] = {}
    val: dict[int, float] = {}
    for _, rec in read_jsonl(metrics):
        if rec.get("kind") == "train" and "loss" in rec:
            train[rec["step"]] = rec  # a resumed run logs some steps twice: the later one is the kept run
        elif rec.get("kind") == "val" and "loss" in rec:
            val[rec["step"]] = rec["loss"]
    steps = np.array(sorted(train), dtype=float)
    recs = [train[s] for s in sorted(train)]
    tokens_per_step = recs[0].get("tokens", 0) / recs[0]["step"] if recs else 0.0
    epoch_tokens = _train_tokens(cfg.get("data", {}).get("dir", ""))
    curves = RunCurves(folder.name, label_from_config(folder.name, cfg))
    curves.train = {"step": steps, "loss": np.array([r["loss"] for r in recs]),
                    "tokens": steps * tokens_per_step,
                    "time": np.cumsum([r.get("step_ms", 0.0) for r in recs]) / 1e3}
    val_steps = np.array(sorted(val), dtype=float)
    curves.val = {"step": val_steps, "loss": np.array([val[s] for s in sorted(val)]), "tokens": val_steps * tokens_per_step,
                  "time": np.interp(val_steps, steps, curves.train["time"]) if len(steps) else val_steps * 0}
    for part in (curves.train, curves.val):
        part["epochs"] = part["tokens"] / epoch_tokens if epoch_tokens else np.full_like(part["tokens"], np.nan)
    return curves


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing); weight 0 = none."""
    if weight <= 0 or len(values) == 0:
        return values
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def plot_runs(runs: Sequence[RunCurves], out: str | Path, x_axes: Sequence[str] = tuple(X_AXES), smoothing: float = 0.0,
              log_x: bool = False, log_y: bool = False, title: str = "") -> list[Path]:
    """One figure: row 1 train loss, row 2 validation loss; one column per x axis. Writes out.png and out.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unknown = [x for x in x_axes if x not in X_AXES]
    if unknown:
        raise DataError(f"unknown x axis {unknown[0]!r}; choose from {', '.join(X_AXES)}")
    fig, axes = plt.subplots(2, len(x_axes), figsize=(4.2 * len(x_axes), 7), squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(runs), 1)))
    for run, color in zip(runs, colors):
        for col, x in enumerate(x_axes):
            ax_t, ax_v = axes[0][col], axes[1][col]
            ax_t.plot(run.train[x], smooth(run.train["loss"], smoothing), color=color, lw=1.2, label=run.label)
            if len(run.val["step"]):
                ax_v.plot(run.val[x], run.val["loss"], "o-", color=color, ms=3, lw=1.2, label=run.label)
    for col, x in enumerate(x_axes):
        for row, what in enumerate(("train loss" + (f" (EMA {smoothing:g})" if smoothing else ""), "validation loss")):
            ax = axes[row][col]
            ax.set_xlabel(X_AXES[x])
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            if log_x:
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * ((len(labels) + 2) // 3), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def main(argv: Optional[list[str]] = None) -> None:
    import argparse

    from gptdist.errors import GptdistError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise GptdistError(message)

    p = Parser(prog="launch/plot_runs.py", description="Train and validation loss of gptdist runs, on one figure.")
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", default="loss_curves", help="output path without suffix; .png and .svg are written")
    p.add_argument("--x", default=",".join(X_AXES), help=f"x axes, comma-separated, from {', '.join(X_AXES)}")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA weight for the train loss in [0, 1); 0 = raw")
    p.add_argument("--logx", action="store_true")
    p.add_argument("--logy", action="store_true")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    if not 0 <= args.smooth < 1:
        raise GptdistError(f"--smooth must be in [0, 1), got {args.smooth}")
    runs = [load_run(r) for r in args.runs]  # every folder checked before drawing anything
    for path in plot_runs(runs, args.out, [x.strip() for x in args.x.split(",") if x.strip()], args.smooth, args.logx,
                          args.logy, args.title):
        print(f"wrote {path}")
