"""The end-of-run table: per rank and across ranks, median and p95 of step, compute, comm, exposed comm
and overlap, and the slowest rank.

The first `skip` steps of every rank are left out (start-up: allocator growth, first-touch of
buffers, torch.compile), as comm_bench leaves out its warm-up calls.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

# (row key, column title): the per-step values each rank keeps for the summary
COLUMNS = [("step_ms", "step ms"), ("compute_ms", "compute ms"), ("comm_ms", "comm ms"),
           ("exposed_ms", "exposed ms"), ("overlap", "overlap"),
           # collective time waiting for the last rank to arrive / moving data after (instrument/arrival.py)
           ("wait_ms", "wait ms"), ("transfer_ms", "transfer ms")]


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": len(rows)}
    for key, _ in COLUMNS:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = {"median": percentile(values, 50), "p95": percentile(values, 95)}
    return out


def summarize(rows_by_rank: dict[int, list[dict[str, Any]]], skip: int = 1) -> dict[str, Any]:
    """rows_by_rank: rank -> per-step rows with the COLUMNS keys (and "step")."""
    kept = {rank: rows[skip:] if len(rows) > skip else rows for rank, rows in rows_by_rank.items()}
    per_rank = {rank: _stats(rows) for rank, rows in sorted(kept.items())}
    all_rows = [r for rows in kept.values() for r in rows]
    slowest = max(per_rank, key=lambda r: per_rank[r]["step_ms"]["median"] or 0.0) if per_rank else None
    return {"skipped_first_steps": skip, "per_rank": per_rank, "all_ranks": _stats(all_rows), "slowest_rank": slowest}


def _fmt(value: Optional[float], key: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if key == "overlap" else f"{value:.1f}"


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per rank and one for all ranks; each cell 'median / p95'."""
    header = ["rank", "steps"] + [title + " (med/p95)" for _, title in COLUMNS]
    lines = []

    def row(name: str, stats: dict[str, Any]) -> list[str]:
        return [name, str(stats["steps"])] + [f"{_fmt(stats[k]['median'], k)} / {_fmt(stats[k]['p95'], k)}" for k, _ in COLUMNS]

    body = [row(str(rank), stats) for rank, stats in summary["per_rank"].items()]
    body.append(row("all", summary["all_ranks"]))
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    for cells in [header] + body:
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"slowest rank (median step): {summary['slowest_rank']}; first {summary['skipped_first_steps']} "
                 "step(s) of each rank left out")
    return "\n".join(lines)
