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
import time
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist
from torch.autograd.profiler import record_function

from gptdist.dist import DistContext
from gptdist.instrument.profiler import CLOCK_MARKER, StepProfiler, merge_traces, load_trace, write_trace
from gptdist.instrument.recorder import CollectiveRecorder, NullRecorder, blocking_intervals, comm_intervals
from gptdist.instrument.steptimer import COMPUTE_PHASES, StepTimer
from gptdist.instrument.summary import format_table, summarize
from gptdist.instrument.telemetry import Telemetry
from gptdist.instrument.timeline import breakdown, subtract

_NULL = contextlib.nullcontext()


class Instrumentation:
    def __init__(self, cfg, ctx: DistContext, run_dir: Path, log: Optional[logging.Logger] = None):
        self.ctx = ctx
        self.log = log or logging.getLogger("gptdist")
        self.enabled = cfg.instrument.enabled
        self.skip = cfg.instrument.summary_skip_steps
        self.rank_dir = run_dir / "ranks" / f"rank{ctx.rank}"
        if self.enabled:
            self.rank_dir.mkdir(parents=True, exist_ok=True)
        if self.enabled and cfg.instrument.collectives:
            self.recorder: Any = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size, self.rank_dir / "collectives.jsonl")
        else:
            self.recorder = NullRecorder()
        self.timer = StepTimer(ctx.device)
        self.telemetry = Telemetry(ctx.device) if self.enabled else None
        self._steps_file = open(self.rank_dir / "steps.jsonl", "a", buffering=1 << 16) if self.enabled else None
        self.rows: list[dict[str, Any]] = []  # per-step values kept for the summary

        # Clock sync: every rank leaves this barrier at (nearly) the same moment; the merged trace
        # aligns the ranks' clocks on it and collectives.jsonl times count from it.
        if ctx.has_group and ctx.world_size > 1:
            with self.recorder.timed("barrier", label="clock_sync", nbytes=0):
                dist.barrier()
        self.sync_s = time.perf_counter()
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
        records = self.recorder.collect(self.timer.cuda_ref)
        start, end, phases = self.timer.end()
        if self.profiler is not None:
            self._recent.append(records)
        if not self.enabled:
            return {}
        values: dict[str, Any] = {}
        for name, s, e in phases:
            values[f"time/{name}_ms"] = values.get(f"time/{name}_ms", 0.0) + (e - s) * 1e3
        compute_phases = [(name, s, e) for name, s, e in phases if name in COMPUTE_PHASES]
        grads_done = self.recorder.take_last_grad_ready()
        if grads_done is not None and not self.recorder.cuda:
            # DDP waits for its last bucket inside backward: after this rank's last gradient was computed,
            # backward only waited. (Host clock: on CUDA autograd's thread runs ahead of the GPU, so the
            # cut is made on the CPU only.)
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
        values.update(self.telemetry.sample())
        step = self.recorder.step if self.recorder.enabled else len(self.rows) + 1
        self.rows.append({"step": step, "step_ms": step_ms, "compute_ms": values["time/compute_ms"],
                          "comm_ms": values["comm/total_ms"], "exposed_ms": values["comm/exposed_ms"],
                          "overlap": values["comm/overlap"]})
        # The step's timeline (ms from the step's start), for the scaling simulator (gptdist/studies/simulator/):
        # phases in order, and when each gradient bucket was ready (manual backend: its last gradient arrived;
        # ddp: the reducer handed it to the comm hook).
        timeline = {
            "phases": [[name, round((s - start) * 1e3, 4), round((e - start) * 1e3, 4)] for name, s, e in phases],
            "marks": [[name, index, nbytes, round((t - start) * 1e3, 4)] for name, index, nbytes, t in self.recorder.take_marks()],
        }
        # When the step ended, as Unix time: the interval between two steps' ends is the step period, what
        # throughput sees (it includes the work between steps, and it does not depend on where a rank's
        # step boundary fell; gptdist/studies/scaling/).
        end_unix_s = time.time() - (time.perf_counter() - end)
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
            if self.ctx.has_group and self.ctx.world_size > 1:
                gathered: list[Any] = [None] * self.ctx.world_size
                dist.all_gather_object(gathered, (self.ctx.rank, self.rows))
                rows_by_rank = dict(gathered)
            if self.ctx.is_main:
                result = summarize(rows_by_rank, self.skip)
                self.log.info("step time breakdown (ms; median / p95 over steps):\n" + format_table(result))
        return result

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
