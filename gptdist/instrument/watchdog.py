"""A host-side stall watchdog for NCCL runs: one line per rank, within the collective timeout.

With gloo a stalled peer makes the waiting collective raise at `dist.timeout_s`, and the trainer turns
that into one line naming rank, step, phase and the collective in flight. With NCCL the host usually
sits in a device-to-host copy (the loss's `.tolist()`) or in DDP's backward while the GPU waits, and
NCCL's own watchdog aborts the process at the timeout with a C++ stack first. So on NCCL a thread
checks, every `poll_s`, whether the loop made progress (a new phase or step); if it did not for
`limit_s` (90% of the timeout, so it speaks first) while a collective is in flight, it:

1. writes NCCL's flight recorder (the last collectives every rank issued, with their states;
   `TORCH_NCCL_TRACE_BUFFER_SIZE`, set by `gptdist.dist.init_distributed`) into the run folder,
   `ranks/rank{r}/nccl_flight_recorder.pkl` (read it with torch's `fr_trace` tool);
2. prints and logs the line, e.g.
   "rank 1: stalled at step 12 during loss all-reduce, waiting on all_reduce loss (0.0 MB) for 540 s
   (timeout 600 s): another rank may have died or stalled; flight recorder in runs/x/ranks/rank1";
3. exits the process (code 1), so torchrun tears the job down instead of waiting for NCCL.

It never fires while no collective is in flight (a long evaluation or checkpoint is not a stall).
Untried on a GPU; the CPU tests drive it with a fake status.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

Status = Callable[[], tuple[int, str, Optional[str]]]  # -> (step, phase, collective in flight or None)


def dump_flight_recorder(path: Path) -> bool:
    """NCCL's flight recorder, pickled, into `path`; False where there is none (no NCCL, buffer off)."""
    try:
        from torch._C._distributed_c10d import _dump_nccl_trace
    except ImportError:
        return False
    try:
        path.write_bytes(_dump_nccl_trace())
        return True
    except Exception:
        return False


class StallWatchdog:
    def __init__(self, rank: int, timeout_s: float, status: Status, rank_dir: Path,
                 log: Callable[[str], None] = print, exit: Callable[[int], None] = os._exit,
                 poll_s: float = 1.0, fraction: float = 0.9):
        self.rank, self.timeout_s, self.status, self.rank_dir = rank, timeout_s, status, rank_dir
        self.limit_s = fraction * timeout_s
        self.log, self.exit, self.poll_s = log, exit, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gptdist-stall-watchdog", daemon=True)
        self.fired: Optional[str] = None

    def start(self) -> "StallWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last, since = None, time.monotonic()
        while not self._stop.wait(self.poll_s):
            step, phase, op = self.status()
            now = time.monotonic()
            if (step, phase) != last or op is None:
                last, since = (step, phase), now
                continue
            if now - since >= self.limit_s:
                self._fire(step, phase, op, now - since)
                return

    def _fire(self, step: int, phase: str, op: str, waited_s: float) -> None:
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        dumped = dump_flight_recorder(self.rank_dir / "nccl_flight_recorder.pkl")
        where = f"; flight recorder in {self.rank_dir}" if dumped else ""
        self.fired = (f"rank {self.rank}: stalled at step {step} during {phase}, waiting on {op} for {waited_s:.0f} s "
                      f"(timeout {self.timeout_s:g} s): another rank may have died or stalled{where}")
        (self.rank_dir / "stall.txt").write_text(self.fired + "\n")
        self.log(self.fired)
        print(self.fired, file=sys.stderr, flush=True)
        self.exit(1)
