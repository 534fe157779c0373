"""The one harness behind every comm_bench script: sizes, buffers, correctness check, timing, report.

Conventions follow nccl-tests (https://github.com/NVIDIA/nccl-tests, doc/PERFORMANCE.md):

size (B)   the message size nccl-tests prints: the buffer of an all-reduce or broadcast; the *whole*
           gathered output of an all-gather (each rank sends size/n); the *whole* input of a
           reduce-scatter (each rank receives size/n); each rank's whole send buffer of an all-to-all
           (size/n to every peer). Sizes are rounded down so that they split evenly over the ranks.
count      the element count handed to the collective per rank: size/elt for all-reduce and
           broadcast, size/(n·elt) for all-gather, reduce-scatter and all-to-all (per peer).
time (us)  mean time of one call over --iters back-to-back calls on each rank, then reduced over
           ranks: max by default (a collective is done when its slowest rank is; nccl-tests' own
           default is the mean, -a 1).
algbw      size / time, in GB/s (1 GB = 1e9 B).
busbw      algbw · 2(n−1)/n (all-reduce), · (n−1)/n (all-gather, reduce-scatter, all-to-all),
           · 1 (broadcast): the rate each link must carry, comparable with the hardware's peak.
#wrong     elements that differ from the expected result in one checked call made before timing,
           summed over ranks.

Timing: on GPUs CUDA events around the loop on the current stream; on CPU (gloo) `perf_counter`
around the loop, started right after a barrier. Warm-up calls run first and are not timed.

--gap-ms G times each call alone after the link sat idle for G ms (a barrier, then a sleep of G ms on every
rank): a collective as a training step issues it, after some compute, rather than queued behind the previous
one. It differs from the back-to-back time where the link holds credit while idle: a token-bucket shaper (tc
tbf, as on the emulated cluster, docs/cluster.md) lets its bucket's worth of bytes through at line speed after
an idle spell of bucket/rate. The simulator reads the two tables together (comm_model.comm_from_table).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from gptdist.cpu_memory import keep_freed_memory
from gptdist.studies import alphabeta
from gptdist.instrument.bus_bandwidth import OPS, busbw_factor
from gptdist.dist import DistContext, init_distributed, launched_by_torchrun, teardown
from gptdist.errors import ConfigError, GptdistError

# Element types, named as everywhere in gptdist (gptdist/dtypes.py): fp32, bf16, fp16, plus the ones only a
# collective benchmark needs. torch's and nccl-tests' long names are refused with the short name to use.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp64": torch.float64,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
}
LONG_DTYPE_NAMES = {"float32": "fp32", "float": "fp32", "float64": "fp64", "double": "fp64", "float16": "fp16",
                    "half": "fp16", "bfloat16": "bf16", "int": "int32"}
# Tolerance of the correctness check (relative): the test values are small integers, exact in every
# dtype at small world sizes; bf16/fp16 sums over many ranks may round.
CHECK_RTOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}

# Defaults suited to the device: GPUs sweep up to 1 GiB like a typical nccl-tests run (-b 8 -e 1G);
# gloo on CPU copies through host memory and TCP, so its sweep stops at 16 MiB by default.
DEFAULT_SIZES = {"cuda": (8, 1 << 30), "cpu": (1 << 10, 16 << 20)}
AVERAGE_MODES = {0: "rank0", 1: "avg", 2: "min", 3: "max"}  # nccl-tests' -a values

CSV_COLUMNS = ["op", "world_size", "nodes", "backend", "dtype", "placement", "size_bytes", "count",
               "time_us", "time_us_min_rank", "time_us_max_rank", "algbw_gbps", "busbw_gbps", "wrong"]


# ----------------------------------------------------------------------------------------------
# Arguments


def parse_size(text: str) -> int:
    """'8' -> 8, '1K' -> 1024, '4M' -> 4 MiB, '1G' -> 1 GiB (binary units, as nccl-tests; 'KB'/'KiB' too)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ConfigError(f"bad size {text!r}: use a whole number of bytes with an optional K, M or G (e.g. 8, 1K, 64M, 1G)")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def parse_ops(text: str) -> list[str]:
    """'all' | 'all_reduce' | 'allreduce,broadcast' ... -> canonical names, in the order given."""
    if text.strip().lower() == "all":
        return list(OPS)
    by_key = {op.replace("_", ""): op for op in OPS}
    ops = []
    for part in text.split(","):
        key = part.strip().lower().replace("_", "").replace("-", "")
        if key not in by_key:
            raise ConfigError(f"unknown op {part.strip()!r} (choose from {', '.join(OPS)} or all)")
        if by_key[key] not in ops:
            ops.append(by_key[key])
    return ops


