"""Communication models: the time of one collective from an alpha-beta fit, a measured table or a hardware
profile; and the CPU terms (contention, compute speed while a collective runs)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gptdist.errors import ConfigError
from gptdist.studies.simulator.timeline import Timeline


CommFn = Callable[[str, float, int], float]  # (op, nbytes, world_size) -> ms
# A CommFn with the attribute reads_idle = True also takes idle_ms=: how long the link sat idle before the
# call (comm_from_table with a --gap-ms table); the schedule passes it (schedule.comm_time).
# ----------------------------------------------------------------------------------------------
# Communication models


def comm_from_fit(path: str | Path, extrapolate: bool = True) -> CommFn:
    """α–β fits of a comm_bench fit.json, per op and world size."""
    from gptdist.studies.alphabeta import load_fit

    model = load_fit(path)

    def time_ms(op: str, nbytes: float, n: int) -> float:
        try:
            return model.predict_time_us(op, nbytes, n, extrapolate=extrapolate) / 1e3
        except KeyError as e:
            raise ConfigError(f"{path}: {e.args[0]}") from None

    return time_ms


def comm_from_table(paths: list[str | Path]) -> CommFn:
    """The measured comm_bench tables themselves (results.json files, or folders holding one), per op and
    world size: time at a size is interpolated linearly between the two measured sizes around it (sizes
    are a factor 2 apart), the smallest size's time below the range, the last two points' slope above it (the
    largest size's time per byte where that slope is not positive: a later size measured faster is noise).
    Unlike an α–β fit, which one line through 1 KiB..64 MiB makes miss the large sizes by up to ~1.7× on
    gloo, it follows the measurement at every size; it knows only the world sizes that were measured, and
    one layout per (op, world size): a 2x2 layout is predicted from the table of whichever 4-rank run is
    given (on one host, as here, the same thing; across real nodes, measure that layout).

    Several tables of the same op, world size, layout (nodes and ranks per node, from their metadata) and idle
    gap, e.g. one measured before and one after a study, are pooled: the mean of their times at each size (this
    machine's speed drifts over minutes, like the timelines' inputs). Tables of different layouts, or without
    that metadata, are refused: an intra-node and an inter-node table of 2 ranks must not be averaged.

    A table measured with `comm_bench --gap-ms G` (each call after G ms of idle link) beside a back-to-back one
    prices a collective by the idle time before it (`idle_ms`, which the schedule passes). A token bucket (tc
    tbf on the emulated cluster) lets its bucket through at line speed after an idle spell; its tokens accrue
    at the line's rate, so G ms of idle can save at most G ms. The credit at a size is what the two tables
    measured there, back-to-back minus idle time, kept within [0, G] (a slower idle call is not credit: at
    small sizes ranks waking from the sleep meet late, at large ones gloo's own work after a pause is slower;
    above G is noise of a few timed calls), scaled by min(1, idle_ms / G): the bucket refills at a constant
    rate, so with G the bucket's refill time (10 ms on the emulated cluster, docs/cluster.md) the credit grows
    linearly up to G. Without an idle table, or with idle_ms = 0 (the default), the back-to-back time."""
    samples: dict[tuple[str, int, float], dict[float, list[float]]] = {}
    source: dict[tuple[str, int], tuple[Path, object]] = {}
    for path in paths:
        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            rows = data["results"]
        except FileNotFoundError:
            raise ConfigError(f"comm table not found: {path} (a comm_bench results.json or its folder)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a comm_bench results.json: {e}") from None
        meta = data.get("metadata") or {}
        layout = (meta["nodes"], meta["local_world_size"]) if "nodes" in meta and "local_world_size" in meta else None
        for r in rows:
            key = (r["op"], int(r["world_size"]))
            first, first_layout = source.setdefault(key, (path, layout))
            if first != path and (layout is None or layout != first_layout):  # e.g. a 1-node and a 2-node table
                raise ConfigError(f"{first} and {path} both measure {key[0]} at {key[1]} ranks on different (or "
                                  "unrecorded) layouts; pass one of them")
            gap = float(r.get("gap_ms", 0.0))
            samples.setdefault((*key, gap), {}).setdefault(float(r["size_bytes"]), []).append(float(r["time_us"]))
    table = {key: sorted((size, statistics.fmean(times)) for size, times in by_size.items())
             for key, by_size in samples.items()}
    gaps: dict[tuple[str, int], list[float]] = {}
    for op, n, gap in table:
        gaps.setdefault((op, n), []).append(gap)
    for (op, n), found in gaps.items():
        if sum(g > 0 for g in found) > 1:
            raise ConfigError(f"the comm tables measure {op} at {n} ranks after several idle gaps "
                              f"({', '.join(f'{g:g}' for g in sorted(found) if g > 0)} ms); pass one --gap-ms table")

    def at_size(points: list[tuple[float, float]], nbytes: float) -> float:  # µs
        if nbytes <= points[0][0] or len(points) == 1:
            return points[0][1]
        for (s0, t0), (s1, t1) in zip(points, points[1:]):
            if nbytes <= s1:
                return t0 + (t1 - t0) * (nbytes - s0) / (s1 - s0)
        (s0, t0), (s1, t1) = points[-2], points[-1]
        slope = (t1 - t0) / (s1 - s0)
        if slope <= 0:  # a noisy top of the table (few timed calls): scale the largest size's time instead
            slope = t1 / s1
        return t1 + slope * (nbytes - s1)

    def time_ms(op: str, nbytes: float, n: int, idle_ms: float = 0.0) -> float:
        if n <= 1:
            return 0.0
        found = sorted(gaps.get((op, n), []))
        if not found:
            have = ", ".join(f"{o}@{w}" for o, w in sorted(gaps))
            raise ConfigError(f"the comm tables have no {op} at {n} ranks (measured: {have}); measure it or use --fit")
        queued = at_size(table[(op, n, found[0])], nbytes)
        if len(found) == 1:  # one kind of table: its time, whatever the idle
            return queued / 1e3
        gap = found[1]
        after_idle = at_size(table[(op, n, gap)], nbytes)
        credit = min(max(0.0, queued - after_idle), gap * 1e3) * min(1.0, max(0.0, idle_ms) / gap)
        return (queued - credit) / 1e3

    time_ms.reads_idle = True  # type: ignore[attr-defined]  (the schedule passes idle_ms)
    return time_ms


@dataclass(frozen=True)
class HardwareProfile:
    """A cluster as α–β per link class. Collectives are modelled as NCCL's ring (busbw constant in N)
    inside a node, and hierarchically across nodes: reduce-scatter inside the node, the ring over the
    nodes' NICs on 1/g of the data (each GPU uses its own NIC: rails), all-gather inside the node."""

    name: str
    gpus_per_node: int
    intra_busbw_gbps: float  # achieved NCCL busbw inside a node, large messages
    intra_alpha_us: float
    inter_busbw_gbps: float  # achieved per-GPU busbw over the network (one NIC per GPU)
    inter_alpha_us: float
    peak_tflops: float  # dense bf16 per GPU (for modelled timelines)
    sources: tuple[str, ...] = ()

    def time_ms(self, op: str, nbytes: float, n: int) -> float:
        from gptdist.studies.alphabeta import busbw_factor

        if n <= 1:
            return 0.0
        g = min(n, self.gpus_per_node)
        nodes = math.ceil(n / self.gpus_per_node)
        # ring cost inside the node: nbytes · factor(op, g) / busbw
        t_us = self.intra_alpha_us + nbytes * busbw_factor(op, g) / (self.intra_busbw_gbps * 1e3)
        if nodes > 1:
            # each GPU carries 1/g of the data over its own NIC, in a ring of `nodes`
            t_us += self.inter_alpha_us + (nbytes / g) * busbw_factor(op, nodes) / (self.inter_busbw_gbps * 1e3)
        return t_us / 1e3


PROFILES: dict[str, HardwareProfile] = {
    # Assumptions, not measurements. busbw figures: nccl-tests all_reduce_perf on 8x H100 SXM (NVLink 4,
    # NVSwitch, NVLS) reaches ~460-480 GB/s busbw at large sizes (NVIDIA's nccl-tests maintainer in
    # github.com/NVIDIA/nccl-tests/issues/290: "476GB/s looks to be in the expected range for H100");
    # we take 450 to stay below the NVLS peak. 400 Gb/s NDR InfiniBand: "you should see 46-48GB/s per
    # NIC" (same thread); we take 45 per GPU with one NIC per GPU (DGX/HGX H100: 8x ConnectX-7).
    # α (small-message latency) is an assumption of the order nccl-tests prints for 8 B all-reduces:
    # ~15 µs inside a node, ~30 µs added across nodes; it only matters for tiny buckets.
    "h100-nvlink-8": HardwareProfile("h100-nvlink-8", 8, 450.0, 15.0, 45.0, 30.0, 989.0, (
        "github.com/NVIDIA/nccl-tests/issues/290 (476 GB/s all-reduce busbw, 8x H100, NVLS)",)),
    "2x8-h100-ib-400g": HardwareProfile("2x8-h100-ib-400g", 8, 450.0, 15.0, 45.0, 30.0, 989.0, (
        "github.com/NVIDIA/nccl-tests/issues/290 (476 GB/s in a node; 46-48 GB/s per 400G NDR NIC)",
        "one 400 Gb/s NIC per GPU (rail-optimised, as DGX H100)")),
}


def comm_from_profile(name: str) -> CommFn:
    if name not in PROFILES:
        raise ConfigError(f"unknown hardware profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name].time_ms


def batch_compute_scale(big: "Timeline", small: "Timeline", tokens: float) -> float:
    """compute_scale for `tokens` per rank from two measured single-rank timelines at different batches:
    the batch-dependent work (pre + backward) as an affine function a + b·tokens through both points.
    A fixed per-step cost (Python, kernel launches, small ops) does not shrink with the batch, so a
    straight 1/N overestimates strong scaling; two measured points capture it."""
    w_big, w_small = big.pre_ms + big.backward_ms, small.pre_ms + small.backward_ms
    if big.tokens_per_step == small.tokens_per_step:
        raise ConfigError("the two timelines must have different batches (tokens_per_step)")
    slope = (w_big - w_small) / (big.tokens_per_step - small.tokens_per_step)
    intercept = w_big - slope * big.tokens_per_step
    return (intercept + slope * tokens) / w_big


def timeline_for_tokens(timelines: list["Timeline"], tokens: float, world: int = 1) -> tuple["Timeline", float]:
    """The timeline to replay for a rank of a `world`-rank job that computes `tokens` per step, and its compute_scale.

    A rehearsal of that very world and batch (Timeline.world_size == world, GPTDIST_FAKE_WORLD) is replayed as it
    is (scale 1): it holds the backend's own work at `world` ranks. Else from the 1-rank timelines: one measured at
    that very batch is replayed as it is (scale 1): its compute, bucket ready times and
    fixed per-step costs are those of the batch the rank will have. Otherwise the nearest measured batch
    is replayed, scaled by the affine compute(batch) through the two measured batches around `tokens`
    (the two nearest when it lies outside them; a tie goes to the larger batch). With one timeline: a
    straight tokens / its tokens (the 1/N of strong scaling)."""
    if not timelines:
        raise ConfigError("timeline_for_tokens needs at least one timeline")
    if any(not t.tokens_per_step for t in timelines):
        raise ConfigError("every timeline needs tokens_per_step (extract it from a run folder)")
    for t in timelines:
        if world > 1 and t.world_size == world and abs(t.tokens_per_step - tokens) < 0.5:
            return t, 1.0
    timelines = [t for t in timelines if t.world_size == 1] or timelines
    by_distance = sorted(timelines, key=lambda t: (abs(t.tokens_per_step - tokens), -t.tokens_per_step))
    nearest = by_distance[0]
    if abs(nearest.tokens_per_step - tokens) < 0.5:
        return nearest, 1.0
    if len({t.tokens_per_step for t in timelines}) < 2:
        return nearest, tokens / nearest.tokens_per_step
    below = [t for t in by_distance if t.tokens_per_step < tokens]
    above = [t for t in by_distance if t.tokens_per_step > tokens]
    if below and above:
        pair = (below[0], above[0])
    else:  # outside the measured batches: the two nearest distinct ones
        pair = (nearest, next(t for t in by_distance if t.tokens_per_step != nearest.tokens_per_step))
    other = pair[1] if pair[0] is nearest else pair[0]
    return nearest, batch_compute_scale(nearest, other, tokens)


def cpu_contention(world_size: int, threads_per_rank: int, cores: int) -> float:
    """How much slower each rank computes when N ranks x t threads share C cores."""
    return max(1.0, world_size * threads_per_rank / cores)


def cpu_overlap(world_size: int, threads_per_rank: int, cores: int) -> float:
    """Fraction of full speed a rank's compute keeps while a collective runs on a CPU: spare cores per rank
    (C − N·t)/N, clamped to [0, 1]. gloo's collectives are CPU work; with no spare core they take it from
    compute (1 rank of 1 thread on 2 cores: 1; 2 ranks on 2 cores: 0; 4 ranks on 2 cores: 0)."""
    return min(1.0, max(0.0, cores - world_size * threads_per_rank) / world_size)


def contention_from_runs(solo: "Timeline", concurrent: list["Timeline"]) -> float:
    """Measured contention: compute (pre + backward + post) of K copies of the same 1-rank job run at once
    (no communication), over the same job run alone. Each copy's timeline is its median step; the factor
    is the mean over copies, since the slowest copy in a step differs from step to step."""
    if not concurrent:
        raise ConfigError("contention_from_runs needs at least one concurrent run")
    work = lambda t: t.pre_ms + t.backward_ms + sum(t.post_ms.values())  # noqa: E731
    return statistics.mean(work(t) for t in concurrent) / work(solo)


# ----------------------------------------------------------------------------------------------
# Topology: a cluster of nodes (the emulated cluster, docs/cluster.md)


def comm_for_layout(intra: CommFn, inter: dict[str, CommFn], layout) -> CommFn:
    """The collective cost for one layout (gptdist.studies.scaling.Layout) of a cluster.

    intra: one node's tables (ranks over the node's loopback), by world size. inter: tables measured across
    the nodes, by layout name ("2x1", "2x2"). A one-node layout uses intra. A layout measured across the
    nodes uses its own table: it is what gloo's algorithms really cost over the slowest link (on the
    emulated cluster gloo's reduce-scatter reaches a third of the link and a 2x2 broadcast half of it,
    far from an ideal ring, docs/results/cluster_cpu_netns/tables/). Otherwise, all_reduce of B bytes on A
    nodes of g ranks is modelled hierarchically from the one-rank-per-node table "Ax1":
        intra reduce_scatter(B, g) + inter all_reduce(B/g, A) + intra all_gather(B, g)
    (each rank carries its 1/g shard across the link); other collectives need their layout measured."""
    if layout.nodes == 1:
        return intra
    if layout.name in inter:
        return inter[layout.name]
    per_node_table = inter.get(f"{layout.nodes}x1")
    if per_node_table is None:
        raise ConfigError(f"no inter-node comm table for layout {layout.name} or {layout.nodes}x1 "
                          f"(have: {', '.join(sorted(inter)) or 'none'}); measure one with comm_bench on the cluster")
    g = layout.per_node

    def time_ms(op: str, nbytes: float, n: int) -> float:
        if op != "all_reduce":
            raise ConfigError(f"{op} across {layout.name} is not modelled hierarchically: measure that layout "
                              f"(comm_bench/run_all.py on the cluster) and give it as {layout.name}=PATH")
        return (intra("reduce_scatter", nbytes, g) + per_node_table("all_reduce", nbytes / g, layout.nodes)
                + intra("all_gather", nbytes, g))

    return time_ms


def inter_tables(text: str) -> dict[str, CommFn]:
    """"2x1=DIR,2x2=DIR" (comm_bench results measured across the nodes at that layout) -> layout -> CommFn.
    A layout named twice (2x1=BEFORE,2x1=AFTER) pools its tables (comm_from_table)."""
    paths: dict[str, list[str]] = {}
    for item in filter(None, text.split(",")):
        name, sep, path = item.partition("=")
        if not sep or "x" not in name or not path:
            raise ConfigError(f"--inter-table takes LAYOUT=RESULTS,... (e.g. 2x1=DIR,2x2=DIR), not {item!r}")
        paths.setdefault(name.strip(), []).append(path)
    return {name: comm_from_table(layout_paths) for name, layout_paths in paths.items()}
