"""Memory and host CPU per step.

mem/peak_mb       CUDA: the caching allocator's peak allocated memory during the step
                  (`torch.cuda.max_memory_allocated`, reset after each read).
                  CPU: the process's peak resident set size so far (`getrusage` ru_maxrss): the
                  allocator's view does not exist on CPU, and RSS only grows to its peak.
mem/rss_mb        the process's resident set size now (psutil), CPU and CUDA alike.
host/cpu_percent  CPU time of this process over the step's wall time, in percent of one core
                  (psutil's `cpu_percent(None)`: > 100 when several threads compute, e.g. gloo's).
"""

from __future__ import annotations

import resource
import sys

import psutil
import torch


class Telemetry:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the interval

    def sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self.cuda:
            values["mem/peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            values["mem/peak_mb"] = maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux
        values["mem/rss_mb"] = self.process.memory_info().rss / 2**20
        values["host/cpu_percent"] = self.process.cpu_percent(None)
        return values
