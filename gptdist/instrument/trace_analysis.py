"""Compute vs communication from a Chrome trace, per rank: what HolisticTraceAnalysis reports for GPU
traces, but also for CPU/gloo traces, which have no GPU kernels for HTA to read.

    analyze_trace(load_trace("traces/run/merged.json"))  ->  {rank: TraceBreakdown}

Which events count as what:
- GPU traces (kernels present): compute = GPU kernels whose name does not contain "nccl";
  communication = NCCL kernels. (HTA's definition.)
- CPU traces: compute = the trainer's `phase:<name>` ranges for the compute phases (forward, backward,
  clip, optimizer, zero_grad) minus the time the host sat in a blocking collective inside them;
  communication = the recorder's `comm:<op> <label>` slices.
Window = the union of the profiler's `ProfilerStep#N` ranges of that rank. Within it:
overlapped = comm and compute at the same time; exposed = comm - overlapped;
idle = window - (compute union comm).

In a rank trace every event belongs to the rank named in its "gptdist" metadata; in a merged trace
(see profiler.merge_traces) pid = rank.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from gptdist.instrument.steptimer import COMPUTE_PHASES
from gptdist.instrument.timeline import breakdown, subtract, union

STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")


@dataclass
class TraceBreakdown:
    rank: int
    steps: int
    source: str  # "gpu_kernels" or "cpu_ranges"
    window_ms: float
    compute_ms: float
    comm_ms: float
    overlapped_ms: float
    exposed_ms: float
    idle_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(e: dict[str, Any]) -> tuple[float, float]:
    start = float(e["ts"])
    return start / 1e3, (start + float(e.get("dur", 0.0))) / 1e3  # ms


def analyze_trace(trace: dict[str, Any]) -> dict[int, TraceBreakdown]:
    meta = trace.get("gptdist", {})
    merged = bool(meta.get("merged"))
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for e in trace.get("traceEvents", []):
        if e.get("ph") != "X" or "ts" not in e:
            continue
        rank = int(e["pid"]) if merged else int(meta.get("rank", 0))
        by_rank.setdefault(rank, []).append(e)

    results = {}
    for rank, events in sorted(by_rank.items()):
        steps = [e for e in events if STEP_RE.match(str(e.get("name", "")))]
        if not steps:
            continue
        window = union(_interval(e) for e in steps)
        kernels = [e for e in events if e.get("cat") == "kernel"]
        if kernels:
            source = "gpu_kernels"
            comm = [_interval(e) for e in kernels if "nccl" in e["name"].lower()]
            compute = [_interval(e) for e in kernels if "nccl" not in e["name"].lower()]
        else:
            source = "cpu_ranges"
            comm_events = [e for e in events if str(e.get("name", "")).startswith("comm:")]
            comm = [_interval(e) for e in comm_events]
            blocking = [_interval(e) for e in comm_events if e.get("args", {}).get("blocking")]
            phases = [_interval(e) for e in events if str(e.get("name", "")).removeprefix("phase:") in COMPUTE_PHASES
                      and str(e.get("name", "")).startswith("phase:")]
            compute = subtract(phases, blocking)
        # One breakdown over the whole span, with the gaps between profiled steps counted out of the window.
        lo, hi = window[0][0], window[-1][1]
        gaps = subtract([(lo, hi)], window)
        b = breakdown(subtract(compute, gaps), subtract(comm, gaps), (lo, hi))
        gap_ms = sum(e - s for s, e in gaps)
        results[rank] = TraceBreakdown(
            rank=rank, steps=len(steps), source=source, window_ms=b.window - gap_ms, compute_ms=b.compute,
            comm_ms=b.comm, overlapped_ms=b.overlapped, exposed_ms=b.exposed, idle_ms=max(0.0, b.idle - gap_ms),
        )
    return results


def profiled_steps(trace: dict[str, Any]) -> list[int]:
    """Trainer step numbers the trace recorded (from the `gptdist:clock step=N` markers)."""
    steps = set()
    for e in trace.get("traceEvents", []):
        m = re.match(r"^gptdist:clock step=(\d+)$", str(e.get("name", "")))
        if m:
            steps.add(int(m.group(1)))
    return sorted(steps)


def live_totals(run_dir, ranks, steps) -> dict[int, dict[str, float]]:
    """The live recorder's numbers for the same ranks and steps (ranks/rank{r}/steps.jsonl), summed,
    under the trace's column names. The window differs by design: the live step runs from the
    step's first to its last instruction, a ProfilerStep from one profiler.step() to the next
    (logging included), so only idle time differs by more than clock noise."""
    import json
    from pathlib import Path

    out = {}
    for rank in ranks:
        path = Path(run_dir) / "ranks" / f"rank{rank}" / "steps.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["step"] in set(steps)]
        if not rows:
            continue
        total = lambda key: sum(r[key] for r in rows)  # noqa: E731
        out[rank] = {"window_ms": total("step_ms"), "compute_ms": total("time/compute_ms"), "comm_ms": total("comm/total_ms"),
                     "overlapped_ms": total("comm/overlapped_ms"), "exposed_ms": total("comm/exposed_ms"),
                     "idle_ms": total("time/idle_ms")}
    return out
