"""Phase timing inside one optimizer step: data, forward, backward, grad_sync, clip, optimizer, ...

    timer.begin()
    with timer.phase("forward"): ...
    with timer.phase("backward"): ...
    start, end, phases = timer.end()       # phases: [(name, start_s, end_s), ...] on the host clock

On CPU a phase is host `perf_counter` time (the host does the compute). On CUDA the host only
enqueues kernels, so phases are CUDA events on the current stream, mapped onto the host clock through
a reference event recorded at `begin` (the trainer synchronises before a step starts, so the GPU is
idle and the reference event's time is the host's) and read at `end` (after the trainer's final
synchronize, so reading them does not stall anything).

While the profiler is on, each phase is also a `record_function` range named `phase:<name>`, so it
appears in the Chrome trace around the torch ops it contains.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
from torch.autograd.profiler import record_function

# Phases in which this rank computes. Communication inside them (a blocking collective, e.g. FSDP's
# all-gather on CPU) is subtracted from compute by the caller, using the recorder's blocking records.
COMPUTE_PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad")


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.profiler_ranges = False  # set while torch.profiler runs
        self._phases: list[tuple[str, object, object]] = []
        self.start_s = 0.0
        self._ref_event = None

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def begin(self) -> None:
        self._phases = []
        self.start_s = time.perf_counter()
        if self.cuda:
            self._ref_event = torch.cuda.Event(enable_timing=True)
            self._ref_event.record()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = self._now()
        if self.profiler_ranges:
            with record_function(f"phase:{name}"):
                yield
        else:
            yield
        self._phases.append((name, start, self._now()))

    @property
    def cuda_ref(self) -> Optional[tuple[object, float]]:
        """(event, host time) for mapping CUDA events onto the host clock (None on CPU)."""
        return (self._ref_event, self.start_s) if self.cuda else None

    def _host(self, t) -> float:
        if self.cuda:
            return self.start_s + self._ref_event.elapsed_time(t) / 1e3
        return t

    def end(self) -> tuple[float, float, list[tuple[str, float, float]]]:
        """(step start, step end, phases) in host seconds. On CUDA call it after a synchronize."""
        phases = [(name, self._host(s), self._host(e)) for name, s, e in self._phases]
        end = time.perf_counter()
        if phases:
            end = max(end, max(e for _, _, e in phases))
        return self.start_s, end, phases
