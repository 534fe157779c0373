"""Runs a planned ladder: every rung's step timed (interleaved rounds), its memory and a profiler window."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import gc
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gptdist.studies.throughput import BenchSettings, TimedTrainStep, pick_device, summarize
from gptdist.dist import synchronize
from gptdist.errors import GptdistError
from gptdist.flops import flops_per_token, mfu, peak_flops
from gptdist.model import GPT
from gptdist.provenance import hardware, provenance
from gptdist.studies.ladder.spec import Ladder, PlannedRung, plan_ladder, bench_settings


# ---------------------------------------------------------------------------------------------------------
# Measurements


def state_bytes(runner: TimedTrainStep) -> int:
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


def step_memory_rise(runner: TimedTrainStep) -> tuple[Optional[int], str]:
    """Bytes the process's memory rises by during one training step above what it held before it."""
    device = runner.device
    if device.type == "cuda":
        synchronize(device)
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


def profile_window(runner: TimedTrainStep, steps: int, trace_path: Optional[Path]) -> dict[str, Any]:
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
    runner: Optional[TimedTrainStep] = None
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
            live.runner = TimedTrainStep(GPT(live.bench.model), live.bench, device)
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

    hw = hardware(device)
    return {
        "benchmark": "optimisation ladder: train step (forward + backward + AdamW) on random tokens, one device",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *(shlex.quote(a) for a in sys.argv)]),
        "ladder_file": ladder.source,
        "hardware": hw,
        "provenance": provenance(device),
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
