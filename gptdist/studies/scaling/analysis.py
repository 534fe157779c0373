"""Reading the study's runs: per-step values over ranks, the step period, efficiency and the gap to ideal split into parts."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from gptdist.errors import ConfigError
from gptdist.instrument.arrival import per_step_totals
from gptdist.instrument.summary import percentile
from gptdist.run_reader import read_rank_rows, with_step_periods
from gptdist.studies.scaling.plan import RunSpec


PARTS = ("compute", "exposed", "wait", "data", "other")
PART_TITLES = {"compute": "extra compute", "exposed": "exposed comm", "wait": "straggler wait", "data": "data",
               "other": "other"}
# ----------------------------------------------------------------------------------------------
# Collecting a run


@dataclass
class Stat:
    median: float
    p25: float
    p75: float


def _stat(values: Sequence[float]) -> Stat:
    return Stat(percentile(values, 50), percentile(values, 25), percentile(values, 75))


@dataclass
class RunResult:
    name: str
    backend: str
    world: int
    layout: str
    batch_size: int
    tokens_per_step: int
    steps_kept: int
    step: Stat  # the step period (module docstring)
    parts: dict[str, float]  # medians of compute, exposed, wait, data, other (other = residual)
    comm_ms: float
    overlap: Optional[float]
    mem_peak_mb: float
    tokens_per_s: float
    modes: tuple[str, ...] = ()
    slowest_step_ms: float = 0.0  # median over steps of the max over ranks of step_ms (module docstring)
    comm_split: Optional[dict[str, float]] = None  # measured arrival wait / transfer (`measured_comm_split`)


def per_step_values(rows_by_rank: dict[int, list[dict]], warmup: int) -> list[dict[str, float]]:
    """Combine the ranks' rows of each step (see the module docstring), warm-up steps left out."""
    by_step: dict[int, list[dict]] = {}
    for rows in rows_by_rank.values():
        for r in with_step_periods(rows):
            by_step.setdefault(r["step"], []).append(r)
    n = len(rows_by_rank)
    out = []
    for step in sorted(by_step):
        if step <= warmup or len(by_step[step]) != n:
            continue
        rs = by_step[step]
        exposed = [r.get("comm/exposed_ms", 0.0) for r in rs]
        overlaps = [r["comm/overlap"] for r in rs if r.get("comm/overlap") is not None]
        out.append({
            "step": statistics.fmean(r["period_ms"] for r in rs),
            "slowest": max(r["step_ms"] for r in rs),
            "compute": statistics.fmean(r["time/compute_ms"] for r in rs),
            "exposed": min(exposed),
            "wait": statistics.fmean(e - min(exposed) for e in exposed),
            "data": statistics.fmean(r.get("time/data_ms", 0.0) for r in rs),
            "comm": statistics.fmean(r.get("comm/total_ms", 0.0) for r in rs),
            "overlap": statistics.fmean(overlaps) if overlaps else None,
            "mem": max(r.get("mem/peak_mb") or 0.0 for r in rs),
        })
    return out


def summarize_steps(values: list[dict[str, float]]) -> tuple[Stat, dict[str, float], float, Optional[float], float, float]:
    """(step stat, part medians with `other` as the residual, comm median, overlap median, peak memory,
    median slowest-rank step)."""
    if not values:
        raise ConfigError("no steps left after the warm-up (raise --steps or lower --warmup)")
    step = _stat([v["step"] for v in values])
    parts = {p: percentile([v[p] for v in values], 50) for p in PARTS if p != "other"}
    parts["other"] = step.median - sum(parts.values())
    overlaps = [v["overlap"] for v in values if v["overlap"] is not None]
    return (step, parts, percentile([v["comm"] for v in values], 50),
            percentile(overlaps, 50) if overlaps else None, max(v["mem"] for v in values),
            percentile([v["slowest"] for v in values], 50))


