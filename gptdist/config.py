"""Run configuration: dataclass sections, YAML files, dotted command-line overrides, strict checks.

A run is described by one `Config`. It is built in three layers, each overriding the one before:
dataclass defaults -> a YAML file (`--config configs/x.yaml`) -> command-line overrides
(`--train.max_steps=50`, `--train.max_steps 50`, `--backend fsdp`).

Everything is checked before any work starts: an unknown key or a value of the wrong type stops with
a `ConfigError` that names the key and lists the valid choices. Launch scripts turn it into a one-line
error and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from gptdist.errors import ConfigError


@dataclass
class ModelSection:
    """The GPT shape. `preset` fills every field left at None (see `gptdist.model.PRESETS`)."""

    preset: str = "gpt2-tiny"
    n_layer: Optional[int] = None
    n_head: Optional[int] = None
    n_embd: Optional[int] = None
    block_size: Optional[int] = None  # longest sequence the position table holds
    vocab_size: Optional[int] = None  # 50257 for GPT-2; 50304 (a multiple of 64) runs faster on GPUs
    dropout: float = 0.0
    bias: bool = True
    attention: Literal["naive", "sdpa"] = "sdpa"  # naive: explicit softmax(QK^T/sqrt(d))V; sdpa: fused kernel
    activation_checkpointing: bool = False  # recompute each block's activations in backward


@dataclass
class DataSection:
    """Where tokens come from and how a rank's micro-batch is shaped."""

    dir: str = "data/tinyshakespeare"  # folder written by launch/prepare_data.py (manifest.json + shards)
    batch_size: int = 8  # B: sequences per micro-batch per rank
    seq_len: int = 256  # T: tokens per sequence (<= model.block_size)


@dataclass
class TrainSection:
    """The optimisation: batch in tokens, schedule, precision, compile."""

    max_steps: int = 100
    global_batch_tokens: int = 0  # tokens per optimizer step over all ranks; 0 = B*T*world (no accumulation)
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.1  # applied to >=2-D tensors only (matmul weights, embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or grad norm: stop the run, or skip the update
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    fused_adamw: Literal["auto", "on", "off"] = "auto"  # auto: fused when the device supports it
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    tf32: bool = True  # TF32 matmuls on CUDA (no effect on CPU)
    compile: bool = False  # torch.compile each transformer block
    peak_tflops: float = 0.0  # device peak for MFU; 0 = from gptdist.flops' table (None on CPUs)


@dataclass
class EvalSection:
    """Validation and samples during training."""

    val_every: int = 50  # steps between validation runs; 0 = never (also runs at the last step)
    val_batches: int = 10  # micro-batches per validation, split over the ranks
    sample_every: int = 0  # steps between text samples; 0 = only at the end
    sample_tokens: int = 64
    sample_prompt: str = "\n"
    sample_count: int = 1
    sample_top_k: int = 50
    sample_temperature: float = 1.0
    hellaswag_every: int = 0  # steps between HellaSwag runs; 0 = never
    hellaswag_limit: int = 0  # items per HellaSwag run; 0 = all 10,042


@dataclass
class CheckpointSection:
    """When and how state is saved, and where a run resumes from."""

    every: int = 0  # steps between checkpoints; 0 = only at the end
    at_end: bool = True
    keep_last: int = 3  # older checkpoints are deleted once a newer one is complete
    format: Literal["sharded", "full"] = "sharded"  # sharded: DCP folder; full: one rank-0 file
    resume: str = ""  # "" = fresh run; "auto" = latest in the run folder; or a checkpoint path


@dataclass
class LogSection:
    """Run folder, console and metric sinks."""

    out_dir: str = "runs"
    run_name: str = ""  # "" = a timestamped name
    overwrite: bool = False  # an existing run folder is refused unless overwrite or resume
    console_every: int = 1
    wandb: bool = False  # offline (no network needed) unless WANDB_API_KEY is set
    wandb_project: str = "gptdist"
    tensorboard: bool = False


@dataclass
class ParallelSection:
    """Options of the data-parallel backends (`backend` picks one)."""

    # manual backend
    bucket_cap_mb: float = 25.0  # gradient bucket size cap
    first_bucket_mb: float = 1.0  # the first bucket (last layers' grads) is small so comm starts early
    overlap: bool = True  # launch each bucket's all-reduce during backward; False = after backward
    # ddp backend
    ddp_bucket_cap_mb: float = 25.0
    gradient_as_bucket_view: bool = True
    # fsdp backend
    reshard_after_forward: bool = True  # True = ZeRO-3 (free gathered params after forward); False = ZeRO-2
    param_dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # zero backend (also reads bucket_cap_mb, first_bucket_mb, overlap)
    zero_stage: int = 2  # 1: shard optimizer state; 2: also shard gradients
    zero_overlap_param_gather: bool = True  # the parameter all-gather overlaps the next forward
    zero_reduce_dtype: Literal["fp32", "bf16"] = "fp32"  # gradient communication dtype; bf16 needs NCCL