def parse_dtype(text: str) -> torch.dtype:
    name = text.lower()
    if name in LONG_DTYPE_NAMES:
        raise ConfigError(f"dtype {text!r}: use {LONG_DTYPE_NAMES[name]!r} (gptdist's dtype names: {', '.join(DTYPES)})")
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {text!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints the whole usage block
        raise ConfigError(message)


def build_parser(default_op: str) -> argparse.ArgumentParser:
    p = _OneLineErrorParser(
        description="Sweep a collective over message sizes (nccl-tests conventions). Run under torchrun.",
        epilog="example: torchrun --standalone --nproc-per-node 4 comm_bench/allreduce.py -b 1K -e 64M",
    )
    p.add_argument("--op", default=default_op, help=f"collective(s): {', '.join(OPS)}, a comma list, or all (default {default_op})")
    p.add_argument("-b", "--min-bytes", default=None, help="smallest size, e.g. 8, 1K (default: 8 on GPU, 1K on CPU)")
    p.add_argument("-e", "--max-bytes", default=None, help="largest size, e.g. 64M, 1G (default: 1G on GPU, 16M on CPU)")
    p.add_argument("-f", "--step-factor", type=int, default=2, help="multiply the size by this each step (default 2)")
    p.add_argument("--sizes", default="",
                   help="also these exact sizes, comma-separated (e.g. a training step's buckets: launch/simulate.py "
                        "sizes TIMELINE...); each is rounded down to whole elements per rank, as the sweep's are")
    p.add_argument("-w", "--warmup", type=int, default=5, help="untimed calls per size (default 5)")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed calls per size (default 20)")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="time each call alone after G ms of idle link (a barrier, then a sleep; default 0: "
                        "back-to-back calls)")
    p.add_argument("-d", "--dtype", default="fp32", help=f"element type: {', '.join(DTYPES)} (default fp32)")
    place = p.add_mutually_exclusive_group()
    place.add_argument("--inplace", dest="inplace", action="store_true", help="output buffer aliases the input")
    place.add_argument("--out-of-place", dest="inplace", action="store_false", help="separate output buffer (default)")
    p.set_defaults(inplace=False)
    p.add_argument("-a", "--average", type=int, default=3, help="reduce the time over ranks: 0=rank0 1=avg 2=min 3=max (default 3)")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cuda or cpu")
    p.add_argument("--out", default=None, help="output folder (default runs/comm_bench/<timestamp>)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder that already holds results")
    p.add_argument("--no-fit", dest="fit", action="store_false", help="skip the alpha-beta fit")
    p.add_argument("--allow-one-rank", action="store_true",
                   help="run at world size 1: checks correctness and the code path only (no bandwidth; the device check)")
    return p


@dataclass
class BenchArgs:
    ops: list[str]
    min_bytes: Optional[int]  # None: the device's default
    max_bytes: Optional[int]
    step_factor: int
    warmup: int
    iters: int
    dtype: torch.dtype
    inplace: bool
    average: int
    device: str
    out: Optional[str]
    overwrite: bool
    fit: bool
    allow_one_rank: bool = False
    extra_sizes: tuple[int, ...] = ()  # --sizes: measured besides the sweep
    gap_ms: float = 0.0  # --gap-ms: each timed call alone, after this much idle


def parse_args(argv: list[str], default_op: str) -> BenchArgs:
    """Parse and check everything that can be checked before the process group exists."""
    ns = build_parser(default_op).parse_args(argv)
    args = BenchArgs(
        ops=parse_ops(ns.op),
        min_bytes=None if ns.min_bytes is None else parse_size(ns.min_bytes),
        max_bytes=None if ns.max_bytes is None else parse_size(ns.max_bytes),
        step_factor=ns.step_factor,
        warmup=ns.warmup,
        iters=ns.iters,
        dtype=parse_dtype(ns.dtype),
        inplace=ns.inplace,
        average=ns.average,
        device=ns.device,
        out=ns.out,
        overwrite=ns.overwrite,
        fit=ns.fit,
        allow_one_rank=ns.allow_one_rank,
        extra_sizes=tuple(parse_size(x) for x in ns.sizes.split(",") if x.strip()),
        gap_ms=ns.gap_ms,
    )
    if args.min_bytes is not None and args.max_bytes is not None and args.min_bytes > args.max_bytes:
        raise ConfigError(f"min size {args.min_bytes} B is larger than max size {args.max_bytes} B (-b/--min-bytes <= -e/--max-bytes)")
    if any(x < 1 for x in args.extra_sizes):
        raise ConfigError("--sizes must be at least 1 byte each")
    if args.min_bytes is not None and args.min_bytes < 1:
        raise ConfigError("-b/--min-bytes must be at least 1")
    if args.step_factor < 2:
        raise ConfigError(f"-f/--step-factor must be >= 2, got {args.step_factor}")
    if not 0 <= args.gap_ms <= 10_000:  # also refuses nan
        raise ConfigError(f"--gap-ms must be between 0 and 10000, got {args.gap_ms:g}")
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError("-n/--iters must be >= 1 and -w/--warmup >= 0")
    if args.average not in AVERAGE_MODES:
        raise ConfigError(f"-a/--average must be one of 0 (rank0), 1 (avg), 2 (min), 3 (max), got {args.average}")
    if args.device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"--device must be auto, cuda or cpu, got {args.device!r}")
    return args


