"""torch.profiler on demand, one Chrome trace per rank, and a merged trace of all ranks.

    --profile.enabled=true --profile.wait=1 --profile.warmup=1 --profile.active=3

writes traces/<run>/rank{r}.json (one per rank) and traces/<run>/merged.json (rank 0, at the end of
the run): open either in https://ui.perfetto.dev (see traces/README.md).

What a rank's trace holds, beyond torch's own ops:
- `phase:<name>` ranges (record_function) around data, forward, backward, grad_sync, clip, loss_reduce,
  optimizer, zero_grad: torch's ops nest inside them.
- one `comm:<op> <label>` slice per collective (e.g. `comm:all_reduce bucket=3`), on a thread row of its
  own ("collectives (gptdist recorder)"), from the recorder: an async collective runs on gloo's or
  NCCL's threads/streams while the main thread computes, so a range around the issuing call would
  only show the launch. Args carry bytes, dtype, busbw, blocking.
- `gptdist:clock step=N` markers (one per step, at its start) that tie the recorder's host clock (perf_counter) to the
  profiler's clock: offset = trace ts - perf_counter, the median over the markers.
- a top-level "gptdist" object: rank, world size, the clock offset and `clock_sync_us`, the time (on
  this trace's clock) at which this rank left the start-up barrier.

Merging: each rank's events are shifted so that every rank's `clock_sync_us` lands on rank 0's (the
barrier exits are simultaneous to within the barrier's own skew, tens of microseconds on gloo; on one
host the clocks are the same anyway), every event of rank r gets pid r (one process row per rank,
named "rank r"), and thread ids are renumbered per rank so CPU threads and GPU streams stay apart.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

CLOCK_MARKER = "gptdist:clock"
COMM_TID = 990001  # thread row for the recorder's collectives
COMM_THREAD_NAME = "collectives (gptdist recorder)"


def load_trace(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    if isinstance(trace, list):  # the JSON Array Format is valid Chrome trace JSON too
        trace = {"traceEvents": trace}
    return trace


def write_trace(trace: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    tmp = path.with_name(path.name + ".tmp")
    with opener(tmp, "wt") as f:
        json.dump(trace, f)
    os.replace(tmp, path)


def clock_offset_us(trace: dict[str, Any], marker_times_s: list[float]) -> float:
    """trace ts (us) - perf_counter (us), from the `gptdist:clock` markers. The trace holds the last
    k markers emitted (those of the recorded steps)."""
    ts = sorted(e["ts"] for e in trace["traceEvents"] if str(e.get("name", "")).startswith(CLOCK_MARKER) and e.get("ph") == "X")
    if not ts:
        raise ValueError("no gptdist:clock markers in the trace: cannot align it with the recorder")
    perf = sorted(marker_times_s)[-len(ts):]
    return statistics.median(float(t) - p * 1e6 for t, p in zip(ts, perf))


def annotate(trace: dict[str, Any], rank: int, world_size: int, marker_times_s: list[float], records: Iterable,
             sync_s: float) -> dict[str, Any]:
    """Add the recorder's collectives and the gptdist metadata to one rank's exported trace."""
    offset = clock_offset_us(trace, marker_times_s)
    events = trace["traceEvents"]
    markers = [e for e in events if str(e.get("name", "")).startswith(CLOCK_MARKER) and e.get("ph") == "X"]
    pid = markers[0]["pid"]
    first = min(e["ts"] for e in markers)
    events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": COMM_TID, "args": {"name": COMM_THREAD_NAME}})
    for r in records:
        if r.start_s is None or r.end_s is None or r.start_s * 1e6 + offset < first:
            continue
        events.append({
            "ph": "X", "cat": "gptdist_comm", "name": f"comm:{r.op} {r.label}".rstrip(), "pid": pid, "tid": COMM_TID,
            "ts": r.start_s * 1e6 + offset, "dur": max(0.0, (r.end_s - r.start_s) * 1e6),
            "args": {"bytes": r.bytes, "dtype": r.dtype, "group_size": r.group_size, "step": r.step,
                     "blocking": r.blocking, "issue_ts": r.issue_s * 1e6 + offset},
        })
    trace["gptdist"] = {"rank": rank, "world_size": world_size, "perf_to_trace_offset_us": offset,
                        "clock_sync_us": sync_s * 1e6 + offset}
    return trace


def merge_traces(rank_traces: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One timeline: pid = rank, clocks aligned at the start-up barrier (see module docstring)."""
    ref = rank_traces[min(rank_traces)]["gptdist"]["clock_sync_us"]
    merged: list[dict[str, Any]] = []
    for rank in sorted(rank_traces):
        trace = rank_traces[rank]
        shift = ref - trace["gptdist"]["clock_sync_us"]
        tids: dict[tuple[Any, Any], int] = {}
        thread_names: dict[tuple[Any, Any], str] = {}
        process_names: dict[Any, str] = {}
        for e in trace["traceEvents"]:
            if e.get("ph") == "M" and e.get("name") == "thread_name":
                thread_names[(e.get("pid"), e.get("tid"))] = e.get("args", {}).get("name", "")
            if e.get("ph") == "M" and e.get("name") == "process_name":
                process_names[e.get("pid")] = e.get("args", {}).get("name", "")
        merged.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        merged.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
        for e in trace["traceEvents"]:
            if e.get("ph") == "M" and e.get("name") in ("process_name", "process_labels", "process_sort_index",
                                                          "thread_name", "thread_sort_index"):
                continue  # replaced by one process per rank and renumbered threads
            key = (e.get("pid"), e.get("tid"))
            if key not in tids:
                tids[key] = len(tids) + 1
            out = dict(e)
            out["pid"], out["tid"] = rank, tids[key]
            if "ts" in out:
                out["ts"] = float(out["ts"]) + shift
            if "id" in out and isinstance(out["id"], int):
                out["id"] = out["id"] + rank * (1 << 40)  # flow ids must stay unique across ranks
            merged.append(out)
        for (pid, tid), new_tid in tids.items():
            # Keep where the row came from: "python3 / thread 12" on CPU, "GPU 0 / stream 7" on CUDA.
            name = thread_names.get((pid, tid)) or f"thread {tid}"
            if process_names.get(pid):
                name = f"{process_names[pid]} / {name}"
            merged.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": new_tid, "args": {"name": name}})
    world = max(t["gptdist"]["world_size"] for t in rank_traces.values())
    return {"traceEvents": merged, "displayTimeUnit": "ms",
            "gptdist": {"merged": True, "ranks": sorted(rank_traces), "world_size": world}}


