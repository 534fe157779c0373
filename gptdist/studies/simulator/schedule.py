"""The schedule: replay one rank's timeline with N ranks' collectives (all-reduce buckets or FSDP's
all-gathers and reduce-scatters) and predict the step."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from gptdist.errors import ConfigError
from gptdist.studies.simulator.timeline import Timeline
from gptdist.studies.simulator.comm_model import CommFn


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
    wait_ms: float = 0.0  # straggler wait: ranks arriving at the collectives at different times (in step_ms)

    @property
    def overlap(self) -> Optional[float]:
        return max(0.0, 1.0 - self.exposed_ms / self.comm_ms) if self.comm_ms > 0 else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["overlap"] = self.overlap
        return d


@functools.lru_cache(maxsize=None)
def expected_max_excess(n: int) -> float:
    """E[max of n independent standard normals]: how far, in standard deviations, the slowest of n ranks lags
    the mean one. Closed forms: 0 (n = 1), 1/sqrt(pi) (2), 3/(2 sqrt(pi)) (3); numerically above."""
    if n <= 1:
        return 0.0
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    h, lo, hi = 1e-3, -12.0, 12.0  # the density n·phi·Phi^(n-1) is negligible outside; trapezoid rule
    xs = [lo + i * h for i in range(int((hi - lo) / h) + 1)]
    ys = [x * n * phi(x) * Phi(x) ** (n - 1) for x in xs]
    return h * (sum(ys) - (ys[0] + ys[-1]) / 2)


def arrival_wait_ms(t: Timeline, n: int, sync_points: int, compute_factor: float = 1.0) -> float:
    """Expected straggler wait per step: every rank waits at each synchronising collective for the slowest one.
    The step's compute jitters by σ (the 1-rank run's step-to-step jitter, Timeline.step_jitter_ms; scaled with
    the compute by `compute_factor`, the batch's compute_scale times the contention). Split evenly over the k =
    `sync_points` stretches of compute between the collectives that make the ranks meet, each stretch jitters
    by σ/sqrt(k), independently on each rank, and the slowest of n ranks lags by expected_max_excess(n) of
    that: k · e_n · σ/sqrt(k) = e_n · σ · sqrt(k). A rank that owns
    its device (a GPU) jitters little, and so waits little; N ranks sharing two CPU cores jitter a lot."""
    if n <= 1 or sync_points <= 0 or t.step_jitter_ms <= 0:
        return 0.0
    sigma = t.step_jitter_ms * compute_factor
    return expected_max_excess(n) * sigma * math.sqrt(sync_points)


def _without(fwd: float, bwd: float, comm: float) -> tuple[float, float]:
    """fwd and bwd less `comm` ms, taken from each in proportion to its length."""
    total = fwd + bwd
    keep = max(0.0, total - comm) / total if total > 0 else 1.0
    return fwd * keep, bwd * keep


def comm_time(comm: CommFn, op: str, nbytes: float, n: int, idle_ms: float) -> float:
    """One collective's ms; a comm model that prices the link's idle time before the call (reads_idle: a
    comm table with a --gap-ms table beside it) is told it, the others are not."""
    if getattr(comm, "reads_idle", False):
        return comm(op, nbytes, n, idle_ms=idle_ms)  # type: ignore[call-arg]
    return comm(op, nbytes, n)


def _run_stream(requests: list[tuple[str, str, float, float]], comm: CommFn, n: int,
                free_at: float = -math.inf) -> list[CommEvent]:
    """Requests (op, label, bytes, launch time) in issue order on one stream -> events. free_at: when the
    stream's previous collective ended (-inf: none this step, the link idle since the last step)."""
    events = []
    for op, label, nbytes, launch in requests:
        start = max(launch, free_at)
        idle = start - free_at
        free_at = start + comm_time(comm, op, nbytes, n, idle)
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
        idle = start - busy_until if events else math.inf  # the first of the step: idle since the last step
        busy_until = start + comm_time(comm, op, nbytes, n, idle)
        events.append(CommEvent(op, label, nbytes, wall, start, busy_until))
    compute_until(bwd)
    return wall, events


