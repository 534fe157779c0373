"""Scaling simulator: predict the step time at N ranks from a one-rank timeline and a communication model.

    timeline = timeline_from_run("runs/scaling/strong-manual-n1")     # measured, 1 rank, manual backend
    comm = comm_from_fit("docs/results/comm_bench_cpu_gloo/fit.json")  # or comm_from_profile("h100-nvlink-8")
    pred = simulate(timeline, comm, world_size=4, backend="manual", compute_scale=1 / 4)
    pred.step_ms, pred.exposed_ms, pred.schedule

THE TIMELINE (one rank, one optimizer step, medians over steps; `Timeline`):
    pre_ms        data + forward (+ earlier micro-steps) before the synced backward   } scale with the
    backward_ms   the backward that produces the gradients to synchronise           } per-rank batch
    buckets       per gradient bucket: its bytes and when, from the start of that backward, it got its
                  last gradient ("bucket_ready" marks in steps.jsonl: the manual backend marks a bucket
                  when its last gradient arrives, DDP when its reducer hands the bucket to the comm
                  hook; a timeline from a DDP run carries DDP's own bucket layout)
    post_ms       finish_grad_sync's own work, clip, optimizer, zero_grad: whole-model work, the same at
                  any batch (for FSDP it shrinks with the shard: 1/N)
    other_ms      the rest of the step period (Python, logging, the work between two steps): kept as is

THE COMMUNICATION MODEL: time(op, bytes, N) in ms, from comm_bench's measured tables (`comm_from_table`,
interpolated), its α–β fits (`gptdist.alphabeta`; any N, extrapolated) or a named hardware profile
(`PROFILES`, every number a stated assumption with its source).

THE SCHEDULE, manual and ddp (overlap on): a bucket's all-reduce is launched when it is ready, in bucket-
index order (launch_i = max(ready_i, launch_{i-1}), the order rule); collectives run one at a time on
one stream (start_i = max(launch_i, end_{i-1})). The optimizer waits for the last one:

    step = pre + max(backward end, last all-reduce end) + post + loss all-reduce + other

overlap off: every all-reduce starts after backward (step = pre + backward + Σ comm + post + ...).

fsdp: units = the transformer blocks and the root (wte/lm_head, wpe, ln_f), each an all-gather of its
parameters before its forward and (reshard_after_forward) again before its backward, and a reduce-
scatter of its gradients after its backward. With `prefetch` the all-gather of the next unit is issued
when the current unit starts computing (FSDP2 on GPUs: separate streams run ahead of compute); without
it every collective is issued when its unit needs it and waited for: each all-gather just before its
unit, each reduce-scatter right after its unit's backward (what FSDP2 does on CPU/gloo, where the
recorder sees every FSDP collective as blocking).
Compute per unit is split in proportion to its model FLOPs. One comm stream for all collectives.

COMPUTE AT N RANKS: `compute_scale` multiplies the batch-dependent part (pre, backward, bucket ready
times): 1/N for strong scaling (the per-rank batch shrinks), 1 for weak scaling. `contention` multiplies
all compute: 1 on GPUs (a rank owns its device); on a CPU with C cores and N ranks of t threads each,
`cpu_contention(N, t, C)` = max(1, N·t / C) (a rank gets C/(N·t) of a core's time). That is the one
thing the simulator does not know by itself; a measured factor (`contention_from_runs`: K copies of the
1-rank job run at once, no communication) replaces the formula where one exists. docs/scaling.md explains
how it was validated.

COMPUTE WHILE A COLLECTIVE RUNS (`cpu_overlap`, the fraction of full speed compute keeps while one runs):
1 on GPUs (collectives run on the GPU's copy engines/SMs and NCCL's own streams, the host is free). On a CPU,
gloo moves and sums the buckets with CPU threads on the same cores the ranks compute on; comm_bench's
times were measured with every core doing communication. With N ranks of t threads on C cores, a rank has
spare cores for its collectives only when N·t < C: `cpu_overlap(N, t, C)` = min(1, (C − N·t)/N), so 0
once the ranks fill the cores (compute pauses while a collective runs: overlap buys nothing), 1 with a
spare core per rank.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from gptdist.errors import ConfigError

CommFn = Callable[[str, float, int], float]  # (op, nbytes, world_size) -> ms

# Phases after the synced backward whose work does not depend on the batch.
POST_PHASES = ("grad_sync", "clip", "optimizer", "zero_grad")


@dataclass
class BucketTiming:
    index: int
    bytes: int
    ready_ms: float  # from the start of the synced backward


@dataclass
class Timeline:
    pre_ms: float
    backward_ms: float
    post_ms: dict[str, float]
    other_ms: float
    buckets: list[BucketTiming]
    data_ms: float = 0.0  # part of pre_ms (reported separately; scaled like pre_ms)
    step_ms: float = 0.0  # the measured step, for reference
    tokens_per_step: int = 0
    model: dict = field(default_factory=dict)  # n_layer, n_embd, vocab_size, seq_len (for fsdp units)
    source: str = ""
    backend: str = ""  # the backend of the run it came from (its bucket layout)

    @property
    def param_bytes(self) -> int:
        return sum(b.bytes for b in self.buckets)

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @staticmethod
    def from_json(data: dict) -> "Timeline":
        data = dict(data)
        data["buckets"] = [BucketTiming(**b) for b in data["buckets"]]
        return Timeline(**data)


def load_timeline(path: str | Path) -> Timeline:
    try:
        timeline = Timeline.from_json(json.loads(Path(path).read_text()))
        timeline.source = timeline.source or str(path)  # where it came from: its run folder, else this file
        return timeline
    except FileNotFoundError:
        raise ConfigError(f"timeline file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a timeline file (write one with launch/simulate.py extract): {e}") from None


# ----------------------------------------------------------------------------------------------
# From a measured run


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def timeline_from_steps(rows: list[dict], skip: int = 1, require_buckets: bool = True) -> Timeline:
    """Median timeline over the kept rows of one rank's steps.jsonl (a 1-rank manual or ddp run). The
    step is the period (from the previous step's end, `end_unix_s`) where the rows have it, so `other`
    holds the work between steps too, as the scaling study's step does."""
    rows = [r for r in rows if "timeline" in r]
    kept = rows[skip:] if len(rows) > skip else rows
    if not kept:
        raise ConfigError("no steps with a timeline (run with the manual or ddp backend and instrument.enabled=true)")
    pre, bwd, data, step = [], [], [], []
    post: dict[str, list[float]] = {p: [] for p in POST_PHASES}
    ready: dict[int, list[float]] = {}
    sizes: dict[int, int] = {}
    end_of = {r["step"]: r.get("end_unix_s") for r in rows}
    for r in kept:
        phases = r["timeline"]["phases"]
        before = end_of.get(r["step"] - 1)
        period = (r["end_unix_s"] - before) * 1e3 if before is not None and r.get("end_unix_s") is not None else r["step_ms"]
        backwards = [p for p in phases if p[0] == "backward"]
        if not backwards:
            raise ConfigError(f"step {r['step']} has no backward phase")
        _, b_start, b_end = backwards[-1]  # the synced backward (the last micro-step's)
        pre.append(b_start)
        bwd.append(b_end - b_start)
        data.append(sum(e - s for name, s, e in phases if name == "data"))
        for name in POST_PHASES:
            post[name].append(sum(e - s for n, s, e in phases if n == name))
        step.append(period)
        for name, index, nbytes, t in r["timeline"]["marks"]:
            if name == "bucket_ready":
                ready.setdefault(index, []).append(t - b_start)
                sizes[index] = nbytes
    if not ready and require_buckets:
        raise ConfigError("the run recorded no bucket_ready marks: take the timeline from a manual or ddp run "
                          "with instrument.enabled=true")
    buckets = [BucketTiming(i, sizes[i], _median(ready[i])) for i in sorted(ready)]
    post_ms = {k: _median(v) for k, v in post.items()}
    # `other` is the residual of the medians (as in the scaling study), so the timeline replayed at one rank
    # gives back the median step exactly (a median of per-step residuals would not: medians do not add).
    # It can be negative when the parts' medians add up to more than the median step.
    other_ms = _median(step) - _median(pre) - _median(bwd) - sum(post_ms.values())
    return Timeline(pre_ms=_median(pre), backward_ms=_median(bwd), post_ms=post_ms, other_ms=other_ms,
                    buckets=buckets, data_ms=_median(data), step_ms=_median(step))


def timeline_from_run(run_dir: str | Path, skip: int = 1, rank: int = 0) -> Timeline:
    """Timeline of a 1-rank run folder: runs/<run>/ranks/rank0/steps.jsonl + config.yaml. manual or ddp:
    with their bucket layouts. fsdp: no buckets (`simulate_fsdp` splits compute per unit from the model
    shape); its phases carry FSDP's own compute (copies in and out of the flat shards, its hooks)."""
    run_dir = Path(run_dir)
    steps = run_dir / "ranks" / f"rank{rank}" / "steps.jsonl"
    if not steps.is_file():
        raise ConfigError(f"{steps} not found (is {run_dir} an instrumented run folder?)")
    rows = [json.loads(line) for line in steps.read_text().splitlines() if line.strip()]
    config = None
    if (run_dir / "config.yaml").is_file():
        from gptdist.config import build_config

        config = build_config(run_dir / "config.yaml", {})
    timeline = timeline_from_steps(rows, skip, require_buckets=config is None or config.backend != "fsdp")
    if config is not None:
        from gptdist.config import batch_plan, resolve_model

        m = resolve_model(config)
        timeline.model = {"n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "vocab_size": m.vocab_size,
                          "seq_len": config.data.seq_len}
        world = len(list((run_dir / "ranks").glob("rank*")))
        timeline.tokens_per_step = batch_plan(config, world).tokens_per_step // world  # per rank
        timeline.backend = config.backend
    timeline.source = str(run_dir)
    return timeline


# ----------------------------------------------------------------------------------------------
# Communication models


def comm_from_fit(path: str | Path, extrapolate: bool = True) -> CommFn:
    """α–β fits of a comm_bench fit.json, per op and world size."""
    from gptdist.alphabeta import load_fit

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
    are a factor 2 apart), the smallest size's time below the range, the last two points' slope above it.
    Unlike an α–β fit, which one line through 1 KiB..64 MiB makes miss the large sizes by up to ~1.7× on
    gloo, it follows the measurement at every size; it knows only the world sizes that were measured, and
    one table per (op, world size): a 2x2 layout is predicted from the table of whichever 4-rank run is
    given (on one host, as here, the same thing; across real nodes, measure that layout)."""
    table: dict[tuple[str, int], list[tuple[float, float]]] = {}
    source: dict[tuple[str, int], Path] = {}
    for path in paths:
        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        try:
            rows = json.loads(path.read_text())["results"]
        except FileNotFoundError:
            raise ConfigError(f"comm table not found: {path} (a comm_bench results.json or its folder)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a comm_bench results.json: {e}") from None
        for r in rows:
            key = (r["op"], int(r["world_size"]))
            if source.setdefault(key, path) != path:  # e.g. a 1-node and a 2-node table of the same world size
                raise ConfigError(f"{source[key]} and {path} both measure {key[0]} at {key[1]} ranks; pass one of them")
            table.setdefault(key, []).append((float(r["size_bytes"]), float(r["time_us"])))
    for points in table.values():
        points.sort()

    def time_ms(op: str, nbytes: float, n: int) -> float:
        if n <= 1:
            return 0.0
        points = table.get((op, n))
        if not points:
            have = ", ".join(f"{o}@{w}" for o, w in sorted(table))
            raise ConfigError(f"the comm tables have no {op} at {n} ranks (measured: {have}); measure it or use --fit")
        if nbytes <= points[0][0] or len(points) == 1:
            return points[0][1] / 1e3
        for (s0, t0), (s1, t1) in zip(points, points[1:]):
            if nbytes <= s1:
                return (t0 + (t1 - t0) * (nbytes - s0) / (s1 - s0)) / 1e3
        (s0, t0), (s1, t1) = points[-2], points[-1]
        return (t1 + (t1 - t0) / (s1 - s0) * (nbytes - s1)) / 1e3

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
        from gptdist.alphabeta import busbw_factor

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
# Simulation


@dataclass
class CommEvent:
    op: str
    label: str
    bytes: float
    launch_ms: float
    start_ms: float
    end_ms: float


@dataclass
class Prediction:
    backend: str
    world_size: int
    step_ms: float
    compute_ms: float
    comm_ms: float  # sum of collective durations (one stream: no two at once)
    exposed_ms: float  # communication with no compute running
    data_ms: float
    other_ms: float
    schedule: list[CommEvent]
    assumptions: dict = field(default_factory=dict)

    @property
    def overlap(self) -> Optional[float]:
        return max(0.0, 1.0 - self.exposed_ms / self.comm_ms) if self.comm_ms > 0 else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["overlap"] = self.overlap
        return d


def _run_stream(requests: list[tuple[str, str, float, float]], comm: CommFn, n: int, free_at: float = 0.0) -> list[CommEvent]:
    """Requests (op, label, bytes, launch time) in issue order on one stream -> events."""
    events = []
    for op, label, nbytes, launch in requests:
        start = max(launch, free_at)
        free_at = start + comm(op, nbytes, n)
        events.append(CommEvent(op, label, nbytes, launch, start, free_at))
    return events


def _backward_with_comm(pre: float, bwd: float, launches: list[tuple[str, str, float, float]], comm: CommFn, n: int,
                        cpu_overlap: float) -> tuple[float, list[CommEvent]]:
    """Run the backward (bwd ms of work starting at `pre`) and the bucket all-reduces launched at points of
    its work (launches: (op, label, bytes, work done at launch), in issue order) on one comm stream. While a
    collective runs, compute advances at `cpu_overlap` of full speed (1: free overlap; 0: compute waits).
    Returns (wall time the backward's work ends, events)."""
    wall, done, busy_until, events = pre, 0.0, pre, []

    def compute_until(target: float) -> None:  # advance the backward's work to `target` ms done
        nonlocal wall, done
        while done < target - 1e-12:
            if wall < busy_until:  # a collective is running: compute at cpu_overlap speed
                if cpu_overlap <= 0.0:
                    wall = busy_until
                    continue
                step = min(busy_until - wall, (target - done) / cpu_overlap)
                wall, done = wall + step, done + step * cpu_overlap
            else:
                wall, done = wall + (target - done), target

    for op, label, nbytes, at_work in launches:
        compute_until(at_work)
        start = max(wall, busy_until)  # one stream: after the previous collective
        busy_until = start + comm(op, nbytes, n)
        events.append(CommEvent(op, label, nbytes, wall, start, busy_until))
    compute_until(bwd)
    return wall, events


def simulate_allreduce(t: Timeline, comm: CommFn, n: int, compute_scale: float = 1.0, contention: float = 1.0,
                       overlap: bool = True, backend: str = "manual", cpu_overlap: float = 1.0) -> Prediction:
    """manual / ddp: bucketed all-reduce, launched in index order, overlapped with backward (at
    `cpu_overlap` of full compute speed while a collective runs: 1 on GPUs, see `cpu_overlap()` on CPUs)."""
    c = compute_scale * contention
    pre, bwd, data = t.pre_ms * c, t.backward_ms * c, t.data_ms * c
    post = sum(t.post_ms.values()) * contention
    requests, launch = [], 0.0
    for b in sorted(t.buckets, key=lambda b: b.index):
        ready = b.ready_ms * c if overlap else bwd
        launch = max(launch, ready)  # the order rule
        requests.append(("all_reduce", f"bucket={b.index}", b.bytes, launch))
    if n > 1:
        bwd_end, events = _backward_with_comm(pre, bwd, requests, comm, n, cpu_overlap)
    else:
        bwd_end, events = pre + bwd, []
    sync_end = max([bwd_end] + [e.end_ms for e in events])
    loss = comm("all_reduce", 8, n) if n > 1 else 0.0  # the trainer's loss (+ stop flag) all-reduce
    step = sync_end + post + loss + t.other_ms
    comm_total = sum(e.end_ms - e.start_ms for e in events) + loss
    # exposed: the time compute is not running at full speed because of communication
    exposed = (sync_end - (pre + bwd)) + loss
    return Prediction(backend, n, step, pre - data + bwd + post, comm_total, exposed, data, t.other_ms, events,
                      {"compute_scale": compute_scale, "contention": contention, "overlap": overlap,
                       "cpu_overlap": cpu_overlap})


def fsdp_units(model: dict, param_bytes_per_element: int = 4) -> list[tuple[str, float, float]]:
    """(name, parameter bytes, share of the model FLOPs) for the root and each block, from the GPT shape.
    A block: 12·d² weights (+ biases, LayerNorms), attention 12·T·d FLOPs per token on top of 6·params.
    The root: wte (tied lm_head, V·d) + wpe + ln_f; its FLOPs are the lm_head matmul (6·V·d per token)."""
    L, d, V, T = model["n_layer"], model["n_embd"], model["vocab_size"], model["seq_len"]
    block_params = 12 * d * d + 13 * d
    block_flops = 6 * block_params + 12 * T * d
    root_params = V * d + model.get("block_size", T) * d + 2 * d
    root_flops = 6 * V * d
    total = L * block_flops + root_flops
    units = [("root", root_params * param_bytes_per_element, root_flops / total)]
    units += [(f"h.{i}", block_params * param_bytes_per_element, block_flops / total) for i in range(L)]
    return units


def simulate_fsdp(t: Timeline, comm: CommFn, n: int, compute_scale: float = 1.0, contention: float = 1.0,
                  prefetch: bool = True, reshard_after_forward: bool = True, gather_bytes_per_element: int = 4,
                  reduce_bytes_per_element: int = 4) -> Prediction:
    """FSDP2 (ZeRO-3): per-unit all-gather before forward and backward, reduce-scatter after backward."""
    if not t.model:
        raise ConfigError("the timeline has no model shape (fsdp needs it to split compute per unit)")
    c = compute_scale * contention
    units = fsdp_units(t.model)
    root, blocks = units[0], units[1:]
    data = t.data_ms * c
    fwd = (t.pre_ms - t.data_ms) * c
    bwd = t.backward_ms * c
    # The optimizer, clip and zero_grad work on this rank's 1/N shard.
    post = (sum(t.post_ms.values()) - t.post_ms.get("grad_sync", 0.0)) * contention / n
    free_at, clock, events = 0.0, data, []

    def collective(op: str, label: str, nbytes: float, launch: float) -> float:
        nonlocal free_at
        (e,) = _run_stream([(op, label, nbytes, launch)], comm, n, free_at)
        free_at = e.end_ms
        events.append(e)
        return e.end_ms

    gather = lambda u: u[1] * gather_bytes_per_element / 4  # noqa: E731  (units come in fp32 bytes)
    # Forward: the root (embeddings) first, then the blocks; the root's lm_head at the end.
    fwd_time = {u[0]: fwd * u[2] for u in units}
    ready = {root[0]: collective("all_gather", "module=root", gather(root), clock)}
    if prefetch and blocks:
        ready[blocks[0][0]] = collective("all_gather", f"module={blocks[0][0]}", gather(blocks[0]), clock)
    for i, u in enumerate(blocks):
        if u[0] not in ready:
            ready[u[0]] = collective("all_gather", f"module={u[0]}", gather(u), clock)
        clock = max(clock, ready[u[0]])
        if prefetch and i + 1 < len(blocks):  # issued as this block starts computing
            nxt = blocks[i + 1]
            ready[nxt[0]] = collective("all_gather", f"module={nxt[0]}", gather(nxt), clock)
        clock += fwd_time[u[0]]
    clock += fwd_time[root[0]]  # lm_head + loss (the root stays gathered)
    # Backward: the root's lm_head first, blocks last to first, the embeddings' gradient at the very end.
    bwd_time = {u[0]: bwd * u[2] for u in units}
    clock += bwd_time[root[0]]
    rev = list(reversed(blocks))
    ready = {}
    if reshard_after_forward and prefetch and rev:
        ready[rev[0][0]] = collective("all_gather", f"module={rev[0][0]}", gather(rev[0]), clock)
    for i, u in enumerate(rev):
        if reshard_after_forward:
            if u[0] not in ready:
                ready[u[0]] = collective("all_gather", f"module={u[0]}", gather(u), clock)
            clock = max(clock, ready[u[0]])
            if prefetch and i + 1 < len(rev):
                nxt = rev[i + 1]
                ready[nxt[0]] = collective("all_gather", f"module={nxt[0]}", gather(nxt), clock)
        clock += bwd_time[u[0]]
        scattered = collective("reduce_scatter", f"module={u[0]}", u[1] * reduce_bytes_per_element / 4, clock)
        if not prefetch:  # CPU/gloo: the reduce-scatter is waited for before the next unit's backward
            clock = max(clock, scattered)
    last = collective("reduce_scatter", "module=root", root[1] * reduce_bytes_per_element / 4, clock)
    sync_end = max(clock, last)
    norm = comm("all_reduce", 8, n)  # the global grad-norm all-reduce
    loss = comm("all_reduce", 8, n)
    step = sync_end + post + norm + loss + t.other_ms
    compute = fwd + bwd + post
    comm_total = sum(e.end_ms - e.start_ms for e in events) + norm + loss
    exposed = max(0.0, step - compute - data - t.other_ms)
    return Prediction("fsdp", n, step, compute, comm_total, exposed, data, t.other_ms, events,
                      {"compute_scale": compute_scale, "contention": contention, "prefetch": prefetch,
                       "reshard_after_forward": reshard_after_forward})


def simulate(t: Timeline, comm: CommFn, world_size: int, backend: str = "manual", compute_scale: float = 1.0,
             contention: float = 1.0, overlap: bool = True, prefetch: bool = True, cpu_overlap: float = 1.0) -> Prediction:
    if backend in ("manual", "ddp"):
        if not t.buckets:
            raise ConfigError(f"{t.source or 'the timeline'} has no gradient buckets (an fsdp run?): "
                              f"{backend} needs a timeline from a manual or ddp run")
        return simulate_allreduce(t, comm, world_size, compute_scale, contention, overlap, backend, cpu_overlap)
    if backend == "fsdp":
        return simulate_fsdp(t, comm, world_size, compute_scale, contention, prefetch)
    raise ConfigError(f"the simulator models manual, ddp and fsdp, not {backend!r}")


# ----------------------------------------------------------------------------------------------
# A modelled (not measured) single-GPU timeline


def modelled_timeline(model: dict, tokens_per_rank: int, peak_tflops: float, mfu: float,
                      bucket_cap_mb: float = 25.0, first_bucket_mb: float = 1.0, grad_bytes_per_element: int = 4,
                      optimizer_ms: float = 0.0) -> Timeline:
    """A single-GPU timeline from FLOPs at an assumed MFU, for when no GPU run exists. Forward = 1/3 and
    backward = 2/3 of 6·N·tokens (+ attention) FLOPs; bucket ready times proportional to backward progress
    over the parameters in reverse order (the tied wte/lm_head bucket ready at the end, as measured on CPU).
    Replace it with `timeline_from_run` on a measured 1-GPU run as soon as one exists."""
    import torch

    from gptdist.flops import flops_per_token
    from gptdist.model import GPT, GPTConfig
    from gptdist.parallel.buckets import MB, plan_buckets

    cfg = GPTConfig(n_layer=model["n_layer"], n_head=model["n_head"], n_embd=model["n_embd"],
                    block_size=model["seq_len"], vocab_size=model["vocab_size"])
    with torch.device("meta"):
        gpt = GPT(cfg)
    step_flops = flops_per_token(cfg, model["seq_len"]) * tokens_per_rank
    compute_ms = step_flops / (peak_tflops * 1e12 * mfu) * 1e3
    fwd, bwd = compute_ms / 3, compute_ms * 2 / 3
    buckets = plan_buckets(gpt.named_parameters(), int(bucket_cap_mb * MB), int(first_bucket_mb * MB))
    total = sum(b.numel for b in buckets)
    timings, done = [], 0
    for b in buckets:
        done += b.numel
        tied = any(name.endswith("wte.weight") for name in b.names)
        ready = bwd if tied else bwd * done / total
        timings.append(BucketTiming(b.index, b.numel * grad_bytes_per_element, ready))
    return Timeline(pre_ms=fwd, backward_ms=bwd, post_ms={"optimizer": optimizer_ms}, other_ms=0.0, buckets=timings,
                    tokens_per_step=tokens_per_rank, model=dict(model),
                    source=f"modelled: {step_flops:.3g} FLOPs at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s")
