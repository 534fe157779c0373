"""Ladder files: rungs, their composition (each rung = its parent + one change), and the plan of what runs on
this device."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


import torch

from gptdist.config import build_config, load_yaml, resolve_model
from gptdist.errors import ConfigError
from gptdist.studies.throughput import BenchSettings


# The settings the ladder runner reads. Anything else (train.lr, eval.*, ...) would be a rung that silently
# changes nothing, so it is refused.
RUNNER_KEYS = ("data.batch_size", "data.seq_len", "train.dtype", "train.tf32", "train.compile",
               "train.fused_adamw", "train.seed")
NEEDS = {"cuda": "needs CUDA", "nccl": "needs NCCL"}
SPEC_KEYS = {"extends", "base", "rungs", "side_rungs", "world"}
# A ladder that names a world size (`world: N`, run by gptdist.studies.ladder.dist) also changes the backend.
DIST_KEYS = ("backend", "parallel.")
RUNG_KEYS = {"name", "set", "sweep", "from", "needs", "why"}
SWEEP_KEYS = {"key", "values", "also"}


def _read_key(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def config_view(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the config sees: a distributed ladder's `parallel.<name>.*` options of backends other than
    the rung's are kept for the rungs that switch to them, but the config refuses them, so they are left out."""
    backend = settings.get("backend")
    if backend is None:
        return settings
    return {k: v for k, v in settings.items()
            if not k.startswith("parallel.") or k.startswith(f"parallel.{backend}.")}


def _check_key(key: str, where: str, dist: bool = False) -> None:
    if dist and (key == "backend" or key.startswith("parallel.")):
        return
    if not (key.startswith("model.") or key in RUNNER_KEYS):
        raise ConfigError(f"{where}: {key!r} is not a setting the ladder runner reads "
                          f"(model.*, {', '.join(RUNNER_KEYS)})")


# ---------------------------------------------------------------------------------------------------------
# Rung definitions and their composition


@dataclass(frozen=True)
class Sweep:
    """A rung that tries several values of one setting instead of setting one (distributed ladder only):
        sweep: {key: parallel.manual.bucket_cap_mb, values: [0.25, 1, 4, 25], also: [parallel.zero.bucket_cap_mb]}
    The runner runs every value, keeps the one with the lowest median step time as the rung, and carries it
    into every later rung. `also`: the same knob under other backends' names, set to the kept value too
    (a rung's config sees its own backend's options only, so on this rung they change nothing)."""

    key: str
    values: tuple  # coerced by the config (1 -> 1.0 for a float setting), distinct
    also: tuple[str, ...] = ()

    def apply(self, settings: dict[str, Any], value: Any) -> dict[str, Any]:
        return {**settings, self.key: value, **{k: value for k in self.also}}


@dataclass(frozen=True)
class Rung:
    name: str
    settings: dict[str, Any]  # the full setting: the baseline's plus every change along the chain
    parent: Optional[str]  # the rung this one adds its change to (None for the baseline)
    change: Optional[tuple[str, Any]]  # (dotted key, value); None for the baseline
    needs: Optional[str] = None  # "cuda": skipped elsewhere
    why: str = ""
    side: bool = False
    sweep: Optional[Sweep] = None  # a swept rung: `change` holds the first value until the runner picks one


@dataclass(frozen=True)
class Ladder:
    rungs: list[Rung]  # the main ladder in order, then the side rungs
    source: str = ""
    world: Optional[int] = None  # ranks of the distributed ladder; None: the single-device ladder

    def get(self, name: str) -> Rung:
        for rung in self.rungs:
            if rung.name == name:
                return rung
        raise ConfigError(f"no rung named {name!r}; rungs: {', '.join(r.name for r in self.rungs)}")

    def chain(self, name: str) -> list[Rung]:
        """The rungs from the baseline to `name`, in order."""
        out = [self.get(name)]
        while out[-1].parent is not None:
            out.append(self.get(out[-1].parent))
        return out[::-1]


