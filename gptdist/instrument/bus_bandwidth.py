"""Bus bandwidth, as nccl-tests defines it: the one conversion the recorder, comm_bench and the α–β fits
share (so it lives below all three, in the instrumentation layer)."""

from __future__ import annotations

from gptdist.errors import ConfigError

# The five collectives comm_bench measures, by the names torch.distributed uses.
OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all")


def busbw_factor(op: str, world_size: int) -> float:
    """nccl-tests' bus-bandwidth factor: busbw = algbw · factor (see nccl-tests doc/PERFORMANCE.md).

    all-reduce moves 2(n−1)/n of the buffer over each link (reduce-scatter then all-gather);
    all-gather, reduce-scatter and all-to-all move (n−1)/n of it; a broadcast moves it once.
    """
    n = world_size
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise ConfigError(f"unknown op {op!r} (choose from {', '.join(OPS)})")
