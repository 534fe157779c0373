"""Keep freed memory in the process on CPU, so a training step stops paying the kernel to zero new pages.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it to the
kernel on free. A CPU training step allocates and frees the same large tensors every step — the logits alone
are B·T·V·4 bytes (8×128×50304×4 = 206 MB for the main job) — so each step page-faults all of them in again:
on the 2-core machine ~207,000 minor faults and ~0.6 s of system time per main-job step, 43% of the step
(docs/results/cpu_memory/). Telling glibc never to use mmap for the heap (M_MMAP_MAX = 0) and not to trim it
below 1 GiB keeps the pages mapped: freed blocks are reused, with no page fault. The cost is that the process
holds its peak heap until it exits, which is what a training process does anyway.

Linux with glibc only; anywhere else (or with GPTDIST_KEEP_FREED_MEMORY=0) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30

_applied = False


def keep_freed_memory() -> bool:
    """Apply the setting to this process (once). Returns whether it is in effect."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("GPTDIST_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _applied