def apply_change(settings: dict[str, Any], key: str, value: Any, where: str, allow_noop: bool = False) -> dict:
    """`settings` plus one change, checked: a key the runner reads, a valid value, a real change.
    A value "xK" on an integer setting means K times the current value."""
    _check_key(key, where, dist="backend" in settings)
    before = build_config(None, config_view(settings))
    try:
        old = settings[key] if key in settings else _read_key(before, key)
    except AttributeError:
        build_config(None, config_view({**settings, key: value}))  # raises the config's own "unknown key ... did you mean"
        raise
    if isinstance(value, str) and re.fullmatch(r"x\d+", value):
        if not isinstance(old, int) or isinstance(old, bool):
            raise ConfigError(f"{where}: {value!r} scales an integer setting, but {key} is {old!r}")
        value = old * int(value[1:])
    new = {**settings, key: value}
    after = build_config(None, config_view(new))  # strict: unknown keys, wrong types and impossible shapes raise here
    if key in config_view(new):
        new[key] = _read_key(after, key)  # the coerced value (e.g. 1 -> 1.0 for a float)
    if new[key] == old and not allow_noop:
        raise ConfigError(f"{where}: {key} is already {old!r}; a rung must change exactly one setting")
    return new


def _parse_sweep(spec: Any, parent: dict[str, Any], where: str) -> Sweep:
    """`sweep:` -> Sweep, every value checked as a change of `parent` (bad values fail before anything runs)."""
    if not isinstance(spec, dict) or set(spec) - SWEEP_KEYS or "key" not in spec or "values" not in spec:
        raise ConfigError(f"{where}: `sweep` takes {{key: K, values: [v1, v2, ...], also: [K2, ...]}}")
    key, values, also = spec["key"], spec["values"], spec.get("also") or []
    if not isinstance(values, list) or len(values) < 2 or not isinstance(also, list) or key in also:
        raise ConfigError(f"{where}: a sweep needs a list of at least 2 `values` (and `also`, a list of other keys)")
    coerced = []
    for value in values:
        settings = apply_change(parent, key, value, where, allow_noop=True)  # one of them may be the current value
        for other in also:
            apply_change(settings, other, settings[key], where, allow_noop=True)
        coerced.append(settings[key])
    if len(set(coerced)) != len(coerced):
        raise ConfigError(f"{where}: the sweep's values repeat: {coerced}")
    return Sweep(key, tuple(coerced), tuple(also))


def _load_spec(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    data = load_yaml(path)
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; valid: {sorted(SPEC_KEYS)}")
    if "extends" in data:
        parent_path = (path.parent / str(data["extends"])).resolve()
        if parent_path in seen:
            raise ConfigError(f"{path}: `extends` loops back to {parent_path}")
        parent = _load_spec(parent_path, seen + (path.resolve(),))
        data = {
            "base": {**parent.get("base", {}), **(data.get("base") or {})},
            "rungs": data.get("rungs", parent.get("rungs")),
            "side_rungs": data.get("side_rungs", parent.get("side_rungs")),
            **({"world": data.get("world", parent.get("world"))} if "world" in data or "world" in parent else {}),
        }
    return data


def compose_ladder(spec: dict[str, Any], base_overrides: Optional[dict[str, Any]] = None, source: str = "") -> Ladder:
    """A ladder spec (the YAML's content) -> rungs with their full settings, every rung checked."""
    base = dict(spec.get("base") or {})
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: `base` must be a mapping of dotted settings")
    base.update(base_overrides or {})
    world = spec.get("world")
    if world is not None:
        if not isinstance(world, int) or isinstance(world, bool) or world < 2:
            raise ConfigError(f"{source}: `world` must be an integer >= 2, not {world!r}")
        if "backend" not in base:
            raise ConfigError(f"{source}: a ladder with `world` names its baseline's `backend` in `base`")
    for key in base:
        _check_key(key, f"{source} base", dist=world is not None)
    base_cfg = build_config(None, config_view(base))
    base = {key: _read_key(base_cfg, key) if key in config_view(base) else value for key, value in base.items()}
    main, side = spec.get("rungs") or [], spec.get("side_rungs") or []
    if not isinstance(main, list) or not isinstance(side, list) or not main:
        raise ConfigError(f"{source}: `rungs` must be a non-empty list (and `side_rungs` a list)")

    rungs: list[Rung] = []
    by_name: dict[str, Rung] = {}
    for i, item in enumerate(main + side):
        is_side = i >= len(main)
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ConfigError(f"{source}: rung {i + 1} needs a `name`")
        name = item["name"]
        where = f"{source} rung {name!r}"
        if name in by_name:
            raise ConfigError(f"{where}: the name is used twice")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}: use letters, digits, '_', '.', '-' (it names files)")
        unknown = set(item) - RUNG_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(RUNG_KEYS)}")
        needs = item.get("needs")
        if needs is not None and needs not in NEEDS:
            raise ConfigError(f"{where}: needs {needs!r} is not one of {', '.join(NEEDS)}")
        if is_side:
            parent = item.get("from")
            if parent not in by_name:
                raise ConfigError(f"{where}: a side rung branches `from` an earlier rung; {parent!r} is none")
        else:
            if "from" in item:
                raise ConfigError(f"{where}: `from` is for side rungs; a main rung follows the one before it")
            parent = rungs[-1].name if rungs else None
        change_spec, sweep_spec = item.get("set"), item.get("sweep")
        why = str(item.get("why", ""))
        if parent is None:
            if change_spec or sweep_spec:
                raise ConfigError(f"{where}: the first rung is the baseline (`base`); it changes nothing")
            rung = Rung(name, dict(base), None, None, needs, why, False)
        elif sweep_spec is not None:
            if world is None:
                raise ConfigError(f"{where}: `sweep` is for a distributed ladder (`world: N`)")
            if change_spec is not None:
                raise ConfigError(f"{where}: a rung either `set`s one change or `sweep`s one setting, not both")
            sweep = _parse_sweep(sweep_spec, by_name[parent].settings, where)
            # Until the runner picks, the rungs after it are composed (and checked) with the first value.
            settings = sweep.apply(by_name[parent].settings, sweep.values[0])
            rung = Rung(name, settings, parent, (sweep.key, sweep.values[0]), needs, why, is_side, sweep)
        else:
            if not isinstance(change_spec, dict) or len(change_spec) != 1:
                raise ConfigError(f"{where}: `set` must name exactly one change, e.g. set: {{train.compile: true}}")
            (key, value), = change_spec.items()
            settings = apply_change(by_name[parent].settings, key, value, where)
            rung = Rung(name, settings, parent, (key, settings[key]), needs, why, is_side)
        rungs.append(rung)
        by_name[name] = rung
    return Ladder(rungs, source, world)


