"""A step's timeline (compute phases, gradient buckets and when each is ready): read from a measured 1-rank run,
from a JSON file, or modelled from the model shape and a device's speed."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptdist.errors import ConfigError
from gptdist.run_reader import read_rank_rows, read_run_config, with_step_periods


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
    model: dict = field(default_factory=dict)  # n_layer, n_embd, vocab_size, seq_len, block_size (fsdp units)
    source: str = ""
    backend: str = ""  # the backend of the run it came from (its bucket layout)
    # the step's jitter σ, from one step to the next: median |period_i − period_(i−1)| / (0.6745·√2) over the kept
    # steps (for independent normal steps the difference of two has σ·√2 and a median |.| of 0.6745 of that). Unlike
    # a spread of all the steps it leaves out the slow drift of a shared machine's speed. Pooled runs: the mean of
    # each run's own. Ranks that jitter independently arrive at a collective at different times: the simulator's
    # straggler wait (schedule.arrival_wait_ms) comes from it.
    step_jitter_ms: float = 0.0
    # The world the run was measured in: 1, or N for a rehearsal (GPTDIST_FAKE_WORLD=N: one process doing rank 0's
    # work at N ranks -- FSDP's shards and copies, the optimizer on the shard -- with collectives that move nothing).
    # A rehearsal's timeline is replayed as it is at N ranks: only the communication is modelled.
    world_size: int = 1
    # the collectives' own median time per step in the run (inside its phases). In a rehearsal it is the fake
    # collectives' Python overhead, which the comm model's measured times already hold: the schedule takes it out.
    comm_ms: float = 0.0

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


def _jitter(xs: list[float]) -> float:
    """σ of independent step-to-step variation, from the successive differences (robust to a slow drift)."""
    return statistics.median(abs(b - a) for a, b in zip(xs, xs[1:])) / (0.6745 * math.sqrt(2))


def _kept_rows(rows: list[dict], skip: int) -> list[dict]:
    """One run's rows with a timeline, each with its step period, the first `skip` left out."""
    rows = [r for r in with_step_periods(rows) if "timeline" in r]
    return rows[skip:] if len(rows) > skip else rows


def timeline_from_steps(rows: list[dict], skip: int = 1, require_buckets: bool = True,
                        more_runs: list[list[dict]] = ()) -> Timeline:
    """Median timeline over the kept rows of one rank's steps.jsonl (a 1-rank manual or ddp run). The
    step is the period (from the previous step's end, `end_unix_s`) where the rows have it, so `other`
    holds the work between steps too, as the scaling study's step does. `more_runs`: the rows of other runs
    of the same job (each with its own warm-up left out), pooled: every median is over all their kept steps.
    On a shared machine the speed drifts over minutes; the same job measured before and after a study,
    pooled, stands for the whole study rather than one moment of it."""
    runs = [_kept_rows(rows, skip)] + [_kept_rows(run, skip) for run in more_runs]
    kept = [r for run in runs for r in run]
    if not kept:
        raise ConfigError("no steps with a timeline (run with the manual or ddp backend and instrument.enabled=true)")
    pre, bwd, data, step, comm = [], [], [], [], []
    post: dict[str, list[float]] = {p: [] for p in POST_PHASES}
    ready: dict[int, list[float]] = {}
    sizes: dict[int, int] = {}
    for r in kept:
        phases = r["timeline"]["phases"]
        backwards = [p for p in phases if p[0] == "backward"]
        if not backwards:
            raise ConfigError(f"step {r['step']} has no backward phase")
        _, b_start, b_end = backwards[-1]  # the synced backward (the last micro-step's)
        pre.append(b_start)
        bwd.append(b_end - b_start)
        data.append(sum(e - s for name, s, e in phases if name == "data"))
        for name in POST_PHASES:
            post[name].append(sum(e - s for n, s, e in phases if n == name))
        step.append(r["period_ms"])
        comm.append(r.get("comm/total_ms", 0.0))
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
    jitters = [_jitter([r["period_ms"] for r in run]) for run in runs if len(run) >= 2]
    return Timeline(pre_ms=_median(pre), backward_ms=_median(bwd), post_ms=post_ms, other_ms=other_ms,
                    buckets=buckets, data_ms=_median(data), step_ms=_median(step),
                    step_jitter_ms=statistics.fmean(jitters) if jitters else 0.0, comm_ms=_median(comm))


def timeline_from_run(run_dir: str | Path, skip: int = 1, rank: int = 0, more_runs: list[str | Path] = ()) -> Timeline:
    """Timeline of a 1-rank run folder: runs/<run>/ranks/rank0/steps.jsonl + config.yaml. manual or ddp:
    with their bucket layouts. fsdp: no buckets (`simulate_fsdp` splits compute per unit from the model
    shape); its phases carry FSDP's own compute (copies in and out of the flat shards, its hooks).
    `more_runs`: other run folders of the same job (backend, model, tokens per rank), pooled
    (`timeline_from_steps`); a run of another job is refused."""
    runs = [Path(run_dir), *(Path(r) for r in more_runs)]
    for run in runs:
        steps = run / "ranks" / f"rank{rank}" / "steps.jsonl"
        if not steps.is_file():
            raise ConfigError(f"{steps} not found (is {run} an instrumented run folder?)")
    configs = [read_run_config(run) for run in runs]
    hosts = [_host(run) for run in runs]
    for run, host in zip(runs, hosts):  # the simulator's inputs are never a multi-rank training run
        if not host.get("fake_world") and len(list((run / "ranks").glob("rank*"))) > 1:
            raise ConfigError(f"{run} is a multi-rank run: extract a timeline from a 1-rank run or a GPTDIST_FAKE_WORLD "
                              f"rehearsal (one process playing rank 0 of N)")
    jobs = [_job(run, config, host) for run, config, host in zip(runs, configs, hosts)]
    for run, job in zip(runs[1:], jobs[1:]):
        if job != jobs[0]:
            raise ConfigError(f"{run} is not the same job as {runs[0]} (backend, model, world and tokens per "
                              f"rank must match to pool their steps)")
    rows = [read_rank_rows(run)[rank] for run in runs]
    timeline = timeline_from_steps(rows[0], skip, require_buckets=configs[0] is None or configs[0].backend != "fsdp",
                                   more_runs=rows[1:])
    for field_name, value in jobs[0].items():
        setattr(timeline, field_name, value)
    timeline.source = ",".join(str(run) for run in runs)
    return timeline


def _job(run_dir: Path, config, host: dict) -> dict:
    """The job a run folder ran, as Timeline fields: model shape, tokens per rank, backend ({} without a config)."""
    if config is None:
        return {}
    from gptdist.config import batch_plan, resolve_model

    m = resolve_model(config)
    world = _world_size(run_dir, host)
    return {"model": {"n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "vocab_size": m.vocab_size,
                      "seq_len": config.data.seq_len, "block_size": m.block_size},  # wpe has block_size rows
            "tokens_per_step": batch_plan(config, world).tokens_per_step // world,  # per rank
            "backend": config.backend, "world_size": world}


def _host(run_dir: Path) -> dict:
    """Rank 0's host.json ({} for runs from before it was written)."""
    path = run_dir / "ranks" / "rank0" / "host.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _world_size(run_dir: Path, host: dict) -> int:
    """The world a run trained in: as rank 0 recorded it (`host`, its host.json; a rehearsal's is the world it
    played), else the number of rank folders (runs from before host.json had it)."""
    return int(host.get("world_size") or len(list((run_dir / "ranks").glob("rank*"))))


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