class StepProfiler:
    """torch.profiler with a wait/warmup/active schedule; the trainer calls `step()` after each
    optimizer step. `annotations()` returns (clock marker perf times, recent collective records)."""

    def __init__(self, pcfg, device: torch.device, rank: int, world_size: int, trace_dir: Path,
                 sync_s: float, annotations: Callable[[], tuple[list[float], list]]):
        self.rank, self.world_size = rank, world_size
        self.trace_dir = trace_dir
        self.path = trace_dir / f"rank{rank}.json"
        self.sync_s = sync_s
        self.annotations = annotations
        self.written: Optional[Path] = None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=pcfg.wait, warmup=pcfg.warmup, active=pcfg.active, repeat=1),
            on_trace_ready=self._export,
            record_shapes=False,
            with_stack=False,
        )
        self.prof.start()
        self._running = True

    def step(self) -> None:
        if self._running:
            self.prof.step()

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.prof.stop()  # exports if it stopped inside the active window

    def _export(self, prof) -> None:
        raw = self.path.with_name(self.path.name + ".raw")
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(raw))
        trace = load_trace(raw)
        raw.unlink()
        markers, records = self.annotations()
        annotate(trace, self.rank, self.world_size, markers, records, self.sync_s)
        write_trace(trace, self.path)
        self.written = self.path
