"""CPU contention measured with K copies of the 1-rank job held in lock-step (a barrier before every step).

Ranks of a data-parallel job run their phases at the same moments: every collective realigns them, so their
memory-bound phases (the optimizer, clip, the big logits) always collide. K copies started together but left
free drift apart within a few steps, and measure less contention than training sees (on the 2-core machine:
two free copies 0.94–1.04×, two training ranks ~1.2× the job alone; docs/results/cluster_simulator_repeats_cpu_netns).
Here each of the K processes trains its own replica (the `none` backend on a world of one: no gradient is
exchanged, so this is not a multi-rank training run) and only a barrier joins them before each step.

On the 2-core machine the probe proved noisier than the effect it measures: for 2 one-thread ranks it read
0.94-1.15 across sittings while the real 2-rank runs computed at 0.97-1.07x their rehearsal alone, so the repeat
scripts take the contention from the core count (max(1, N·threads/cores)) and keep this probe as a comparison
(their validation_lockstep/).

    torchrun --nproc-per-node 1 launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch 4 --out solo.json
    torchrun --nproc-per-node 2 launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch 4 --out k2.json \
        --solo solo.json          # prints the contention factor (the K copies' median step over the job alone)
    # --solo before.json,after.json: over the mean of one copy measured before and after the K copies
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from gptdist.dist import DistContext, barrier
from gptdist.errors import ConfigError


def measure(cfg, ctx: DistContext, batch: int, steps: int, skip: int, lockstep: bool, out: Path,
            align_phases: bool = False) -> Optional[dict]:
    """Every copy (process of ctx's group) runs `probe`; rank 0 gathers their step times, writes `out` and
    returns the result (the other ranks: None)."""
    times = probe(cfg, ctx, batch, steps, lockstep, align_phases)
    every: list = [None] * ctx.world_size
    dist.all_gather_object(every, times)
    return write_result(out, batch, lockstep, every, skip, align_phases) if ctx.is_main else None


def probe(cfg, ctx: DistContext, batch: int, steps: int, lockstep: bool = True,
          align_phases: bool = False) -> list[tuple[float, float, float, float]]:
    """This process's (start, forward-backward end, update start, end) seconds of each step of its own replica;
    with `lockstep`, after a barrier with the other copies in ctx's group; with `align_phases` also a barrier
    before clip + optimizer, as a data-parallel job's gradient all-reduce aligns its ranks there (so the copies'
    memory-bound phases run at the same moments, as the ranks' do). time.perf_counter is CLOCK_MONOTONIC on
    Linux, one clock for every process of the machine, so the copies' times compare."""
    from gptdist.config import resolve_model
    from gptdist.model import GPT
    from gptdist.train_step import TrainStep

    torch.manual_seed(1234 + ctx.rank)
    alone = DistContext(0, 1, 0, 1, torch.device("cpu"), None)  # a world of one: nothing is exchanged
    model_cfg = resolve_model(cfg)
    step = TrainStep(GPT(model_cfg), cfg, alone)
    seq = cfg.data.seq_len
    x = torch.randint(0, model_cfg.vocab_size, (batch, seq))
    y = torch.randint(0, model_cfg.vocab_size, (batch, seq))
    times = []
    for _ in range(steps):
        if lockstep:
            barrier(ctx)
        start = time.perf_counter()
        step.forward_backward(lambda: (x, y))
        backward_end = time.perf_counter()
        if align_phases:
            barrier(ctx)
        update_start = time.perf_counter()
        step.sync_and_clip()
        step.update(cfg.train.lr)
        times.append((start, backward_end, update_start, time.perf_counter()))
    return times


def _kept(times: list, skip: int) -> list:
    return times[skip:] if len(times) > skip else times


def median_step_ms(times: list[tuple[float, ...]], skip: int) -> float:
    """The median step less any wait at the phase barrier: (forward-backward) + (clip + optimizer). Rows of
    (start, end) only (older files) are whole steps."""
    def work(t):
        return (t[1] - t[0]) + (t[3] - t[2]) if len(t) == 4 else t[-1] - t[0]
    return statistics.median(work(t) * 1e3 for t in _kept(times, skip))


def median_phase_ms(times: list[tuple[float, float, float, float]], skip: int) -> dict:
    kept = _kept(times, skip)
    return {"forward_backward": statistics.median((t[1] - t[0]) * 1e3 for t in kept),
            "clip_optimizer": statistics.median((t[3] - t[2]) * 1e3 for t in kept)}


def write_result(out: Path, batch: int, lockstep: bool, times_per_copy: list[list[tuple[float, ...]]], skip: int,
                 align_phases: bool = False) -> dict:
    per_copy = [median_step_ms(times, skip) for times in times_per_copy]
    result = {"copies": len(per_copy), "batch": batch, "lockstep": lockstep, "align_phases": align_phases,
              "skip": skip, "median_step_ms_per_copy": per_copy, "median_step_ms": statistics.fmean(per_copy),
              "median_phase_ms_per_copy": [median_phase_ms(times, skip) for times in times_per_copy],
              "step_times_per_copy": times_per_copy}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def contention_factor(copies: dict, solos: list[dict]) -> float:
    """The K copies' mean median step over the job alone (the same batch). Several solo measurements (e.g. one
    before and one after the copies, so that a drift of the machine's speed cancels): over their mean."""
    for solo in solos:
        if solo["copies"] != 1 or solo["batch"] != copies["batch"]:
            raise ConfigError(f"--solo must be one copy at the same batch ({copies['batch']}), "
                              f"not {solo['copies']} at {solo['batch']}")
    return copies["median_step_ms"] / statistics.fmean(solo["median_step_ms"] for solo in solos)