def resolve_size_range(args: BenchArgs, device_type: str) -> tuple[int, int]:
    lo, hi = DEFAULT_SIZES["cuda" if device_type == "cuda" else "cpu"]
    lo = args.min_bytes if args.min_bytes is not None else lo
    hi = args.max_bytes if args.max_bytes is not None else hi
    if lo > hi:  # one bound given, the other defaulted past it
        raise ConfigError(f"min size {lo} B is larger than max size {hi} B (-b/--min-bytes <= -e/--max-bytes)")
    return lo, hi


def sweep_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """min, min·f, min·f², ... up to max (inclusive), as nccl-tests' -b/-e/-f."""
    sizes, s = [], min_bytes
    while s <= max_bytes:
        sizes.append(s)
        s *= factor
    return sizes


def aligned_size(op: str, nbytes: int, world_size: int, elt_size: int) -> int:
    """Round `nbytes` down to what the op can move: whole elements, and for the ops that split the
    buffer over ranks, a whole number of elements per rank. 0 when it cannot hold one unit."""
    unit = elt_size * (world_size if op in ("all_gather", "reduce_scatter", "all_to_all") else 1)
    return (nbytes // unit) * unit


# ----------------------------------------------------------------------------------------------
# One collective at one size: buffers, the call, the expected result


# Newer torch renamed all_gather_into_tensor / reduce_scatter_tensor to *_single (same semantics).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _pattern(numel: int, offset: int, device) -> torch.Tensor:
    """Small integers 0..7 (exact in every dtype): element k of a buffer is (k + offset) % 8."""
    return (torch.arange(numel, dtype=torch.int64, device=device) + offset) % 8


@dataclass
class Case:
    op: str
    size_bytes: int
    count: int  # nccl-tests' count column
    placement: str  # "in-place" | "out-of-place": what the call actually did
    run: Callable[[], None]  # one collective call
    output: torch.Tensor  # where the result lands
    expected: Callable[[], torch.Tensor]  # the result this rank must see after one call on fresh inputs


def make_case(op: str, size_bytes: int, dtype: torch.dtype, rank: int, world: int, device: torch.device, inplace: bool) -> Case:
    """Buffers filled with rank-dependent values, and the call that acts on them.

    Rank r's input element k holds (k % 8) + r + 1 (as a pattern over the buffer the op splits),
    so every rank's contribution is distinguishable in the result.
    """
    elt = torch.empty((), dtype=dtype).element_size()
    n = world
    total = size_bytes // elt  # elements in the size-defining buffer

    def fill(numel: int, r: int, offset: int = 0) -> torch.Tensor:
        return (_pattern(numel, offset, device) + r + 1).to(dtype)

    if op == "all_reduce":
        # torch.distributed.all_reduce is in-place only (no out-of-place variant in the API).
        buf = fill(total, rank)
        return Case(op, size_bytes, total, "in-place", lambda: dist.all_reduce(buf), buf,
                    lambda: (n * _pattern(total, 0, device) + n * (n + 1) // 2).to(dtype))
    if op == "broadcast":
        # in-place by construction: the root's buffer is sent, the others' overwritten (root 0, as -r 0).
        buf = fill(total, rank)
        return Case(op, size_bytes, total, "in-place", lambda: dist.broadcast(buf, src=0), buf, lambda: fill(total, 0))
    chunk = total // n  # elements per rank (per peer for all-to-all)
    if op == "all_gather":
        out = torch.empty(total, dtype=dtype, device=device)
        if inplace:  # nccl-tests' in-place all-gather: the input is this rank's slice of the output
            inp = out[rank * chunk:(rank + 1) * chunk]
            inp.copy_(fill(chunk, rank))
        else:
            inp = fill(chunk, rank)
        expected = lambda: torch.cat([fill(chunk, r) for r in range(n)])
        return Case(op, size_bytes, chunk, "in-place" if inplace else "out-of-place",
                    lambda: _all_gather(out, inp), out, expected)
    if op == "reduce_scatter":
        inp = fill(total, rank)
        out = inp[rank * chunk:(rank + 1) * chunk] if inplace else torch.empty(chunk, dtype=dtype, device=device)
        expected = lambda: (n * _pattern(chunk, rank * chunk, device) + n * (n + 1) // 2).to(dtype)
        return Case(op, size_bytes, chunk, "in-place" if inplace else "out-of-place", lambda: _reduce_scatter(out, inp), out, expected)
    if op == "all_to_all":
        # all_to_all_single needs distinct buffers: always out-of-place.
        inp = fill(total, rank)
        out = torch.empty(total, dtype=dtype, device=device)
        # Rank j sends its chunk `rank` to us: elements rank·chunk.. of j's pattern, plus j + 1.
        expected = lambda: torch.cat([fill(chunk, j, offset=rank * chunk) for j in range(n)])
        return Case(op, size_bytes, chunk, "out-of-place", lambda: dist.all_to_all_single(out, inp), out, expected)
    raise ConfigError(f"unknown op {op!r}")


def count_wrong(output: torch.Tensor, expected: torch.Tensor) -> int:
    rtol = CHECK_RTOL.get(output.dtype, 0.0)
    got, want = output.double(), expected.double()
    return int(((got - want).abs() > rtol * want.abs()).sum().item())


def time_calls(run: Callable[[], None], warmup: int, iters: int, device: torch.device, gap_ms: float = 0.0) -> float:
    """Seconds per call on this rank: `iters` back-to-back calls after `warmup` untimed ones; with gap_ms > 0,
    each call timed alone after a barrier and gap_ms of idle, and the mean of those times."""
    for _ in range(warmup):
        run()
    if gap_ms > 0:
        return _time_calls_after_gap(run, iters, device, gap_ms)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    dist.barrier()  # start together; gloo calls are synchronous, so the clock covers the transfers
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    return (time.perf_counter() - t0) / iters


def _time_calls_after_gap(run: Callable[[], None], iters: int, device: torch.device, gap_ms: float) -> float:
    total = 0.0
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()  # every rank starts its idle spell together: the link carries nothing during it
        time.sleep(gap_ms / 1e3)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            total += start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            run()
            total += time.perf_counter() - t0
    return total / iters


def _gather_floats(values: list[float], ctx: DistContext) -> torch.Tensor:
    """(world, len(values)) table of every rank's values."""
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    mine = torch.tensor(values, dtype=torch.float64, device=dev)
    table = torch.empty(ctx.world_size * len(values), dtype=torch.float64, device=dev)
    _all_gather(table, mine)
    return table.view(ctx.world_size, len(values)).cpu()


def measure(op: str, size_bytes: int, args: BenchArgs, ctx: DistContext) -> dict:
    """Check one call, then time the sweep point; returns a result row (same on every rank)."""
    n = ctx.world_size
    case = make_case(op, size_bytes, args.dtype, ctx.rank, n, ctx.device, args.inplace)
    expected = case.expected()
    case.run()
    wrong_here = count_wrong(case.output, expected)
    seconds = time_calls(case.run, args.warmup, args.iters, ctx.device, args.gap_ms)
    table = _gather_floats([seconds * 1e6, float(wrong_here)], ctx)  # (world, 2)
    times = table[:, 0]
    mode = AVERAGE_MODES[args.average]
    time_us = {"rank0": times[0], "avg": times.mean(), "min": times.min(), "max": times.max()}[mode].item()
    algbw = size_bytes / (time_us * 1e-6) / 1e9
    return {
        "op": op,
        "world_size": n,
        "nodes": ctx.num_nodes,
        "backend": ctx.backend,
        "dtype": dtype_name(args.dtype),
        "placement": case.placement,
        "size_bytes": size_bytes,
        "count": case.count,
        "time_us": time_us,
        "time_us_min_rank": times.min().item(),
        "time_us_max_rank": times.max().item(),
        "algbw_gbps": algbw,
        "busbw_gbps": algbw * busbw_factor(op, n),
        "wrong": int(table[:, 1].sum().item()),
        "gap_ms": args.gap_ms,
    }


# ----------------------------------------------------------------------------------------------
# Report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device) -> dict:
    import psutil

    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus_per_node"] = torch.cuda.device_count()
    return info


def nccl_version() -> Optional[str]:
    if not torch.cuda.is_available():
        return None
    try:
        v = torch.cuda.nccl.version()
        return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    except Exception:  # a CUDA build without NCCL
        return None


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({_cpu_model()})"


def header_lines(args: BenchArgs, ctx: DistContext, sizes: tuple[int, int], ranks: list[dict]) -> list[str]:
    lines = [
        f"# comm_bench  ops: {', '.join(args.ops)}",
        f"# nranks {ctx.world_size} nodes {ctx.num_nodes} backend {ctx.backend} device {ctx.device.type}  "
        f"torch {torch.__version__}  NCCL {nccl_version() or 'n/a'}",
        f"# minBytes {sizes[0]} maxBytes {sizes[1]} step: {args.step_factor}(factor) warmup iters: {args.warmup} "
        f"iters: {args.iters} validation: 1 time: {AVERAGE_MODES[args.average]} over ranks",
        *([f"# each call timed alone after {args.gap_ms:g} ms of idle link (--gap-ms)"] if args.gap_ms > 0 else []),
        "#",
        "# Using devices",
    ]
    for r in ranks:
        lines.append(f"#  Rank {r['rank']:2d} Pid {r['pid']:7d} on {r['host']:>12s} device {r['local_rank']:2d} [{r['device']}] {r['name']}")
    lines.append("#")
    return lines


TABLE_HEADER = [
    f"# {'size':>10s}  {'count':>12s}  {'type':>8s}  {'placement':>12s}  {'time':>10s}  {'algbw':>8s}  {'busbw':>8s}  {'#wrong':>6s}",
    f"# {'(B)':>10s}  {'(elements)':>12s}  {'':>8s}  {'':>12s}  {'(us)':>10s}  {'(GB/s)':>8s}  {'(GB/s)':>8s}  {'':>6s}",
]


def format_row(row: dict) -> str:
    return (f"{row['size_bytes']:12d}  {row['count']:12d}  {row['dtype']:>8s}  {row['placement']:>12s}  {row['time_us']:10.1f}  "
            f"{row['algbw_gbps']:8.3f}  {row['busbw_gbps']:8.3f}  {row['wrong']:6d}")


def format_fit(fit: alphabeta.AlphaBetaFit) -> str:
    return (f"# alpha-beta fit ({fit.op}, n={fit.world_size}): alpha {fit.alpha_us:.1f} us, beta {fit.beta_us_per_byte:.3e} us/B "
            f"(algbw {fit.algbw_gbps:.3f} GB/s, busbw {fit.busbw_gbps:.3f} GB/s), rel RMS error {fit.rel_rms_error:.1%}, "
            f"R2(log) {fit.r2_log:.4f}")


def write_outputs(out: Path, rows: list[dict], metadata: dict, model: Optional[alphabeta.CommModel], console: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"metadata": metadata, "results": rows}, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    (out / "results.csv").write_text(buf.getvalue())
    (out / "console.txt").write_text(console)
    if model is not None:
        model.save(out / "fit.json")


def default_out_dir() -> Path:
    return Path("runs") / "comm_bench" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _rank0_decides(ctx: DistContext, fn: Callable[[], Optional[str]]) -> None:
    """Run a check on rank 0 and raise the same ConfigError on every rank, so no rank is left waiting."""
    box = [fn() if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        raise ConfigError(box[0])


# ----------------------------------------------------------------------------------------------
# Entry point


def run(args: BenchArgs, ctx: DistContext, argv: list[str]) -> int:
    if ctx.world_size < 2 and not args.allow_one_rank:
        raise ConfigError("a collective benchmark needs at least 2 ranks (torchrun --nproc-per-node 2 or more)")
    # the allocator setting a CPU training step runs with (gptdist/cpu_memory.py): without it every buffer gloo
    # allocates above 32 MiB is page-faulted in anew on each call, and the table would price the collectives of
    # a training step (which keeps its freed memory) 1.3-2x too high at those sizes
    heap_kept = keep_freed_memory() if ctx.device.type == "cpu" else None
    lo, hi = resolve_size_range(args, ctx.device.type)
    out = Path(args.out) if args.out else default_out_dir()

    def check_out() -> Optional[str]:
        if (out / "results.json").exists() and not args.overwrite:
            return f"{out} already holds results.json: pick a new --out or pass --overwrite"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot create output folder {out}: {e}"
        return None

    _rank0_decides(ctx, check_out)

    me = {"rank": ctx.rank, "pid": os.getpid(), "host": socket.gethostname(), "local_rank": ctx.local_rank,
          "device": str(ctx.device), "name": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else _cpu_model()}
    ranks: list = [None] * ctx.world_size
    dist.all_gather_object(ranks, me)

    console: list[str] = []

    def say(line: str) -> None:
        console.append(line)
        if ctx.is_main:
            print(line, flush=True)

    for line in header_lines(args, ctx, (lo, hi), ranks):
        say(line)

    elt = torch.empty((), dtype=args.dtype).element_size()
    rows: list[dict] = []
    for op in args.ops:
        wanted = [*sweep_sizes(lo, hi, args.step_factor), *args.extra_sizes]
        sizes = sorted({aligned_size(op, s, ctx.world_size, elt) for s in wanted} - {0})
        if not sizes:
            raise ConfigError(f"{op}: no size in [{lo}, {hi}] B holds one {dtype_name(args.dtype)} per rank; raise -e/--max-bytes")
        say(f"# {op}")
        for line in TABLE_HEADER:
            say(line)
        op_rows = []
        for size in sizes:
            row = measure(op, size, args, ctx)
            op_rows.append(row)
            say(format_row(row))
        wrong = sum(r["wrong"] for r in op_rows)
        say(f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}")
        say(f"# Avg bus bandwidth    : {sum(r['busbw_gbps'] for r in op_rows) / len(op_rows):.4f} GB/s")
        if args.fit and len(op_rows) >= 2:
            say(format_fit(alphabeta.fit_rows(op_rows).get(op, ctx.world_size)))
        say("#")
        rows.extend(op_rows)

    if ctx.is_main:
        metadata = {
            "tool": "comm_bench",
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ops": args.ops,
            "world_size": ctx.world_size,
            "nodes": ctx.num_nodes,
            "local_world_size": ctx.local_world_size,
            "backend": ctx.backend,
            "device": ctx.device.type,
            "device_name": device_label(ctx.device),
            "hardware": hardware_info(ctx.device),
            "hosts": sorted({r["host"] for r in ranks}),
            "torch_version": torch.__version__,
            "nccl_version": nccl_version(),
            "python": platform.python_version(),
            "argv": [sys.argv[0], *argv],
            "command": f"torchrun --nnodes {ctx.num_nodes} --nproc-per-node {ctx.local_world_size} {' '.join([sys.argv[0], *argv])}",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_keeps_freed_memory": heap_kept,  # gptdist/cpu_memory.py (None: not a CPU run)
            "dtype": dtype_name(args.dtype),
            "inplace_requested": args.inplace,
            "min_bytes": lo,
            "max_bytes": hi,
            "step_factor": args.step_factor,
            "extra_sizes": list(args.extra_sizes),
            "warmup": args.warmup,
            "iters": args.iters,
            "gap_ms": args.gap_ms,  # 0: back-to-back calls; else each call after that much idle (--gap-ms)
            "time_over_ranks": AVERAGE_MODES[args.average],
            "conventions": "nccl-tests: size = whole buffer (all-gather output, reduce-scatter input, all-to-all send buffer); "
                           "algbw = size/time; busbw = algbw * busbw_factor(op, n)",
        }
        model = None
        if args.fit:
            model = alphabeta.fit_rows(rows)
            model.metadata = {k: metadata[k] for k in ("date_utc", "backend", "device_name", "torch_version", "nccl_version", "dtype", "nodes")}
        write_outputs(out, rows, metadata, model, "\n".join(console) + "\n")
        print(f"# wrote {out}/results.json, results.csv{', fit.json' if model else ''}", flush=True)
    return 1 if any(r["wrong"] for r in rows) else 0


def main(default_op: str, argv: Optional[list[str]] = None) -> int:
    """CLI entry of every comm_bench script. Exit 0 ok, 1 wrong results, 2 bad input."""
    argv = sys.argv[1:] if argv is None else argv
    speak = os.environ.get("RANK", "0") == "0"  # one copy of an error, not one per rank
    try:
        args = parse_args(argv, default_op)
        if not launched_by_torchrun():
            raise ConfigError(
                "comm_bench must run under torchrun, e.g. "
                f"torchrun --standalone --nproc-per-node 2 {sys.argv[0]} {' '.join(argv)}".rstrip()
            )
        ctx = init_distributed(args.device, need_group=True)
        try:
            return run(args, ctx, argv)
        finally:
            teardown()
    except GptdistError as e:
        if speak:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
