"""The optimisation ladder: one training step made faster one change at a time, each change measured.

    python launch/ladder.py --config configs/ladder/default.yaml --out runs/ladder/gpt2

A ladder file (configs/ladder/*.yaml) holds a baseline (`base`: dotted settings of `gptdist.config`) and a
list of rungs; each rung is the rung before it plus exactly one change (`set: {train.compile: true}`).
Side rungs branch from a named rung (`from:`), e.g. activation checkpointing and the larger micro-batch it
allows. `needs: cuda` marks a change that means nothing on a CPU: there the rung is reported as skipped and
the rungs after it run without its change.

Per rung, on the same model shape and the same random batch, with `gptdist.benchmark.TrainStep` (forward +
backward + AdamW, synchronised clocks):
- step time: warm-up (compile included), then `rounds` x `steps` timed steps, the rungs interleaved round by
  round (order flipped every round) so that a noisy machine slows them alike; median with p10/p90;
- tokens/s, MFU (against the device's bf16 dense peak for every rung: one yardstick, the goal's);
- speed-up = tokens/s over the previous rung's and over the baseline's;
- memory: model + optimizer state (counted from the tensors) plus the rise during one step (CUDA: the
  allocator's peak; CPU: the process's peak RSS, reset through /proc/self/clear_refs: coarse);
- a short torch.profiler window after the timing: top ops by self time (CUDA: kernels by GPU time) and
  which ops got faster or slower than in the previous rung; optionally a Chrome trace per rung.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import gc
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gptdist.benchmark import BenchSettings, TrainStep, hardware_info, pick_device, summarize, write_outputs
from gptdist.config import build_config, load_yaml, resolve_model
from gptdist.errors import ConfigError, GptdistError
from gptdist.flops import flops_per_token, mfu, peak_flops
from gptdist.model import GPT

# The settings the ladder runner reads. Anything else (train.lr, eval.*, ...) would be a rung that silently
# changes nothing, so it is refused.
RUNNER_KEYS = ("data.batch_size", "data.seq_len", "train.dtype", "train.tf32", "train.compile",
               "train.fused_adamw", "train.seed")
NEEDS = {"cuda": "needs CUDA"}
SPEC_KEYS = {"extends", "base", "rungs", "side_rungs"}
RUNG_KEYS = {"name", "set", "from", "needs", "why"}


def _read_key(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_key(key: str, where: str) -> None:
    if not (key.startswith("model.") or key in RUNNER_KEYS):
        raise ConfigError(f"{where}: {key!r} is not a setting the ladder runner reads "
                          f"(model.*, {', '.join(RUNNER_KEYS)})")


# ---------------------------------------------------------------------------------------------------------
# Rung definitions and their composition


@dataclass(frozen=True)
class Rung:
    name: str
    settings: dict[str, Any]  # the full setting: the baseline's plus every change along the chain
    parent: Optional[str]  # the rung this one adds its change to (None for the baseline)
    change: Optional[tuple[str, Any]]  # (dotted key, value); None for the baseline
    needs: Optional[str] = None  # "cuda": skipped elsewhere
    why: str = ""
    side: bool = False


@dataclass(frozen=True)
class Ladder:
    rungs: list[Rung]  # the main ladder in order, then the side rungs
    source: str = ""

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
    _check_key(key, where)
    before = build_config(None, settings)
    try:
        old = _read_key(before, key)
    except AttributeError:
        build_config(None, {**settings, key: value})  # raises the config's own "unknown key ... did you mean"
        raise
    if isinstance(value, str) and re.fullmatch(r"x\d+", value):
        if not isinstance(old, int) or isinstance(old, bool):
            raise ConfigError(f"{where}: {value!r} scales an integer setting, but {key} is {old!r}")
        value = old * int(value[1:])
    new = {**settings, key: value}
    after = build_config(None, new)  # strict: unknown keys, wrong types and impossible shapes raise here
    new[key] = _read_key(after, key)  # the coerced value (e.g. 1 -> 1.0 for a float)
    if new[key] == old and not allow_noop:
        raise ConfigError(f"{where}: {key} is already {old!r}; a rung must change exactly one setting")
    return new


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
        }
    return data


def compose_ladder(spec: dict[str, Any], base_overrides: Optional[dict[str, Any]] = None, source: str = "") -> Ladder:
    """A ladder spec (the YAML's content) -> rungs with their full settings, every rung checked."""
    base = dict(spec.get("base") or {})
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: `base` must be a mapping of dotted settings")
    base.update(base_overrides or {})
    for key in base:
        _check_key(key, f"{source} base")
    base_cfg = build_config(None, base)
    base = {key: _read_key(base_cfg, key) for key in base}
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
        change_spec = item.get("set")
        if parent is None:
            if change_spec:
                raise ConfigError(f"{where}: the first rung is the baseline (`base`); it changes nothing")
            rung = Rung(name, dict(base), None, None, needs, str(item.get("why", "")), False)
        else:
            if not isinstance(change_spec, dict) or len(change_spec) != 1:
                raise ConfigError(f"{where}: `set` must name exactly one change, e.g. set: {{train.compile: true}}")
            (key, value), = change_spec.items()
            settings = apply_change(by_name[parent].settings, key, value, where)
            rung = Rung(name, settings, parent, (key, settings[key]), needs, str(item.get("why", "")), is_side)
        rungs.append(rung)
        by_name[name] = rung
    return Ladder(rungs, source)


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


def plan_ladder(ladder: Ladder, device: torch.device, only: Optional[set[str]] = None) -> list[PlannedRung]:
    def cannot_run(rung: Rung) -> Optional[str]:
        if rung.needs == "cuda" and device.type != "cuda":
            return f"{NEEDS['cuda']} (this run is on {device.type})"
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
            if cannot_run(ancestor) is None or ancestor is rung:
                settings = apply_change(settings, *ancestor.change, where=ancestor.name, allow_noop=True)
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


# ---------------------------------------------------------------------------------------------------------
# Measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_bytes(runner: TrainStep) -> int:
    """Parameters, buffers and optimizer state, counted from the tensors (each storage once)."""
    seen, total = set(), 0
    tensors = list(runner.model.parameters()) + list(runner.model.buffers())
    for state in runner.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _proc_status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def step_memory_rise(runner: TrainStep) -> tuple[Optional[int], str]:
    """Bytes the process's memory rises by during one training step above what it held before it."""
    device = runner.device
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        runner.run(1)
        return torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    try:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so the rise is this step's
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)
        before = _proc_status_kb("VmRSS")
        runner.run(1)
        return (_proc_status_kb("VmHWM") - before) * 1024, "peak RSS rise (VmHWM reset via /proc/self/clear_refs)"
    except OSError as exc:
        return None, f"unavailable ({exc})"


