"""A simulated GPU for testing the CUDA measurement paths on a CPU-only machine.

It models what the instrumentation relies on, nothing more:
- one host clock (`now`, seconds) that the test advances by hand;
- streams: each has `busy_until`, the device time its queued work finishes. A kernel launched at
  host time `now` starts at max(now, busy_until): the host returns at once and runs ahead;
- events: `record()` on the current stream stamps the time the stream reaches it (its busy_until);
  `elapsed_ms(a, b)` = (b - a) in ms; `wait(e)` moves the host to e's time;
- NCCL: `collective(seconds, group)` runs on the group's own stream after the issuing stream's
  point (as ProcessGroupNCCL does), returns a FakeWork whose `_get_duration()` gives NCCL's own
  timing in ms, or raises like torch 2.13 does when TORCH_NCCL_ENABLE_TIMING is off. `wait()` makes
  the current stream wait (the host does not block), as NCCL's Work.wait does.

Device and host share one timeline here, so mapped times can be checked against the truth exactly.
"""

from __future__ import annotations

import contextlib


class FakeEvent:
    def __init__(self, t: float):
        self.t = t

    def __repr__(self):
        return f"FakeEvent({self.t:.6f})"


class FakeWork:
    def __init__(self, gpu: "FakeGPU", start: float, end: float, timing: bool):
        self.gpu, self.start, self.end, self.timing = gpu, start, end, timing

    def _get_duration(self) -> float:
        if not self.timing:
            # torch 2.13's ProcessGroupNCCL::WorkNCCL::getDuration: TORCH_CHECK(timingEnabled_, ...)
            raise RuntimeError("getDuration can only be called if timing is enabled (TORCH_NCCL_ENABLE_TIMING)")
        return (self.end - self.start) * 1e3

    def is_completed(self) -> bool:
        return self.gpu.now >= self.end

    def wait(self) -> bool:
        stream = self.gpu.current
        self.gpu.busy[stream] = max(self.gpu.busy.get(stream, 0.0), self.end)
        return True


class FakeGPU:
    """Also the device clock the recorder and the step timer take (gptdist/instrument/device_clock.py)."""

    def __init__(self, nccl_timing: bool = True):
        self.now = 0.0
        self.busy: dict[str, float] = {"default": 0.0}
        self.current = "default"
        self.nccl_timing = nccl_timing

    # --- the device-clock interface --------------------------------------------------------------
    def host_now(self) -> float:
        return self.now

    def record(self, stream: str | None = None) -> FakeEvent:
        s = stream or self.current
        return FakeEvent(max(self.busy.get(s, 0.0), self.now))

    def rerecord(self, event: FakeEvent) -> FakeEvent:
        event.t = self.record().t
        return event

    def elapsed_ms(self, start: FakeEvent, end: FakeEvent) -> float:
        return (end.t - start.t) * 1e3

    def wait(self, event: FakeEvent) -> None:
        self.now = max(self.now, event.t)

    def synchronize(self) -> None:
        self.now = max([self.now, *self.busy.values()])

    # --- what the test drives --------------------------------------------------------------------
    def host(self, seconds: float) -> None:
        """The host works (Python, launching) for `seconds`."""
        self.now += seconds

    def kernel(self, seconds: float, stream: str | None = None) -> None:
        """Enqueue a kernel on a stream; the host returns at once."""
        s = stream or self.current
        self.busy[s] = max(self.busy.get(s, 0.0), self.now) + seconds

    def collective(self, seconds: float, group: str = "world") -> FakeWork:
        """An NCCL collective issued from the current stream: it runs on the group's stream after the
        issuing stream's queued work and after the group's previous collectives."""
        nccl = f"nccl:{group}"
        start = max(self.record().t, self.busy.get(nccl, 0.0))
        self.busy[nccl] = start + seconds
        return FakeWork(self, start, start + seconds, self.nccl_timing)

    @contextlib.contextmanager
    def stream(self, name: str):
        previous, self.current = self.current, name
        self.busy.setdefault(name, 0.0)
        try:
            yield
        finally:
            self.current = previous