def load_ladder(path: str | Path, base_overrides: Optional[dict[str, Any]] = None) -> Ladder:
    path = Path(path)
    return compose_ladder(_load_spec(path), base_overrides, str(path))


# ---------------------------------------------------------------------------------------------------------
# What runs on this device


@dataclass(frozen=True)
class PlannedRung:
    rung: Rung
    settings: dict[str, Any]  # effective here: the changes of skipped rungs left out
    skip_reason: Optional[str]  # None: runs
    compare_to: Optional[str]  # the nearest ancestor that runs here (its "previous rung")


def plan_ladder(ladder: Ladder, device: torch.device, only: Optional[set[str]] = None,
                chosen: Optional[dict[str, Any]] = None) -> list[PlannedRung]:
    """What runs here, with what settings. `chosen`: swept rung name -> the value the runner kept, carried
    into the rungs after it (a sweep not yet run contributes its first value)."""
    chosen = chosen or {}

    def cannot_run(rung: Rung) -> Optional[str]:
        if rung.needs in NEEDS and device.type != "cuda":
            return f"{NEEDS[rung.needs]} (this run is on {device.type})"
        return None

    def skip_reason(rung: Rung) -> Optional[str]:
        if only is not None and rung.name not in only:
            return "not selected (--only)"
        return cannot_run(rung)

    planned = []
    for rung in ladder.rungs:
        chain = ladder.chain(rung.name)
        settings = dict(chain[0].settings)
        compare_to = None
        for ancestor in chain[1:]:
            # A change this device cannot make is left out of the rungs after it; a rung merely not
            # selected (--only) keeps its change, so that every selected rung is what the file says.
            if cannot_run(ancestor) is None and ancestor.sweep is not None:
                settings = ancestor.sweep.apply(settings, chosen.get(ancestor.name, ancestor.change[1]))
            elif cannot_run(ancestor) is None:
                settings = apply_change(settings, *ancestor.change, where=ancestor.name, allow_noop=True)
            elif ancestor is rung:  # skipped here: shown with its change, not checked against this machine
                settings = {**settings, ancestor.change[0]: ancestor.change[1]}
        for ancestor in reversed(chain[:-1]):
            if skip_reason(ancestor) is None:
                compare_to = ancestor.name
                break
        planned.append(PlannedRung(rung, settings, skip_reason(rung), compare_to))
    return planned


def bench_settings(settings: dict[str, Any], device: torch.device, steps: int, warmup: int) -> BenchSettings:
    cfg = build_config(None, settings)
    dtype = cfg.train.dtype if cfg.train.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return BenchSettings(
        model=resolve_model(cfg), batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len, dtype=dtype,
        compile=cfg.train.compile, steps=steps, warmup=warmup, device=str(device), seed=cfg.train.seed,
        fused_adamw=cfg.train.fused_adamw, tf32=cfg.train.tf32,
    )
