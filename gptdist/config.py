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
    """The GPT shape. `preset` fills every field left at None (see `gptdist.model.PRESETS`).

    Fields:
        preset: named shape that fills every field left at None (gptdist.model.PRESETS)
        n_layer: transformer blocks (null = from the preset)
        n_head: attention heads per block; divides n_embd (null = from the preset)
        n_embd: width of the residual stream (null = from the preset)
        block_size: longest sequence the position table holds
        vocab_size: 50257 for GPT-2; 50304 (a multiple of 64) runs faster on GPUs
        dropout: dropout probability on attention, residual and embeddings
        bias: biases in the linear layers and LayerNorms, as GPT-2
        attention: naive: explicit softmax(QK^T/sqrt(d))V; sdpa: fused kernel
        activation_checkpointing: recompute each block's activations in backward
    """

    preset: str = "gpt2-tiny"
    n_layer: Optional[int] = None
    n_head: Optional[int] = None
    n_embd: Optional[int] = None
    block_size: Optional[int] = None
    vocab_size: Optional[int] = None
    dropout: float = 0.0
    bias: bool = True
    attention: Literal["naive", "sdpa"] = "sdpa"
    activation_checkpointing: bool = False


@dataclass
class DataSection:
    """Where tokens come from and how a rank's micro-batch is shaped.

    Fields:
        dir: folder written by launch/prepare_data.py (manifest.json + shards)
        batch_size: B: sequences per micro-batch per rank
        seq_len: T: tokens per sequence (<= model.block_size)
    """

    dir: str = "data/tinyshakespeare"
    batch_size: int = 8
    seq_len: int = 256


@dataclass
class TrainSection:
    """The optimisation: batch in tokens, schedule, precision, compile.

    Fields:
        max_steps: optimizer steps of the run
        global_batch_tokens: tokens per optimizer step over all ranks; 0 = B*T*world (no accumulation)
        lr: peak learning rate, reached after warmup
        min_lr_ratio: cosine decays to lr * min_lr_ratio
        warmup_steps: linear warmup from lr/warmup_steps to lr
        weight_decay: applied to >=2-D tensors only (matmul weights, embeddings)
        beta1: AdamW beta1
        beta2: AdamW beta2
        eps: AdamW epsilon
        on_nonfinite: a NaN/inf loss or grad norm: stop the run, or skip the update
        grad_clip: max global grad norm; 0 disables clipping (the norm is still logged)
        fused_adamw: auto: fused when the device supports it
        seed: seed of the weights, the data order and dropout
        device: auto: cuda when available (one GPU per rank), else cpu
        dtype: auto: bf16 autocast on CUDA, fp32 on CPU
        tf32: TF32 matmuls on CUDA (no effect on CPU)
        compile: torch.compile each transformer block
        peak_tflops: device peak for MFU; 0 = from gptdist.flops' table (None on CPUs)
    """

    max_steps: int = 100
    global_batch_tokens: int = 0
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    on_nonfinite: Literal["stop", "skip"] = "stop"
    grad_clip: float = 1.0
    fused_adamw: Literal["auto", "on", "off"] = "auto"
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    tf32: bool = True
    compile: bool = False
    peak_tflops: float = 0.0


@dataclass
class EvalSection:
    """Validation and samples during training.

    Fields:
        val_every: steps between validation runs; 0 = never (also runs at the last step)
        val_batches: micro-batches per validation, split over the ranks
        sample_every: steps between text samples; 0 = only at the end
        sample_tokens: tokens generated per sample
        sample_prompt: text each sample starts from
        sample_count: samples written each time
        sample_top_k: sample among the k most likely tokens
        sample_temperature: logits are divided by this before sampling
        hellaswag_every: steps between HellaSwag runs; 0 = never
        hellaswag_limit: items per HellaSwag run; 0 = all 10,042
    """

    val_every: int = 50
    val_batches: int = 10
    sample_every: int = 0
    sample_tokens: int = 64
    sample_prompt: str = "\n"
    sample_count: int = 1
    sample_top_k: int = 50
    sample_temperature: float = 1.0
    hellaswag_every: int = 0
    hellaswag_limit: int = 0


@dataclass
class CheckpointSection:
    """When and how state is saved, and where a run resumes from.

    Fields:
        every: steps between checkpoints; 0 = only at the end
        at_end: save a checkpoint after the last step
        keep_last: older checkpoints are deleted once a newer one is complete
        format: sharded: DCP folder; full: one rank-0 file
        resume: "" = fresh run; "auto" = latest in the run folder; or a checkpoint path
    """

    every: int = 0
    at_end: bool = True
    keep_last: int = 3
    format: Literal["sharded", "full"] = "sharded"
    resume: str = ""


@dataclass
class LogSection:
    """Run folder, console and metric sinks.

    Fields:
        out_dir: run folders go under this folder: out_dir/run_name
        run_name: "" = a timestamped name
        overwrite: delete an existing run folder of the same name first; off = refuse it unless resuming
        console_every: steps between console lines (metrics.jsonl gets every step)
        wandb: also log to Weights & Biases; offline (no network needed) unless WANDB_API_KEY is set
        wandb_project: Weights & Biases project name
        tensorboard: also write TensorBoard event files in the run folder
    """

    out_dir: str = "runs"
    run_name: str = ""
    overwrite: bool = False
    console_every: int = 1
    wandb: bool = False
    wandb_project: str = "gptdist"
    tensorboard: bool = False


