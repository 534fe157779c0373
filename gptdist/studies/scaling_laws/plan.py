"""The sweep plan: compute budgets C and model shapes -> one training run per (C, shape).

FLOPs (gptdist/flops.py, the MFU formula): per trained token F = 6·N + 12·L·d·T (L layers, width d,
sequence length T; 12·L·d·T is attention's QK^T and AV, which 6·N does not see). A run at budget C trains
D = C / F tokens, rounded to whole optimizer steps, so its real compute is steps · tokens_per_step · F.

N counts the tied token embedding / output head (once) and not the position table. The head is a real
matmul on every token, and for the small models here it is a large share of the compute, so leaving it out
would make C = F·D wrong; Chinchilla also counts embeddings (Kaplan et al. did not, and Pearce & Song 2024
trace much of Kaplan's 0.73 exponent to that choice). The position table is a lookup, no FLOPs.

Every mistake in the spec is a SweepError (one line) raised here, before any run starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from gptdist import flops
from gptdist.errors import GptdistError
from gptdist.model import GPTConfig


class SweepError(GptdistError):
    """A sweep spec that cannot be run (budgets, shapes, data)."""


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    lr: Optional[float] = None  # this size's peak LR (from an LR probe); None: the spec's lr


@dataclass
class SweepSpec:
    """A scaling-law sweep (YAML; see configs/scaling_laws/*.yaml)."""

    name: str
    budgets: list[float]  # compute budgets C in FLOPs, strictly increasing
    shapes: list[Shape]
    data_dir: str
    vocab_size: int  # the model's vocabulary; must cover the data's ids
    seq_len: int = 128
    batch_size: int = 8  # sequences per micro-batch per rank
    world_size: int = 1  # >1: each run under torchrun
    backend: str = "none"
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine to lr/10 at the run's own last step (Chinchilla)
    warmup_fraction: float = 0.05  # of each run's steps
    min_steps: int = 20  # a (C, shape) with fewer steps is left out; the smallest shape must reach it
    val_batches: int = 40
    allow_repeat: bool = False  # allow a run to see the training data more than once
    overrides: list[str] = field(default_factory=list)  # extra dotted config overrides for every run

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.world_size


@dataclass(frozen=True)
class PlannedRun:
    name: str
    budget: float  # the nominal C
    shape: Shape
    params: int  # N (see the module docstring)
    flops_per_token: int
    steps: int
    tokens: int  # D = steps * tokens_per_step
    flops: float  # the real C = D * flops_per_token

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = dataclasses.asdict(self.shape)
        return d


def model_config(spec: SweepSpec, shape: Shape) -> GPTConfig:
    return GPTConfig(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd, block_size=spec.seq_len,
                     vocab_size=spec.vocab_size)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SweepError(message)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    _require(path.is_file(), f"sweep spec {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return spec_from_dict(raw, str(path))


def spec_from_dict(raw: Any, where: str = "sweep spec") -> SweepSpec:
    _require(isinstance(raw, dict), f"{where}: expected a mapping")
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(raw) - known)
    _require(not unknown, f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for key in ("name", "budgets", "shapes", "data_dir", "vocab_size"):
        _require(key in raw, f"{where}: '{key}' is required")
    budgets = raw["budgets"]
    _require(isinstance(budgets, list) and budgets, f"{where}: budgets must be a non-empty list of FLOPs")
    try:
        budgets = [float(b) for b in budgets]
    except (TypeError, ValueError):
        raise SweepError(f"{where}: budgets must be numbers (FLOPs), got {raw['budgets']}") from None
    _require(all(b > 0 for b in budgets), f"{where}: budgets must be positive, got {budgets}")
    _require(all(a < b for a, b in zip(budgets, budgets[1:])),
             f"{where}: budgets must be strictly increasing, got {', '.join(f'{b:.3g}' for b in budgets)}")
    shapes_raw = raw["shapes"]
    _require(isinstance(shapes_raw, list) and shapes_raw, f"{where}: shapes must be a non-empty list")
    shapes = []
    for i, s in enumerate(shapes_raw):
        _require(isinstance(s, dict) and {"n_layer", "n_embd", "n_head"} <= set(s),
                 f"{where}: shape {i} needs n_layer, n_embd and n_head")
        unknown_keys = sorted(set(s) - {"name", "n_layer", "n_embd", "n_head", "lr"})
        _require(not unknown_keys, f"{where}: shape {i}: unknown key(s) {', '.join(unknown_keys)}")
        shape = Shape(str(s.get("name", f"L{s['n_layer']}-d{s['n_embd']}")), int(s["n_layer"]), int(s["n_embd"]),
                      int(s["n_head"]), None if s.get("lr") is None else float(s["lr"]))
        _require(shape.n_layer >= 1 and shape.n_head >= 1 and shape.n_embd >= 1, f"{where}: shape {shape.name} must be positive")
        _require(shape.lr is None or shape.lr > 0, f"{where}: shape {shape.name}: lr must be positive, got {shape.lr}")
        _require(shape.n_embd % shape.n_head == 0,
                 f"{where}: shape {shape.name}: n_embd {shape.n_embd} does not divide into {shape.n_head} heads")
        shapes.append(shape)
    names = [s.name for s in shapes]
    _require(len(set(names)) == len(names), f"{where}: shape names repeat: {names}")
    spec = SweepSpec(**{**raw, "budgets": budgets, "shapes": shapes})
    _require(spec.min_steps >= 1 and spec.seq_len >= 1 and spec.batch_size >= 1 and spec.world_size >= 1,
             f"{where}: min_steps, seq_len, batch_size and world_size must be >= 1")
    return spec


def run_name(budget: float, shape: Shape) -> str:
    return f"C{budget:.2e}-{shape.name}".replace("+", "")


def plan_runs(spec: SweepSpec, train_tokens: Optional[int] = None) -> tuple[list[PlannedRun], list[str]]:
    """(runs, notes). Runs in order of budget, then size. `notes` names each (C, shape) left out for having
    fewer than min_steps steps. `train_tokens`, if given, is checked against the largest D."""
    runs, notes = [], []
    sized = sorted(spec.shapes, key=lambda s: flops.flops_per_token(model_config(spec, s), spec.seq_len))
    for budget in spec.budgets:
        for i, shape in enumerate(sized):
            cfg = model_config(spec, shape)
            per_token = flops.flops_per_token(cfg, spec.seq_len)
            steps = math.floor(budget / (per_token * spec.tokens_per_step))
            if steps < spec.min_steps:
                _require(i > 0, f"budget {budget:.3g} FLOPs is too small for the smallest model {shape.name}: "
                                f"{steps} steps of {spec.tokens_per_step} tokens at {per_token:,} FLOPs/token, "
                                f"need >= {spec.min_steps} (min_steps)")
                notes.append(f"{run_name(budget, shape)} left out: {steps} steps < min_steps {spec.min_steps}")
                continue
            tokens = steps * spec.tokens_per_step
            runs.append(PlannedRun(run_name(budget, shape), budget, shape, flops.param_count(cfg, non_embedding=True),
                                   per_token, steps, tokens, float(tokens * per_token)))
    if train_tokens is not None and runs:
        largest = max(runs, key=lambda r: r.tokens)
        _require(spec.allow_repeat or largest.tokens <= train_tokens,
                 f"run {largest.name} needs {largest.tokens:,} training tokens but the data set has {train_tokens:,}; "
                 "use more data, smaller budgets, or set allow_repeat: true to train on repeated epochs")
    return runs, notes


def run_lr(spec: SweepSpec, run: PlannedRun) -> float:
    """The run's peak LR: its shape's own (an LR probe per size), else the spec's one LR."""
    return run.shape.lr if run.shape.lr is not None else spec.lr


def train_args(spec: SweepSpec, run: PlannedRun, out_dir: str | Path) -> list[str]:
    """The launch/train.py arguments of one run: an ordinary gptdist run, its LR cosine ending at its own last step."""
    warmup = max(1, round(spec.warmup_fraction * run.steps))
    return [
        f"--backend={spec.backend}",
        f"--model.n_layer={run.shape.n_layer}", f"--model.n_head={run.shape.n_head}", f"--model.n_embd={run.shape.n_embd}",
        f"--model.block_size={spec.seq_len}", f"--model.vocab_size={spec.vocab_size}",
        f"--data.dir={spec.data_dir}", f"--data.batch_size={spec.batch_size}", f"--data.seq_len={spec.seq_len}",
        f"--train.max_steps={run.steps}", f"--train.lr={run_lr(spec, run)}", f"--train.min_lr_ratio={spec.min_lr_ratio}",
        f"--train.warmup_steps={warmup}",
        f"--eval.val_every={run.steps}", f"--eval.val_batches={spec.val_batches}",
        f"--log.out_dir={Path(out_dir) / 'runs'}", f"--log.run_name={run.name}", "--log.console_every=50",
        "--checkpoint.format=full", f"--checkpoint.every={max(50, run.steps // 4)}", "--checkpoint.keep_last=1",
        "--checkpoint.resume=auto",
        *spec.overrides,
    ]
