"""Phase timing inside one optimizer step: data, forward, backward, grad_sync, clip, optimizer, ...

    timer.begin()
    with timer.phase("forward"): ...
    with timer.phase("backward"): ...
    start, end, phases = timer.end()       # phases: [(name, start_s, end_s), ...] on the host clock

On CPU a phase is host `perf_counter` time (the host does the compute). On CUDA the host only
enqueues kernels, so phases are CUDA events on the current stream (through a device clock,
`device_clock.py`). `end` is called after the trainer's end-of-step synchronize: it records a reference
event on the idle GPU and maps every event onto the host clock backwards from it
(host = ref_host - elapsed(event, ref)). No synchronize is needed at the start of a step: the host may
begin the next step while the GPU still works (it does not here, the step ends with a synchronize),
and the mapping holds all the same.

While the profiler is on, each phase is also a `record_function` range named `phase:<name>`, so it
appears in the Chrome trace around the torch ops it contains.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
from torch.autograd.profiler import record_function

from gptdist.instrument.device_clock import CudaClock, host_time, reference

# Phases in which this rank computes. Communication inside them (a blocking collective, e.g. FSDP's
# all-gather on CPU) is subtracted from compute by the caller, using the recorder's blocking records.
COMPUTE_PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad")


class StepTimer:
    def __init__(self, device: torch.device, clock=None):
        self.cuda = device.type == "cuda"
        self.clock = clock if clock is not None else (CudaClock() if self.cuda else None)
        self.now = self.clock.host_now if self.clock is not None else time.perf_counter
        self.profiler_ranges = False  # set while torch.profiler runs
        self._phases: list[tuple[str, object, object]] = []
        self.start_s = 0.0
        self.cuda_ref: Optional[tuple[object, float]] = None  # set by `end` on CUDA: (event, host time)

    def _stamp(self):
        return self.clock.record() if self.cuda else self.now()

    def begin(self) -> None:
        self._phases = []
        self.cuda_ref = None
        self.start_s = self.now()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = self._stamp()
        if self.profiler_ranges:
            with record_function(f"phase:{name}"):
                yield
        else:
            yield
        self._phases.append((name, start, self._stamp()))

    def end(self) -> tuple[float, float, list[tuple[str, float, float]]]:
        """(step start, step end, phases) in host seconds. On CUDA call it after a synchronize; it sets
        `cuda_ref` for mapping the step's other events (collectives, marks)."""
        if self.cuda:
            self.cuda_ref = reference(self.clock)
            phases = [(name, host_time(self.clock, s, self.cuda_ref), host_time(self.clock, e, self.cuda_ref))
                      for name, s, e in self._phases]
        else:
            phases = list(self._phases)
        end = self.now()
        if phases:
            end = max(end, max(e for _, _, e in phases))
        return self.start_s, end, phases