def measured_comm_split(run_dir: Path, warmup: int) -> Optional[dict[str, float]]:
    """{"wait_ms", "transfer_ms"}: medians over steps (warm-up left out) of the mean over ranks of the step's
    collective time split into waiting for the last rank to arrive and the transfer after it, summed over the
    step's collectives (collectives_split.jsonl, gptdist/instrument/arrival.py). None without that file."""
    path = Path(run_dir) / "collectives_split.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    totals = per_step_totals(rows)  # rank -> step -> (wait, transfer)
    steps = sorted({s for by_step in totals.values() for s in by_step if s > warmup})
    per_step = [[by_step[s] for by_step in totals.values() if s in by_step] for s in steps]
    if not per_step:
        return None
    return {key: percentile([statistics.fmean(x[i] for x in ranks) for ranks in per_step], 50)
            for i, key in enumerate(("wait_ms", "transfer_ms"))}


def collect_run(run_dir: Path, spec: RunSpec, warmup: int) -> RunResult:
    values = per_step_values(read_rank_rows(run_dir), warmup)
    step, parts, comm, overlap, mem, slowest = summarize_steps(values)
    tokens = spec.global_batch_tokens
    return RunResult(spec.name, spec.backend, spec.world, spec.layout.name, spec.batch_size, tokens, len(values),
                     step, parts, comm, overlap, mem, tokens / (step.median / 1e3), spec.modes, slowest,
                     measured_comm_split(run_dir, warmup))


# ----------------------------------------------------------------------------------------------
# Efficiency and the gap to ideal


def efficiency(mode: str, t1: float, tn: float, n: int) -> dict[str, float]:
    """speed-up and efficiency at N from median step times (docs/scaling.md). strong: same global batch, so
    speed-up = T1/TN, ideal N, E = T1/(N·TN). weak: N times the work per step, so speed-up (in
    throughput) = N·T1/TN, E = T1/TN (per-rank throughput at N over at 1)."""
    if mode == "strong":
        return {"speedup": t1 / tn, "efficiency": t1 / (n * tn), "ideal_ms": t1 / n}
    if mode == "weak":
        return {"speedup": n * t1 / tn, "efficiency": t1 / tn, "ideal_ms": t1}
    raise ConfigError(f"unknown mode {mode!r}")


def attribute_gap(mode: str, base: dict[str, float], run: dict[str, float], n: int) -> dict[str, float]:
    """Split T_N - ideal into parts (module docstring). base, run: medians of PARTS (summing to the step)."""
    share = 1.0 / n if mode == "strong" else 1.0
    return {p: run[p] - share * base[p] for p in PARTS}


def analyse(results: list[RunResult], modes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (mode, backend, world): step, speed-up, efficiency, the gap and its parts."""
    rows = []
    for mode in modes:
        for backend in sorted({r.backend for r in results}):
            mine = sorted((r for r in results if r.backend == backend and mode in r.modes), key=lambda r: r.world)
            base = next((r for r in mine if r.world == 1), None)
            if base is None:
                continue
            for r in mine:
                e = efficiency(mode, base.step.median, r.step.median, r.world)
                gap = attribute_gap(mode, base.parts, r.parts, r.world)
                rows.append({"mode": mode, "backend": backend, "world": r.world, "layout": r.layout, "run": r.name,
                             "step_ms": r.step.median, "step_p25": r.step.p25, "step_p75": r.step.p75,
                             "slowest_step_ms": r.slowest_step_ms, **e,
                             "gap_ms": r.step.median - e["ideal_ms"], "gap": gap, "parts": r.parts,
                             "comm_ms": r.comm_ms, "overlap": r.overlap, "tokens_per_s": r.tokens_per_s,
                             "mem_peak_mb": r.mem_peak_mb, "batch_size": r.batch_size,
                             # measured, not a part of the gap (a wait hidden behind compute costs nothing)
                             "arrival_wait_ms": (r.comm_split or {}).get("wait_ms"),
                             "transfer_ms": (r.comm_split or {}).get("transfer_ms")})
    return rows