@dataclass
class DistSection:
    """Process group settings."""

    timeout_s: float = 600.0  # a collective that waits longer fails instead of hanging


@dataclass
class InstrumentSection:
    """Per-step compute/communication breakdown and collective records (see docs/instrumentation.md)."""

    enabled: bool = True  # phase timers, breakdown keys in metrics.jsonl, end-of-run summary
    collectives: bool = True  # one record per collective (ranks/rank{r}/collectives.jsonl); needs enabled
    summary_skip_steps: int = 1  # leave each rank's first steps (warm-up) out of the summary


@dataclass
class ProfileSection:
    """torch.profiler: Chrome traces per rank and merged, for Perfetto (see traces/README.md)."""

    enabled: bool = False
    wait: int = 1  # steps before the profiler starts
    warmup: int = 1  # steps profiled and thrown away (the profiler's own start-up)
    active: int = 3  # steps recorded into the trace
    dir: str = "traces"  # traces/<run name>/rank{r}.json and merged.json


@dataclass
class Config:
    backend: Literal["none", "manual", "ddp", "fsdp", "zero"] = "none"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    dist: DistSection = field(default_factory=DistSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    instrument: InstrumentSection = field(default_factory=InstrumentSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Type checking of single values


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class CliText(str):
    """A value as typed on the command line, with `parsed`, its reading as a YAML scalar. A string field
    takes the text as typed, so `--log.run_name=off` is the name "off", not YAML 1.1's false; any other
    field takes the parsed value (`true`, `3`, `1e-4`, `null`)."""

    parsed: Any

    def __new__(cls, raw: str) -> "CliText":
        text = super().__new__(cls, raw)
        try:
            text.parsed = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            text.parsed = raw
        return text


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`. No silent conversions
    beyond int -> float."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, CliText):
        wants_text = tp is str or (origin is typing.Union and str in args and value.parsed is not None) or (
            origin is Literal and str(value) in args)
        if wants_text:
            return str(value)
        try:
            return _coerce(key, value.parsed, tp)
        except ConfigError as e:  # name the value as the user typed it ('off', not False)
            raise ConfigError(str(e).replace(f"got {value.parsed!r}", f"got {str(value)!r}")) from None
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `6e-4` (no dot) as a string: YAML 1.1's float rule
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. --log.run_name=123
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp}")  # pragma: no cover - a bug in this file


def _unknown_key(key: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; valid keys here: {', '.join(choices)}")


def _set(obj: Any, dotted: str, value: Any) -> None:
    """Set `a.b` on a (nested) dataclass, checking the key and the type."""
    parts = dotted.split(".")
    target = obj
    prefix = []
    for part in parts[:-1]:
        hints = typing.get_type_hints(type(target))
        if part not in hints or not _is_section(hints[part]):
            sections = [k for k, t in hints.items() if _is_section(t)]
            raise _unknown_key(".".join(prefix + [part]), sections)
        target = getattr(target, part)
        prefix.append(part)
    name = parts[-1]
    hints = typing.get_type_hints(type(target))
    if name not in hints:
        raise _unknown_key(dotted, list(hints))
    if _is_section(hints[name]):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a section (mapping), got {value!r}")
        for k, v in value.items():
            _set(obj, f"{dotted}.{k}", v)
        return
    setattr(target, name, _coerce(dotted, value, hints[name]))


# ---------------------------------------------------------------------------------------------
# Building a config


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_overrides(argv: list[str]) -> tuple[Optional[str], list[tuple[str, Any]]]:
    """Split `--config FILE` from `--key=value` / `--key value` overrides.

    Values are read as YAML scalars (so `true`, `3`, `1e-4`, `null` get their types), except for string
    fields, which take the text as typed (`CliText`); `--flag` with no value means true.
    """
    config_path = None
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, raw = body, argv[i + 1]
            i += 2
        else:
            key, raw = body, "true"
            i += 1
        key = key.replace("-", "_")
        if key == "config":
            config_path = raw
            continue
        overrides.append((key, CliText(raw)))
    return config_path, overrides


def build_config(
    yaml_path: Optional[str | Path] = None,
    overrides: Optional[list[tuple[str, Any]] | dict[str, Any]] = None,
) -> Config:
    """Defaults <- YAML file <- overrides, every key and type checked."""
    cfg = Config()
    if yaml_path is not None:
        for key, value in load_yaml(yaml_path).items():
            _set(cfg, key, value)
    if isinstance(overrides, dict):
        overrides = list(overrides.items())
    for key, value in overrides or []:
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_argv(argv: list[str]) -> Config:
    path, overrides = parse_overrides(argv)
    return build_config(path, overrides)


def validate(cfg: Config) -> None:
    """Checks that need more than one field, or the world size (see also `batch_plan`)."""
    from gptdist.model import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset: {cfg.model.preset!r} is not one of {', '.join(PRESETS)}")
    m = resolve_model(cfg)
    if m.n_embd % m.n_head != 0:
        raise ConfigError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if cfg.data.seq_len > m.block_size:
        raise ConfigError(f"data.seq_len ({cfg.data.seq_len}) exceeds model.block_size ({m.block_size})")
    for key in ("data.batch_size", "data.seq_len", "train.max_steps"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key} must be >= 1")
    if cfg.train.global_batch_tokens < 0:
        raise ConfigError("train.global_batch_tokens must be >= 0 (0 = one micro-batch per rank)")
    if cfg.train.warmup_steps < 0 or not 0.0 <= cfg.train.min_lr_ratio <= 1.0:
        raise ConfigError("train.warmup_steps must be >= 0 and train.min_lr_ratio in [0, 1]")
    if cfg.profile.wait < 0 or cfg.profile.warmup < 0 or cfg.profile.active < 1:
        raise ConfigError("profile.wait and profile.warmup must be >= 0 and profile.active >= 1")
    if cfg.instrument.summary_skip_steps < 0:
        raise ConfigError("instrument.summary_skip_steps must be >= 0")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError("checkpoint.keep_last must be >= 1")
    # Options that only one backend reads: refuse them elsewhere rather than silently ignoring them.
    defaults = ParallelSection()
    owners = {
        ("manual", "zero"): ("bucket_cap_mb", "first_bucket_mb", "overlap"),
        ("ddp",): ("ddp_bucket_cap_mb", "gradient_as_bucket_view"),
        ("fsdp",): ("reshard_after_forward", "param_dtype", "reduce_dtype"),
        ("zero",): ("zero_stage", "zero_overlap_param_gather", "zero_reduce_dtype"),
    }
    for backends, names in owners.items():
        if cfg.backend in backends:
            continue
        for name in names:
            if getattr(cfg.parallel, name) != getattr(defaults, name):
                raise ConfigError(f"parallel.{name} is a {' and '.join(backends)} option but backend is {cfg.backend!r}")
    if cfg.backend == "zero":
        import torch

        from gptdist.parallel import zero_options

        zero_options(cfg.parallel)  # raises on an unknown stage
        if cfg.parallel.zero_reduce_dtype == "bf16" and (cfg.train.device == "cpu" or not torch.cuda.is_available()):
            raise ConfigError("parallel.zero_reduce_dtype=bf16 needs NCCL (CUDA): gloo on the CPU cannot reduce bf16")


def resolve_model(cfg: Config):
    """The `GPTConfig` the run builds: the preset, with every non-None field of `model` on top."""
    from gptdist.model import GPTConfig, PRESETS

    base = dataclasses.asdict(PRESETS[cfg.model.preset])
    for f in dataclasses.fields(ModelSection):
        value = getattr(cfg.model, f.name)
        if f.name != "preset" and value is not None:
            base[f.name] = value
    return GPTConfig(**base)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's tokens are split: world x grad_accum x (B, T)."""

    micro_batch: int
    seq_len: int
    world_size: int
    grad_accum: int

    @property
    def tokens_per_micro_step(self) -> int:  # over all ranks
        return self.micro_batch * self.seq_len * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_micro_step * self.grad_accum


def batch_plan(cfg: Config, world_size: int) -> BatchPlan:
    """Gradient accumulation steps so that one optimizer step sees `train.global_batch_tokens`."""
    per_micro = cfg.data.batch_size * cfg.data.seq_len * world_size
    total = cfg.train.global_batch_tokens or per_micro
    if total % per_micro != 0:
        raise ConfigError(
            f"train.global_batch_tokens ({total}) is not a multiple of batch_size*seq_len*world_size "
            f"({cfg.data.batch_size}*{cfg.data.seq_len}*{world_size} = {per_micro})"
        )
    return BatchPlan(cfg.data.batch_size, cfg.data.seq_len, world_size, total // per_micro)
