"""Interval arithmetic for one step's timeline: how much communication ran with no compute beside it.

Times are seconds on one clock (the host's `time.perf_counter`, or CUDA event times mapped onto it).
An interval is a (start, end) pair with start <= end; lists of intervals may overlap and be unsorted.

    compute   [====fwd====][=======bwd=======]      [opt]
    comm                        [ar b0]  [ar b1][ar b2]
    exposed                                    [=]           <- comm minus compute
    overlap = 1 - exposed / total comm

Definitions (docs/instrumentation.md):
- total communication = measure of the UNION of collective intervals (two collectives in flight at
  the same time count once: the wire was busy for that long, not twice as long);
- exposed communication = measure of (union of comm) minus (union of compute);
- overlap ratio = 1 - exposed / total (None when the step had no communication).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

Interval = tuple[float, float]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping intervals covering the same points; empty intervals dropped."""
    merged: list[Interval] = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def measure(intervals: Iterable[Interval]) -> float:
    """Total length covered (overlaps counted once)."""
    return sum(e - s for s, e in union(intervals))


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """Points in both a and b (as a union of intervals)."""
    ua, ub = union(a), union(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(ua) and j < len(ub):
        start, end = max(ua[i][0], ub[j][0]), min(ua[i][1], ub[j][1])
        if end > start:
            out.append((start, end))
        if ua[i][1] < ub[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """Points in a and not in b."""
    out: list[Interval] = []
    ub = union(b)
    for start, end in union(a):
        cursor = start
        for bs, be in ub:
            if be <= cursor or bs >= end:
                continue
            if bs > cursor:
                out.append((cursor, bs))
            cursor = max(cursor, be)
            if cursor >= end:
                break
        if cursor < end:
            out.append((cursor, end))
    return out


def clip(intervals: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo)]


@dataclass(frozen=True)
class Breakdown:
    """Compute vs communication over one window (a step, or a profiled stretch of a trace). Seconds."""

    window: float
    compute: float
    comm: float
    exposed: float  # comm with no compute running
    overlapped: float  # comm and compute at the same time
    idle: float  # neither compute nor comm (data loading, Python, waiting)

    @property
    def overlap(self) -> Optional[float]:
        return 1.0 - self.exposed / self.comm if self.comm > 0 else None


def breakdown(compute: Sequence[Interval], comm: Sequence[Interval], window: Interval) -> Breakdown:
    lo, hi = window
    compute_u, comm_u = union(clip(compute, lo, hi)), union(clip(comm, lo, hi))
    compute_t, comm_t = measure(compute_u), measure(comm_u)
    overlapped = measure(intersect(compute_u, comm_u))
    busy = compute_t + comm_t - overlapped
    return Breakdown(
        window=hi - lo, compute=compute_t, comm=comm_t, exposed=comm_t - overlapped, overlapped=overlapped,
        idle=max(0.0, (hi - lo) - busy),
    )