def _self_times(prof, device: torch.device) -> dict[str, float]:
    """op or kernel name -> self time in microseconds over the profiled window."""
    out: dict[str, float] = {}
    for evt in prof.key_averages():
        if device.type == "cuda":
            # GPU time, by kernel: the ops' own device time would count the same kernels twice.
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(evt, "self_device_time_total", None)
            if us is None:
                us = evt.self_cuda_time_total
        else:
            us = evt.self_cpu_time_total
        if us > 0:
            out[evt.key] = out.get(evt.key, 0.0) + us
    return out


def profile_window(runner: TrainStep, steps: int, trace_path: Optional[Path]) -> dict[str, Any]:
    """Profile `steps` more (already warm) steps; ops by self time per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall_ms = runner.run(steps)
    if trace_path is not None:
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_path))
    times = _self_times(prof, runner.device)
    total_ms = sum(times.values()) / 1e3 / steps
    ops_ms = {name: us / 1e3 / steps for name, us in times.items()}
    result = {
        "steps": steps,
        "kind": "CUDA kernels by self GPU time" if runner.device.type == "cuda" else "ops by self CPU time",
        "step_ms_under_profiler": statistics.median(wall_ms),
        "total_self_ms_per_step": total_ms,
        "ops_ms_per_step": ops_ms,  # all of them; the report keeps the top ones
        "trace": str(trace_path) if trace_path else None,
    }
    if runner.device.type == "cuda":
        # GPU busy time / wall time: well below 1 means the GPU waits on the CPU (launch-bound) or on syncs.
        result["gpu_busy_fraction"] = total_ms / statistics.median(wall_ms)
    return result


def top_ops(ops_ms: dict[str, float], n: int) -> list[dict[str, Any]]:
    total = sum(ops_ms.values()) or 1.0
    ranked = sorted(ops_ms.items(), key=lambda kv: -kv[1])[:n]
    return [{"name": k, "ms_per_step": v, "share": v / total} for k, v in ranked]


def ops_diff(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, list[dict[str, Any]]]:
    """The ops whose time per step fell most (faster, or gone) and rose most (slower, or new)."""
    rows = [{"name": k, "before_ms": before.get(k, 0.0), "after_ms": after.get(k, 0.0),
             "delta_ms": after.get(k, 0.0) - before.get(k, 0.0)} for k in set(before) | set(after)]
    faster = sorted((r for r in rows if r["delta_ms"] < 0), key=lambda r: r["delta_ms"])[:n]
    slower = sorted((r for r in rows if r["delta_ms"] > 0), key=lambda r: -r["delta_ms"])[:n]
    return {"faster": faster, "slower": slower}


# ---------------------------------------------------------------------------------------------------------
# The runner


@dataclass
class LadderOptions:
    device: str = "auto"
    steps: int = 5  # timed steps per rung per round
    rounds: int = 3
    warmup: int = 2  # untimed steps first (torch.compile compiles here)
    profile_steps: int = 2  # 0: no profiler window
    top: int = 8
    traces_dir: Optional[str] = None  # a Chrome trace per rung here
    threads: Optional[int] = None
    peak_flops: Optional[float] = None  # override the table's bf16 peak (e.g. for a CPU)
    sequential: bool = False  # one rung alive at a time (memory) instead of interleaved rounds (noise)
    only: Optional[list[str]] = None


@dataclass
class _Live:
    planned: PlannedRung
    bench: Optional[BenchSettings] = None
    runner: Optional[TrainStep] = None
    status: str = "ok"
    reason: Optional[str] = None
    round_times: list[list[float]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    profile: Optional[dict[str, Any]] = None
    build_s: float = 0.0


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def _free(live: _Live) -> None:
    live.runner = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_ladder(ladder: Ladder, opts: LadderOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    if opts.steps < 1 or opts.rounds < 1 or opts.steps * opts.rounds < 2 or opts.warmup < 0 or opts.profile_steps < 0:
        raise GptdistError("need steps >= 1, rounds >= 1, steps * rounds >= 2, warmup >= 0, profile steps >= 0")
    if opts.only:
        for name in opts.only:
            ladder.get(name)  # an unknown name is an error, not an empty run
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device)
    # Every compiled rung is another GPT instance through the same code: room for more than dynamo's
    # default 8 compiled variants per function, or later rungs would silently fall back to eager.
    import torch._dynamo.config as dynamo_config
    if hasattr(dynamo_config, "recompile_limit"):
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    else:  # older torch
        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)

    lives = [_Live(p) for p in plan_ladder(ladder, device, set(opts.only) if opts.only else None)]
    traces = Path(opts.traces_dir) if opts.traces_dir else None

    def start(live: _Live) -> None:
        """Build, then warm up (compile happens in the first steps)."""
        p = live.planned
        if p.skip_reason:
            live.status, live.reason = "skipped", p.skip_reason
            return
        t0 = time.perf_counter()
        try:
            live.bench = bench_settings(p.settings, device, opts.steps, opts.warmup)
            torch.manual_seed(live.bench.seed)  # same initial weights in every rung
            live.runner = TrainStep(GPT(live.bench.model), live.bench, device)
            live.runner.run(opts.warmup)
        except Exception as exc:  # one rung failing (OOM, a compile error) must not lose the others
            live.status, live.reason = "failed", _short_error(exc)
        if live.status != "ok":
            _free(live)  # outside the `except`: its traceback would still hold the failed step's tensors
        live.build_s = time.perf_counter() - t0
        log(f"{p.rung.name}: " + (f"built and warmed up in {live.build_s:.1f} s" if live.status == "ok"
                                  else f"{live.status}: {live.reason}"))

    def time_round(live: _Live, r: int, steps: int) -> None:
        if live.status != "ok":
            return
        try:
            live.round_times.append(live.runner.run(steps))
            log(f"round {r + 1}/{opts.rounds} {live.planned.rung.name:22s} median "
                f"{statistics.median(live.round_times[-1]):9.2f} ms")
        except Exception as exc:
            live.status, live.reason = "failed", _short_error(exc)
        if live.status != "ok":
            _free(live)

    def finish(live: _Live) -> None:
        """Memory, then the profiler window; then the runner can go."""
        if live.status != "ok":
            return
        try:
            live.memory["state_bytes"] = state_bytes(live.runner)
            rise, method = step_memory_rise(live.runner)
            live.memory["step_rise_bytes"], live.memory["method"] = rise, method
            live.memory["peak_bytes"] = None if rise is None else live.memory["state_bytes"] + rise
            if opts.profile_steps:
                path = traces / f"{lives.index(live):02d}_{live.planned.rung.name}.json" if traces else None
                live.profile = profile_window(live.runner, opts.profile_steps, path)
            live.memory["final_loss"] = live.runner.last_loss
        except Exception as exc:
            live.status, live.reason = "failed", _short_error(exc)
        _free(live)

    if opts.sequential:
        for live in lives:
            start(live)
            for r in range(opts.rounds):
                time_round(live, r, opts.steps)
            finish(live)
    else:
        for live in lives:
            start(live)
        for r in range(opts.rounds):
            order = lives if r % 2 == 0 else lives[::-1]  # flip so a rising or falling load favours no rung
            for live in order:
                time_round(live, r, opts.steps)
        for live in lives:
            finish(live)

    return _result(ladder, lives, opts, device)


def _result(ladder: Ladder, lives: list[_Live], opts: LadderOptions, device: torch.device) -> dict[str, Any]:
    peak_bf16 = peak_flops(device, torch.bfloat16, override=opts.peak_flops)
    by_name: dict[str, dict[str, Any]] = {}
    rows = []
    baseline = next((lv.planned.rung.name for lv in lives if lv.status == "ok" and not lv.planned.rung.side), None)
    for live in lives:
        p, rung = live.planned, live.planned.rung
        row: dict[str, Any] = {
            "name": rung.name,
            "side": rung.side,
            "parent": rung.parent,
            "change": None if rung.change is None else {"key": rung.change[0], "value": rung.change[1]},
            "why": rung.why,
            "needs": rung.needs,
            "status": live.status,
            "reason": live.reason,
            "compare_to": p.compare_to,
            "settings": p.settings,
        }
        if live.status == "ok":
            b = live.bench
            fpt = flops_per_token(b.model, b.seq_len)
            tokens = b.batch_size * b.seq_len
            all_times = [t for rnd in live.round_times for t in rnd]
            stats = summarize(all_times, tokens, fpt, peak_bf16)
            own_peak = peak_flops(device, b.dtype, override=None, allow_tf32=bool(b.tf32))
            row.update({
                "batch_size": b.batch_size, "seq_len": b.seq_len, "dtype": b.dtype, "tokens_per_step": tokens,
                "flops_per_token": fpt, **stats,
                "mfu_own_dtype_peak": mfu(stats["tokens_per_s"], fpt, own_peak),
                "round_medians_ms": [statistics.median(rnd) for rnd in live.round_times],
                "build_and_warmup_s": live.build_s,
                "memory": {k: v for k, v in live.memory.items() if k != "final_loss"},
                "final_loss": live.memory.get("final_loss"),
            })
        by_name[rung.name] = row
        rows.append(row)

    def speedup(row: dict, other_name: Optional[str]) -> Optional[dict[str, Any]]:
        other = by_name.get(other_name) if other_name else None
        if row["status"] != "ok" or not other or other["status"] != "ok" or other is row:
            return None
        per_round = [(row["tokens_per_step"] / a) / (other["tokens_per_step"] / b)
                     for a, b in zip(row["round_medians_ms"], other["round_medians_ms"])]
        return {"vs": other["name"], "tokens_per_s_ratio": row["tokens_per_s"] / other["tokens_per_s"],
                "per_round_min": min(per_round), "per_round_max": max(per_round)}

    for row in rows:
        row["speedup_vs_previous"] = speedup(row, row["compare_to"])
        row["speedup_vs_baseline"] = speedup(row, baseline)
        prev = by_name.get(row["compare_to"]) if row["compare_to"] else None
        if row["status"] == "ok" and prev and prev["status"] == "ok":
            mem, pmem = row["memory"], prev["memory"]
            if mem.get("peak_bytes") is not None and pmem.get("peak_bytes") is not None:
                row["memory"]["peak_change_vs_previous_bytes"] = mem["peak_bytes"] - pmem["peak_bytes"]
    for live, row in zip(lives, rows):
        if live.profile is not None:
            prof = dict(live.profile)
            ops = prof.pop("ops_ms_per_step")
            prof["top"] = top_ops(ops, opts.top)
            prev_live = next((lv for lv in lives if lv.planned.rung.name == row["compare_to"]), None)
            if prev_live is not None and prev_live.profile is not None:
                prof["vs_previous"] = ops_diff(prev_live.profile["ops_ms_per_step"], ops, opts.top)
            row["profile"] = prof

    hw = hardware_info(device)
    return {
        "benchmark": "optimisation ladder: train step (forward + backward + AdamW) on random tokens, one device",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *(shlex.quote(a) for a in sys.argv)]),
        "ladder_file": ladder.source,
        "hardware": hw,
        "options": dataclasses.asdict(opts),
        "baseline": baseline,
        "peak_flops_bf16": peak_bf16,
        "mfu_definition": "model FLOPs (6*N + 12*L*H*Q*T per token, PaLM appendix B; N without wpe, of the rung's "
                          "own config) x tokens/s / the device's dense bf16 peak, for every rung",
        "speedup_definition": "tokens/s of the rung / tokens/s of the rung compared with (pooled medians); "
                              "per_round_min/max: the same ratio round by round",
        "memory_definition": "peak = parameters + buffers + optimizer state (from the tensors) + the rise during "
                             "one training step above the memory held before it (method per rung)",
        "rungs": rows,
    }


# ---------------------------------------------------------------------------------------------------------
# Reports


def _mib(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _change_text(row: dict) -> str:
    if row["change"] is None:
        return "baseline"
    return f"`{row['change']['key']}={row['change']['value']}`"


def _x(s: Optional[dict]) -> str:
    return "" if s is None else f"{s['tokens_per_s_ratio']:.2f}x"


def to_markdown(result: dict[str, Any], notes: list[str] = ()) -> str:
    hw, o = result["hardware"], result["options"]
    device = hw.get("gpu") or f"{hw['cpu_model']}, {hw['cpus_usable']} usable of {hw['cpu_count']} CPUs"
    lines = [
        "# Optimisation ladder",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- ladder: `{result['ladder_file']}`",
        f"- device: {device}; torch threads {hw['torch_threads']}; load average (1/5/15 min) at the end "
        f"{[round(x, 2) for x in hw['load_average'] or []]}",
        f"- software: torch {hw['torch']}" + (f", CUDA {hw['cuda']}" if hw.get("cuda") else "")
        + f", Python {hw['python']}, {hw['platform']}",
        f"- timing: {o['warmup']} warm-up steps per rung, then {o['rounds']} round(s) x {o['steps']} timed steps, "
        + ("one rung at a time" if o["sequential"] else "rungs interleaved round by round (order flipped each round)"),
        f"- MFU: {result['mfu_definition']}"
        + ("" if result["peak_flops_bf16"] else " (no peak known for this device: n/a)"),
        f"- speed-up: {result['speedup_definition']}",
        f"- memory: {result['memory_definition']}",
        "",
        "| # | rung | change | B | median ms | p10-p90 ms | tokens/s | MFU | peak mem | vs previous | vs baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["rungs"]):
        name = r["name"] + (f" (side, from {r['parent']})" if r["side"] else "")
        if r["status"] != "ok":
            lines.append(f"| {i} | {name} | {_change_text(r)} | | {r['status']}: {r['reason']} | | | | | | |")
            continue
        m = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        prev = _x(r["speedup_vs_previous"])
        if r["speedup_vs_previous"] and r["speedup_vs_previous"]["vs"] != r["parent"]:
            prev += f" (vs {r['speedup_vs_previous']['vs']})"
        lines.append(
            f"| {i} | {name} | {_change_text(r)} | {r['batch_size']} | {r['step_ms_median']:.1f} | "
            f"{r['step_ms_p10']:.1f}-{r['step_ms_p90']:.1f} | {r['tokens_per_s']:,.0f} | {m} | "
            f"{_mib(r['memory'].get('peak_bytes'))} | {prev} | {_x(r['speedup_vs_baseline'])} |"
        )
    methods = {r["memory"].get("method") for r in result["rungs"] if r["status"] == "ok"}
    lines += ["", "Memory method: " + "; ".join(sorted(m for m in methods if m)) + "."]

    trade = [r for r in result["rungs"] if r["side"] and r["status"] == "ok" and r["speedup_vs_previous"]]
    if trade:
        lines += ["", "## Side rungs: what they trade", ""]
        for r in trade:
            prev = next(x for x in result["rungs"] if x["name"] == r["speedup_vs_previous"]["vs"])
            ratio = r["speedup_vs_previous"]["tokens_per_s_ratio"]
            dmem = r["memory"].get("peak_change_vs_previous_bytes")
            mem_text = "memory n/a" if dmem is None else (
                f"peak memory {_mib(prev['memory']['peak_bytes'])} -> {_mib(r['memory']['peak_bytes'])} "
                f"({'saves' if dmem < 0 else 'costs'} {_mib(abs(dmem))}, {100 * dmem / prev['memory']['peak_bytes']:+.0f} %)")
            step_text = (f"step {prev['step_ms_median']:.1f} -> {r['step_ms_median']:.1f} ms at B {prev['batch_size']} -> "
                         f"{r['batch_size']}")
            lines.append(f"- **{r['name']}** vs {prev['name']}: {mem_text}; {step_text}; throughput x{ratio:.2f} "
                         f"({100 * (ratio - 1):+.0f} %, per round {r['speedup_vs_previous']['per_round_min']:.2f}"
                         f"-{r['speedup_vs_previous']['per_round_max']:.2f}).")

    profiled = [r for r in result["rungs"] if r.get("profile")]
    if profiled:
        lines += ["", "## Profiles: where each rung's step goes, and what changed", ""]
        for r in profiled:
            p = r["profile"]
            busy = f"; GPU busy {100 * p['gpu_busy_fraction']:.0f} % of the wall time" if "gpu_busy_fraction" in p else ""
            lines += [f"### {r['name']}", "",
                      f"{p['kind']}, {p['steps']} profiled steps ({p['step_ms_under_profiler']:.1f} ms per step "
                      f"under the profiler{busy})" + (f"; trace `{p['trace']}`" if p["trace"] else "") + ".", "",
                      "| op | ms/step | share |", "|---|---:|---:|"]
            lines += [f"| `{_clip(op['name'])}` | {op['ms_per_step']:.2f} | {100 * op['share']:.1f} % |" for op in p["top"]]
            if "vs_previous" in p:
                d = p["vs_previous"]
                fmt = lambda rows: ", ".join(f"`{_clip(x['name'], 60)}` {x['before_ms']:.2f} -> {x['after_ms']:.2f}"
                                             for x in rows) or "none"
                lines += ["", f"vs {r['compare_to']}: faster or gone: {fmt(d['faster'])}.",
                          f"Slower or new: {fmt(d['slower'])}."]
            lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _clip(text: str, n: int = 80) -> str:
    text = text.replace("|", "/").replace("`", "'")
    return text if len(text) <= n else text[: n - 3] + "..."


def plot(result: dict[str, Any], path: Path) -> None:
    """Bar chart: median step ms per rung with p10-p90 whiskers, labelled with the speed-up over the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rungs"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.8))
    top = max([r["step_ms_p90"] for r in rows if r["status"] == "ok"] or [1.0])
    for i, r in enumerate(rows):
        if r["status"] != "ok":
            ax.text(i, top * 0.02, f"{r['status']}\n{'needs CUDA' if r['needs'] == 'cuda' and r['status'] == 'skipped' else ''}",
                    ha="center", va="bottom", fontsize=8, color="grey", rotation=90)
            continue
        med = r["step_ms_median"]
        ax.bar(i, med, color="#d9822b" if r["side"] else "#2b6cb0", hatch="//" if r["side"] else None,
               yerr=[[med - r["step_ms_p10"]], [r["step_ms_p90"] - med]], capsize=4, ecolor="black")
        s = r["speedup_vs_baseline"]
        label = f"{s['tokens_per_s_ratio']:.2f}x" if s else "1.00x"
        ax.text(i, r["step_ms_p90"] + top * 0.02, label + (f"\nB={r['batch_size']}" if r["side"] else ""),
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median step time, ms (whiskers p10-p90)")
    ax.set_ylim(0, top * 1.25)
    hw = result["hardware"]
    where = hw.get("gpu") or f"{hw['cpu_model']} ({hw['torch_threads']} threads)"
    ax.set_title(f"Optimisation ladder on {where}\nlabels: throughput (tokens/s) over the baseline; "
                 "hatched: side rungs", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ladder/default.yaml", help="the ladder file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a baseline setting for every rung, e.g. --set data.batch_size=32")
    p.add_argument("--only", help="comma-separated rung names to run; the others are reported as not selected")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=5, help="timed steps per rung per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per rung first (compile happens here)")
    p.add_argument("--profile-steps", type=int, default=2, help="steps in each rung's profiler window; 0: none")
    p.add_argument("--top", type=int, default=8, help="ops listed per rung")
    p.add_argument("--traces", nargs="?", const="", default=None, metavar="DIR",
                   help="write a Chrome trace per rung (default folder traces/ladder/<name>)")
    p.add_argument("--sequential", action="store_true",
                   help="one rung alive at a time (less memory) instead of interleaved rounds")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--peak-flops", type=float, help="bf16 peak FLOP/s for MFU where the table has none")
    p.add_argument("--name", help="run name (trace folder); default: the ladder file's name and a timestamp")
    p.add_argument("--out", help="write OUT.json, OUT.md and OUT.png")
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section of OUT.md")
    return p.parse_args(argv)


def _parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. data.batch_size=32")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        ladder = load_ladder(args.config, _parse_sets(args.set))
        name = args.name or f"{Path(args.config).stem}_{dt.datetime.now():%Y%m%d_%H%M%S}"
        traces = None if args.traces is None else (args.traces or str(Path("traces") / "ladder" / name))
        opts = LadderOptions(
            device=args.device, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
            profile_steps=args.profile_steps, top=args.top, traces_dir=traces, threads=args.threads,
            peak_flops=args.peak_flops, sequential=args.sequential,
            only=[s.strip() for s in args.only.split(",") if s.strip()] if args.only else None,
        )
        result = run_ladder(ladder, opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except GptdistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["notes"] = args.note
    markdown = to_markdown(result, args.note)
    print(markdown)
    if args.out:
        out = write_outputs(Path(args.out), result, markdown)
        plot(result, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.json')}, .md and .png", file=sys.stderr)
    return 0
