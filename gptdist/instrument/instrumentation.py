"""Everything the trainer needs to measure a step, behind one object.

    instr = Instrumentation(cfg, ctx, run_dir, log)      # before the backend is built (it records
    backend = parallelize(model, cfg, ctx, instr.recorder)  # the start-up broadcasts)
    per step:
        instr.begin_step(step)
        with instr.phase("forward"): ...                  # data, forward, backward, grad_sync, ...
        values = instr.end_step(step_ms)                  # after the step's final synchronize
        instr.after_step()                                # advances the profiler
    at the end:  instr.finish() -> summary dict (every rank must call it: it gathers over ranks)

Per step it yields (keys as in metrics.jsonl, TensorBoard and W&B):
    time/<phase>_ms     wall time of each phase, summed over micro-steps
    time/compute_ms     union of the compute phases minus blocking collectives inside them
    time/idle_ms        step time with neither compute nor communication (data, Python, logging)
    comm/total_ms       union of all collective intervals of the step
    comm/exposed_ms     communication with no compute running (timeline.py)
    comm/overlapped_ms  communication hidden behind compute
    comm/overlap        1 - exposed / total
    comm/count, comm/bytes   collectives of this step and their nccl-tests sizes summed
    mem/peak_mb, mem/rss_mb, host/cpu_percent (telemetry.py)
Every rank writes ranks/rank{r}/steps.jsonl (these values) and ranks/rank{r}/collectives.jsonl
(one line per collective); rank 0 also logs them into metrics.jsonl with the step's other values.

instrument.enabled=false turns all of it off: phases become a shared null context manager, the
recorder a NullRecorder whose methods return at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist
from torch.autograd.profiler import record_function

from gptdist.dist import DistContext
from gptdist.instrument import arrival
from gptdist.instrument.profiler import CLOCK_MARKER, StepProfiler, merge_traces, load_trace, write_trace
from gptdist.instrument.recorder import CollectiveRecorder, NullRecorder, blocking_intervals, comm_intervals
from gptdist.instrument.steptimer import COMPUTE_PHASES, StepTimer
from gptdist.instrument.summary import format_table, summarize
from gptdist.instrument.telemetry import Telemetry
from gptdist.instrument.timeline import breakdown, subtract

_NULL = contextlib.nullcontext()


def rank_host() -> dict[str, Any]:
    """This process's host name, its address as the host name resolves (on the emulated cluster: the
    node's address on the cluster subnet, through the node's hosts file) and the cluster node, if any."""
    host = socket.gethostname()
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        addr = None
    return {"host": host, "addr": addr, "cluster_node": os.environ.get("GPTDIST_CLUSTER_NODE")}


class Instrumentation:
    def __init__(self, cfg, ctx: DistContext, run_dir: Path, log: Optional[logging.Logger] = None, clock=None):
        """clock: the device clock CUDA events are read through (None: the real one; tests pass a
        simulated GPU, tests/fake_cuda.py)."""
        self.ctx = ctx
        self.log = log or logging.getLogger("gptdist")
        self.enabled = cfg.instrument.enabled
        self.skip = cfg.instrument.summary_skip_steps
        self.rank_dir = run_dir / "ranks" / f"rank{ctx.rank}"
        if self.enabled:
            self.rank_dir.mkdir(parents=True, exist_ok=True)
            # Which machine this rank ran on: on the emulated cluster, the node (host name and address),
            # so a study can show that its ranks really were on different nodes.
            # world_size: the world this rank trained in (a GPTDIST_FAKE_WORLD rehearsal: the world it played).
            host = {**rank_host(), "world_size": ctx.world_size, "fake_world": ctx.backend == "fake"}
            (self.rank_dir / "host.json").write_text(json.dumps(host) + "\n")
        if self.enabled and cfg.instrument.collectives:
            self.recorder: Any = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size, self.rank_dir / "collectives.jsonl",
                                                     clock=clock)
        else:
            self.recorder = NullRecorder()
        self.timer = StepTimer(ctx.device, clock)
        self.step = 0  # the optimizer step being measured (set by begin_step)
        self.telemetry = Telemetry(ctx.device) if self.enabled else None
        self._steps_file = open(self.rank_dir / "steps.jsonl", "a", buffering=1 << 16) if self.enabled else None
        self.rows: list[dict[str, Any]] = []  # per-step values kept for the summary
        # Arrival and end of every collective (gathered at the end for the wait/transfer split; arrival.py).
        # Capped: a long run keeps its last 20,000 collectives.
        self.arrivals: collections.deque = collections.deque(maxlen=20_000)

        # Clock sync: every rank leaves this barrier at (nearly) the same moment; the merged trace
        # aligns the ranks' clocks on it and collectives.jsonl times count from it.
        if ctx.has_group and ctx.world_size > 1:
            with self.recorder.timed("barrier", label="clock_sync", nbytes=0):
                dist.barrier()
        self.sync_s = self.timer.now()
        if self.recorder.enabled:
            self.recorder.t0 = self.sync_s

        self.profiler: Optional[StepProfiler] = None
        if cfg.profile.enabled:
            p = cfg.profile
            self._markers: collections.deque = collections.deque(maxlen=p.wait + p.warmup + p.active + 2)
            self._recent: collections.deque = collections.deque(maxlen=p.warmup + p.active + 2)  # per-step records
            self.trace_dir = Path(p.dir) / run_dir.name
            self.profiler = StepProfiler(
                p, ctx.device, ctx.rank, ctx.world_size, self.trace_dir, self.sync_s,
                annotations=lambda: (list(self._markers), [r for step in self._recent for r in step]),
            )
            self.timer.profiler_ranges = True
        self._timing = self.enabled or self.profiler is not None

    # --- per step ------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        self.step = step
        if not self._timing:
            return
        self.recorder.set_step(step)
        if self.profiler is not None:
            with record_function(f"{CLOCK_MARKER} step={step}"):
                self._markers.append(time.perf_counter())
        self.timer.begin()

    def phase(self, name: str):
        return self.timer.phase(name) if self._timing else _NULL

    def end_step(self, step_ms: float) -> dict[str, Any]:
        """The step's breakdown (namespaced keys); call after the step's final synchronize."""
        if not self._timing:
            return {}
        start, end, phases = self.timer.end()  # first: on CUDA it sets the reference for mapping events
        records = self.recorder.collect(self.timer.cuda_ref)
        if self.profiler is not None:
            self._recent.append(records)
        if self.recorder.enabled:
            self.arrivals.extend(arrival.arrivals(records, self.recorder.t0))
        if not self.enabled:
            return {}
        values: dict[str, Any] = {}
        for name, s, e in phases:
            values[f"time/{name}_ms"] = values.get(f"time/{name}_ms", 0.0) + (e - s) * 1e3
        compute_phases = [(name, s, e) for name, s, e in phases if name in COMPUTE_PHASES]
        grads_done = self.recorder.take_last_grad_ready(self.timer.cuda_ref)
        if grads_done is not None:
            # DDP waits for its last bucket inside backward: after this rank's last gradient was computed,
            # backward only waited. (On CUDA grads_done is a CUDA event's time: when the GPU computed the
            # last gradient, not when autograd's thread, running ahead, called the hook.)
            compute_phases = [(n, s, min(e, grads_done)) if n == "backward" and s < grads_done < e else (n, s, e)
                              for n, s, e in compute_phases]
        compute = subtract([(s, e) for _, s, e in compute_phases], blocking_intervals(records))
        b = breakdown(compute, comm_intervals(records), (start, end))
        values.update({
            "time/compute_ms": b.compute * 1e3,
            "time/idle_ms": b.idle * 1e3,
            "comm/total_ms": b.comm * 1e3,
            "comm/exposed_ms": b.exposed * 1e3,
            "comm/overlapped_ms": b.overlapped * 1e3,
            "comm/overlap": b.overlap,
            "comm/count": len(records),
            "comm/bytes": sum(r.bytes for r in records),
        })
        untimed = sum(1 for r in records if r.end_s is None)
        if untimed:  # CUDA with NCCL timing off: counted, not timed (recorder.py says why, once)
            values["comm/untimed"] = untimed
        values.update(self.telemetry.sample())
        step = self.step
        self.rows.append({"step": step, "step_ms": step_ms, "compute_ms": values["time/compute_ms"],
                          "comm_ms": values["comm/total_ms"], "exposed_ms": values["comm/exposed_ms"],
                          "overlap": values["comm/overlap"]})
        # The step's timeline (ms from the step's start), for the scaling simulator (gptdist/studies/simulator/):
        # phases in order, and when each gradient bucket was ready (manual backend: its last gradient arrived;
        # ddp: the reducer handed it to the comm hook).
        timeline = {
            "phases": [[name, round((s - start) * 1e3, 4), round((e - start) * 1e3, 4)] for name, s, e in phases],
            "marks": [[name, index, nbytes, round((t - start) * 1e3, 4)] for name, index, nbytes, t in self.recorder.take_marks(self.timer.cuda_ref)],
        }
        # When the step ended, as Unix time: the interval between two steps' ends is the step period, what
        # throughput sees (it includes the work between steps, and it does not depend on where a rank's
        # step boundary fell; gptdist/studies/scaling/).
        end_unix_s = time.time() - (self.timer.now() - end)
        self._steps_file.write(json.dumps({"step": step, "rank": self.ctx.rank, "step_ms": step_ms,
                                           "end_unix_s": round(end_unix_s, 6), **values, "timeline": timeline}) + "\n")
        return values

    def after_step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    # --- end of run ----------------------------------------------------------------------------
    def finish(self) -> Optional[dict[str, Any]]:
        """Stop the profiler and merge traces; gather every rank's rows and print the summary table.
        Collective: every rank calls it. Returns the summary (rank 0) or None."""
        result: Optional[dict[str, Any]] = None
        if self.profiler is not None:
            self.profiler.stop()
            if self.ctx.has_group and self.ctx.world_size > 1:
                dist.barrier()  # every rank's trace is written
            if self.ctx.is_main:
                self._merge_traces()
        if self.enabled:
            rows_by_rank = {self.ctx.rank: self.rows}
            arrivals_by_rank = {self.ctx.rank: list(self.arrivals)}
            if self.ctx.has_group and self.ctx.world_size > 1:
                gathered: list[Any] = [None] * self.ctx.world_size
                dist.all_gather_object(gathered, (self.ctx.rank, self.rows, list(self.arrivals)))
                rows_by_rank = {rank: rows for rank, rows, _ in gathered}
                arrivals_by_rank = {rank: arrivals for rank, _, arrivals in gathered}
            if self.ctx.is_main:
                self._add_wait_transfer(rows_by_rank, arrivals_by_rank)
                result = summarize(rows_by_rank, self.skip)
                result["clock_sync"] = ("ranks' clocks aligned at the start-up barrier's exit (offset taken as 0 "
                                        "there; error = the barrier's exit skew); see instrument/arrival.py")
                self.log.info("step time breakdown (ms; median / p95 over steps):\n" + format_table(result))
        return result

    def _add_wait_transfer(self, rows_by_rank, arrivals_by_rank) -> None:
        """Per step and rank: wait_ms (for the last rank to arrive) and transfer_ms (after it), summed over
        the step's collectives; one line per collective in collectives_split.jsonl (rank 0's run folder)."""
        split = arrival.split(arrivals_by_rank)
        totals = arrival.per_step_totals(split)
        for rank, rows in rows_by_rank.items():
            for row in rows:
                row["wait_ms"], row["transfer_ms"] = totals.get(rank, {}).get(row["step"], (None, None))
        with open(self.rank_dir.parent.parent / "collectives_split.jsonl", "w") as f:
            f.write("".join(json.dumps(row) + "\n" for row in split))

    def _merge_traces(self) -> None:
        paths = {r: self.trace_dir / f"rank{r}.json" for r in range(self.ctx.world_size)}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            self.log.warning(f"profiler: no trace from {', '.join(missing)} (run shorter than profile.wait+warmup?)")
            return
        merged_path = self.trace_dir / "merged.json"
        write_trace(merge_traces({r: load_trace(p) for r, p in paths.items()}), merged_path)
        self.log.info(f"profiler: traces in {self.trace_dir} (rank*.json, merged.json); open in https://ui.perfetto.dev")

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
        self.recorder.close()
        if self._steps_file is not None:
            self._steps_file.close()
            self._steps_file = None