def _parallel_section() -> type:
    """`parallel`: one subsection `parallel.<name>` per registered backend, the backend's own `Options`."""
    from gptdist.parallel import BACKENDS

    fields = [(name, cls.Options, field(default_factory=cls.Options)) for name, cls in BACKENDS.items()]
    section = dataclasses.make_dataclass("ParallelSection", fields)
    section.__doc__ = "Options of the data-parallel backends, one subsection each (`backend` picks one)."
    return section


ParallelSection = _parallel_section()
BACKEND_NAMES = tuple(f.name for f in dataclasses.fields(ParallelSection))
# Keys of the flat `parallel` section before each backend had its own subsection: old -> new.
MOVED_PARALLEL_KEYS = {
    "bucket_cap_mb": "parallel.manual.bucket_cap_mb",
    "first_bucket_mb": "parallel.manual.first_bucket_mb",
    "overlap": "parallel.manual.overlap",
    "ddp_bucket_cap_mb": "parallel.ddp.bucket_cap_mb",
    "gradient_as_bucket_view": "parallel.ddp.gradient_as_bucket_view",
    "reshard_after_forward": "parallel.fsdp.reshard_after_forward",
    "param_dtype": "parallel.fsdp.param_dtype",
    "reduce_dtype": "parallel.fsdp.reduce_dtype",
}


@dataclass
class DistSection:
    """Process group settings.

    Fields:
        timeout_s: a collective that waits longer fails instead of hanging
    """

    timeout_s: float = 600.0


@dataclass
class InstrumentSection:
    """Per-step compute/communication breakdown and collective records (see docs/instrumentation.md).

    Fields:
        enabled: phase timers, breakdown keys in metrics.jsonl, end-of-run summary
        collectives: one record per collective (ranks/rank{r}/collectives.jsonl); needs enabled
        summary_skip_steps: leave each rank's first steps (warm-up) out of the summary
    """

    enabled: bool = True
    collectives: bool = True
    summary_skip_steps: int = 1


@dataclass
class ProfileSection:
    """torch.profiler: Chrome traces per rank and merged, for Perfetto (see traces/README.md).

    Fields:
        enabled: record Chrome traces with torch.profiler
        wait: steps before the profiler starts
        warmup: steps profiled and thrown away (the profiler's own start-up)
        active: steps recorded into the trace
        dir: traces/<run name>/rank{r}.json and merged.json
    """

    enabled: bool = False
    wait: int = 1
    warmup: int = 1
    active: int = 3
    dir: str = "traces"


@dataclass
class Config:
    """A whole run: the backend plus one section per concern.

    Fields:
        backend: which data-parallel backend: none = one process; the others (gptdist.parallel.BACKENDS) are
            data parallel over torchrun's ranks
    """

    backend: Literal[BACKEND_NAMES] = "none"  # one of gptdist.parallel.BACKENDS
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
    if len(parts) == 2 and parts[0] == "parallel" and parts[1] in MOVED_PARALLEL_KEYS:
        raise ConfigError(f"{dotted} has moved: use {MOVED_PARALLEL_KEYS[parts[1]]}")
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
    for backend in BACKEND_NAMES:
        if backend == cfg.backend:
            continue
        options = getattr(cfg.parallel, backend)
        default = type(options)()
        for f in dataclasses.fields(options):
            if getattr(options, f.name) != getattr(default, f.name):
                raise ConfigError(f"parallel.{backend}.{f.name} is a {backend} option but backend is {cfg.backend!r}")
    # The chosen backend's own checks (its Options.__post_init__), on the final values after overrides.
    options = getattr(cfg.parallel, cfg.backend)
    type(options)(**{f.name: getattr(options, f.name) for f in dataclasses.fields(options)})


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


# ---------------------------------------------------------------------------------------------
# The reference printed by `launch/train.py --help`, read from the sections' docstrings


def field_docs(cls: type) -> dict[str, str]:
    """{field: one-line doc} from the `Fields:` block of a section's docstring."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    if "Fields:" in (line.strip() for line in lines):
        start = [line.strip() for line in lines].index("Fields:") + 1
        for line in lines[start:]:
            name, sep, doc = line.strip().partition(": ")
            if sep and name.isidentifier():
                docs[name] = doc
    return docs


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return f"{_type_name(args[0])}|null"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else None
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if value == "" or not value.isprintable() or " " in value else value
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_reference(cls: type = Config, prefix: str = "") -> str:
    """Every field as `--section.key  TYPE  default  doc`, section by section (nested sections too)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows, sections = [], []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            sections.append((f.name, tp))
        else:
            rows.append((f"--{prefix}{f.name}", _type_name(tp), _default_text(f), docs.get(f.name, "")))
    out = []
    if rows:
        w0, w1, w2 = (max(len(r[i]) for r in rows) for i in range(3))
        out += [f"  {a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}".rstrip() for a, b, c, d in rows]
    for name, tp in sections:
        summary = (tp.__doc__ or "").strip().splitlines()[0]
        out += ["", f"{prefix}{name}: {summary}", config_reference(tp, f"{prefix}{name}.")]
    return "\n".join(out)
