"""Wait versus transfer: how much of a collective's time, as one rank sees it, was waiting for the others.

A collective cannot move data before the last rank has arrived (issued it; on CUDA: its stream reached
it). So for each collective and each rank r:

    wait_r     = last arrival - arrival_r       (0 for the last rank to arrive: arrival skew)
    transfer_r = end_r - last arrival           (the data movement, once everyone was there)

Arrival times from different ranks are compared on one clock: each rank counts from its exit of the
start-up clock-sync barrier (`Instrumentation`), which all ranks leave at nearly the same moment. The
offset between two ranks' clocks is thus taken as zero at that barrier; its error is the barrier's exit
skew (tens of microseconds on one host, more across nodes) and the clocks' drift since (ppm).
Collectives are matched across ranks by (step, op, label, occurrence in the step): every rank issues
the same collectives in the same order (a requirement of collectives, not an assumption here).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

Arrival = tuple[int, str, str, float, float]  # (step, op, label, arrival_ms, end_ms) since the clock sync


def arrivals(records, t0: float) -> list[Arrival]:
    """This rank's timed collectives of a step, in issue order, as plain tuples (cheap to gather)."""
    return [(r.step, r.op, r.label, (r.issue_s - t0) * 1e3, (r.end_s - t0) * 1e3)
            for r in records if r.end_s is not None and r.op != "barrier"]


def split(per_rank: dict[int, list[Arrival]]) -> list[dict[str, Any]]:
    """One row per collective seen by every rank: {step, op, label, last_rank, wait_ms: {rank: ms},
    transfer_ms: {rank: ms}}."""
    keyed: dict[tuple, dict[int, tuple[float, float]]] = defaultdict(dict)
    for rank, rows in per_rank.items():
        seen: dict[tuple, int] = defaultdict(int)
        for step, op, label, arrival, end in rows:
            k = (step, op, label)
            keyed[(*k, seen[k])][rank] = (arrival, end)
            seen[k] += 1
    out = []
    for (step, op, label, _), times in keyed.items():
        if len(times) != len(per_rank):
            continue  # not seen by every rank (e.g. left out of a rank's capped history)
        last_rank = max(times, key=lambda r: times[r][0])
        last = times[last_rank][0]
        out.append({"step": step, "op": op, "label": label, "last_rank": last_rank,
                    "wait_ms": {r: last - a for r, (a, _) in times.items()},
                    "transfer_ms": {r: max(0.0, e - last) for r, (_, e) in times.items()}})
    return out


def per_step_totals(rows: list[dict[str, Any]]) -> dict[int, dict[int, tuple[float, float]]]:
    """rank -> step -> (wait_ms, transfer_ms) summed over the step's collectives."""
    totals: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for row in rows:
        for rank, wait in row["wait_ms"].items():
            totals[rank][row["step"]][0] += wait
            totals[rank][row["step"]][1] += row["transfer_ms"][rank]
    return {rank: {step: (w, t) for step, (w, t) in steps.items()} for rank, steps in totals.items()}