def simulate_allreduce(t: Timeline, comm: CommFn, n: int, compute_scale: float = 1.0, contention: float = 1.0,
                       overlap: bool = True, backend: str = "manual", cpu_overlap: float = 1.0,
                       update_contention: Optional[float] = None) -> Prediction:
    """manual / ddp: bucketed all-reduce, launched in index order, overlapped with backward (at
    `cpu_overlap` of full compute speed while a collective runs: 1 on GPUs, see `cpu_overlap()` on CPUs).
    `contention` slows the forward-backward, `update_contention` (default: the same) the work after it (clip,
    optimizer): ranks sharing a CPU run that memory-bound phase at the same moments and lose more there."""
    up = contention if update_contention is None else update_contention
    c = compute_scale * contention
    pre, bwd, data = t.pre_ms * c, t.backward_ms * c, t.data_ms * c
    post = sum(t.post_ms.values()) * up
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
    # the ranks meet once per step: at the gradient sync (async buckets let an early rank compute on; the last
    # one and the loss all-reduce right after it make it wait)
    wait = arrival_wait_ms(t, n, 1, c)
    step = sync_end + post + loss + t.other_ms + wait
    comm_total = sum(e.end_ms - e.start_ms for e in events) + loss
    # exposed: the time compute is not running at full speed because of communication
    exposed = (sync_end - (pre + bwd)) + loss
    return Prediction(backend, n, step, pre - data + bwd + post, comm_total, exposed, data, t.other_ms, events,
                      {"compute_scale": compute_scale, "contention": contention, "update_contention": up,
                       "overlap": overlap, "cpu_overlap": cpu_overlap}, wait)


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
                  reduce_bytes_per_element: int = 4, update_contention: Optional[float] = None) -> Prediction:
    """FSDP2 (ZeRO-3): per-unit all-gather before forward and backward, reduce-scatter after backward.
    `contention` / `update_contention`: as simulate_allreduce."""
    up = contention if update_contention is None else update_contention
    if not t.model:
        raise ConfigError("the timeline has no model shape (fsdp needs it to split compute per unit)")
    c = compute_scale * contention
    units = fsdp_units(t.model)
    root, blocks = units[0], units[1:]
    data = t.data_ms * c
    fwd, bwd = t.pre_ms - t.data_ms, t.backward_ms
    if t.world_size > 1:  # a rehearsal: its fake collectives' own time is in its phases; the comm model has it
        fwd, bwd = _without(fwd, bwd, t.comm_ms)
    fwd, bwd = fwd * c, bwd * c
    # The optimizer, clip and zero_grad work on this rank's 1/N shard: a rehearsal measured them on its own
    # 1/world_size shard (fixed per-tensor costs and all); a 1-rank timeline's are divided by N.
    post = (sum(t.post_ms.values()) - t.post_ms.get("grad_sync", 0.0)) * up * t.world_size / n
    free_at, clock, events = -math.inf, data, []

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
    # without prefetch every collective is waited for where it is issued: each one makes the ranks meet
    # (with prefetch the gathers run ahead of compute: once per step, at the end)
    wait = arrival_wait_ms(t, n, len(events) if not prefetch else 1, c)
    step = sync_end + post + norm + loss + t.other_ms + wait
    compute = fwd + bwd + post
    comm_total = sum(e.end_ms - e.start_ms for e in events) + norm + loss
    exposed = max(0.0, step - wait - compute - data - t.other_ms)  # the wait is its own part
    return Prediction("fsdp", n, step, compute, comm_total, exposed, data, t.other_ms, events,
                      {"compute_scale": compute_scale, "contention": contention, "update_contention": up,
                       "prefetch": prefetch,
                       "reshard_after_forward": reshard_after_forward}, wait)


# Which schedule models which registered backend (gptdist.parallel.BACKENDS): the simulator's own knowledge.
SCHEDULE_OF = {"manual": "allreduce", "ddp": "allreduce", "fsdp": "fsdp"}


def simulate(t: Timeline, comm: CommFn, world_size: int, backend: str = "manual", compute_scale: float = 1.0,
             contention: float = 1.0, overlap: bool = True, prefetch: bool = True, cpu_overlap: float = 1.0,
             update_contention: Optional[float] = None) -> Prediction:
    if SCHEDULE_OF.get(backend) == "allreduce":
        if not t.buckets:
            raise ConfigError(f"{t.source or 'the timeline'} has no gradient buckets (an fsdp run?): "
                              f"{backend} needs a timeline from a manual or ddp run")
        return simulate_allreduce(t, comm, world_size, compute_scale, contention, overlap, backend, cpu_overlap,
                                  update_contention)
    if SCHEDULE_OF.get(backend) == "fsdp":
        return simulate_fsdp(t, comm, world_size, compute_scale, contention, prefetch,
                             update_contention=update_contention)
    raise ConfigError(f"the simulator models {', '.join(SCHEDULE_OF)}, not {backend!r}")


def collective_sizes(timelines: list[Timeline], world_sizes: list[int]) -> list[int]:
    """Every message size (bytes, comm_bench's convention) the schedule asks the comm model for when it
    replays these timelines (each with its own backend) at these world sizes: what `comm_bench --sizes`
    should measure so that a comm table is read at its measured points rather than interpolated between
    sizes a factor 2 apart (gloo's all-gather time is far from linear between 32 and 64 MiB)."""
    asked: set[int] = set()

    def record(op: str, nbytes: float, n: int) -> float:
        asked.add(int(nbytes))
        return 0.0

    for t in timelines:
        for n in world_sizes:
            simulate(t, record, n, t.backend or "manual")
    return sorted(asked)
