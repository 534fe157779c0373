"""The one place the instrumentation reads the GPU's clock: CUDA events.

A CUDA event recorded on a stream completes when that stream reaches it, so it stamps *device* time
of the work before it, not the moment the host enqueued it (the host runs ahead of the GPU). Events
are mapped onto the host clock through one reference event recorded once the GPU is idle:

    ref = clock.record(); clock.wait(ref); ref_host = clock.host_now()   # after the step's synchronize
    host_time(e) = ref_host - clock.elapsed_ms(e, ref) / 1e3           # e recorded before ref

Recorder and step timer take a clock object with this interface; tests pass a simulated one
(tests/fake_cuda.py: streams that run ahead of the host, NCCL Work with durations), so the CUDA path
runs in CI on machines without a GPU.
"""

from __future__ import annotations

import time

import torch


class CudaClock:
    """CUDA events on the current stream and the host's perf_counter."""

    def host_now(self) -> float:
        return time.perf_counter()

    def record(self):
        """An event on the current stream (the stream the caller's work is queued on)."""
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def rerecord(self, event):
        """Move an existing event to the current stream's present point (no new allocation)."""
        event.record()
        return event

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)

    def wait(self, event) -> None:
        """Block the host until the event completed."""
        event.synchronize()

    def synchronize(self) -> None:
        torch.cuda.synchronize()


def host_time(clock, event, ref) -> float:
    """Host-clock seconds of `event`, given ref = (reference event, host time it completed at)."""
    ref_event, ref_host = ref
    return ref_host - clock.elapsed_ms(event, ref_event) / 1e3


def reference(clock) -> tuple[object, float]:
    """(event, host time) for mapping: call with the GPU idle (after a synchronize)."""
    event = clock.record()
    clock.wait(event)
    return event, clock.host_now()
