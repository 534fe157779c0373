"""CPU contention measured with K copies of the 1-rank job held in lock-step (a barrier before every step).

Ranks of a data-parallel job run their phases at the same moments: every collective realigns them, so their
memory-bound phases (the optimizer, clip, the big logits) always collide. K copies started together but left
free drift apart within a few steps, and measure less contention than training sees (on the 2-core machine:
two free copies 0.94–1.04×, two training ranks ~1.2× the job alone; docs/results/cluster_simulator_repeats_cpu_netns).
Here each of the K processes trains its own replica (the `none` backend on a world of one: no gradient is
exchanged, so this is not a multi-rank training run) and only a barrier joins them before each step.

Measured against one copy run as a separate job, the probe proved as noisy as the effect on the 2-core machine
(a 2-copy factor moved by 0.1-0.4 within minutes: the machine's speed drifts between the two jobs). With
`interleave` the solo steps are in the same run: every other step one copy runs alone while the others wait at
the barriers, the copies taking turns, so each copy's steps together are read against its own steps alone a
second apart. The repeat scripts probe each backend before and after its part of a study and take its per-phase
factors as the contention of record (2 copies on the 2-core machine: 1.02-1.10 forward-backward, 1.24-1.37 clip +
optimizer; docs/results/simulator_repeats_probed_cpu, docs/results/cluster_simulator_probed_repeats_cpu_netns).

    torchrun --nproc-per-node 2 launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch 4 \
        --steps 28 --skip 4 --interleave --out k2.json       # prints the whole-step factor
    python launch/simulate.py lockstep-factor --phases k2.json    # FORWARD_BACKWARD:UPDATE, for --contention 2=F1:F2
    # without --interleave: --solo solo.json (one copy's JSON, e.g. before.json,after.json: their mean)
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
            align_phases: bool = False, interleave: bool = False) -> Optional[dict]:
    """Every copy (process of ctx's group) runs `probe`; rank 0 gathers their step times, writes `out` and
    returns the result (the other ranks: None)."""
    times = probe(cfg, ctx, batch, steps, lockstep, align_phases, interleave)
    every: list = [None] * ctx.world_size
    dist.all_gather_object(every, times)
    return write_result(out, batch, lockstep, every, skip, align_phases, interleave) if ctx.is_main else None


def runs_alone(step: int, copy: int, copies: int) -> Optional[bool]:
    """The interleaved schedule: even steps every copy runs (False); odd steps one copy runs alone (True), the
    copies taking turns (step 1: copy 0, step 3: copy 1, ...); the others sit that step out (None)."""
    if step % 2 == 0:
        return False
    return True if (step // 2) % copies == copy else None


def probe(cfg, ctx: DistContext, batch: int, steps: int, lockstep: bool = True,
          align_phases: bool = False, interleave: bool = False) -> list:
    """This process's (start, forward-backward end, update start, end) seconds of each step of its own replica;
    with `lockstep`, after a barrier with the other copies in ctx's group; with `align_phases` also a barrier
    before clip + optimizer, as a data-parallel job's gradient all-reduce aligns its ranks there (so the copies'
    memory-bound phases run at the same moments, as the ranks' do). time.perf_counter is CLOCK_MONOTONIC on
    Linux, one clock for every process of the machine, so the copies' times compare.

    With `interleave` (and both barriers) every other step one copy runs alone while the others wait at the
    barriers (`runs_alone`): each row gets a fifth element, 1 for a step run alone, 0 for one run together, and a
    step sat out is None. The copies' slowdown is then read against steps alone a second apart rather than
    against a separate run minutes away, so a drift of the machine's speed (10-15% within a minute on the 2-core
    VM) cancels."""
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
    times: list = []
    for i in range(steps):
        alone = runs_alone(i, ctx.rank, ctx.world_size) if interleave else False
        if lockstep:
            barrier(ctx)
        if alone is None:  # another copy runs this step alone: wait for it at the phase barrier
            if align_phases:
                barrier(ctx)
            times.append(None)
            continue
        start = time.perf_counter()
        step.forward_backward(lambda: (x, y))
        backward_end = time.perf_counter()
        if align_phases:
            barrier(ctx)
        update_start = time.perf_counter()
        step.sync_and_clip()
        step.update(cfg.train.lr)
        row = (start, backward_end, update_start, time.perf_counter())
        times.append(row + (int(alone),) if interleave else row)
    return times


def _kept(times: list, skip: int, alone: Optional[bool] = None) -> list:
    """The rows after the first `skip` steps, without steps sat out; of an interleaved probe only the steps run
    alone (alone=True) or together (alone=False)."""
    kept = [t for t in (times[skip:] if len(times) > skip else times) if t is not None]
    return kept if alone is None else [t for t in kept if len(t) == 5 and bool(t[4]) == alone]


def median_step_ms(times: list[tuple[float, ...]], skip: int, alone: Optional[bool] = None) -> float:
    """The median step less any wait at the phase barrier: (forward-backward) + (clip + optimizer). Rows of
    (start, end) only (older files) are whole steps."""
    def work(t):
        return (t[1] - t[0]) + (t[3] - t[2]) if len(t) >= 4 else t[-1] - t[0]
    return statistics.median(work(t) * 1e3 for t in _kept(times, skip, alone))


def median_phase_ms(times: list[tuple[float, ...]], skip: int, alone: Optional[bool] = None) -> dict:
    kept = _kept(times, skip, alone)
    return {"forward_backward": statistics.median((t[1] - t[0]) * 1e3 for t in kept),
            "clip_optimizer": statistics.median((t[3] - t[2]) * 1e3 for t in kept)}


def write_result(out: Path, batch: int, lockstep: bool, times_per_copy: list[list], skip: int,
                 align_phases: bool = False, interleave: bool = False) -> dict:
    together = False if interleave else None
    per_copy = [median_step_ms(times, skip, together) for times in times_per_copy]
    result = {"copies": len(per_copy), "batch": batch, "lockstep": lockstep, "align_phases": align_phases,
              "interleave": interleave, "skip": skip, "median_step_ms_per_copy": per_copy,
              "median_step_ms": statistics.fmean(per_copy),
              "median_phase_ms_per_copy": [median_phase_ms(times, skip, together) for times in times_per_copy]}
    if interleave:
        if any(not _kept(times, skip, True) for times in times_per_copy):
            raise ConfigError(f"too few steps: some copy ran no step alone after the {skip} warm-up steps "
                              f"(an interleaved probe of K copies needs steps >= skip + 2K)")
        result["alone_step_ms_per_copy"] = [median_step_ms(times, skip, True) for times in times_per_copy]
        result["alone_phase_ms_per_copy"] = [median_phase_ms(times, skip, True) for times in times_per_copy]
    result["step_times_per_copy"] = times_per_copy
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def contention_factor(copies: dict, solos: list[dict]) -> float:
    """The K copies' mean median step over the job alone (the same batch). Several solo measurements (e.g. one
    before and one after the copies, so that a drift of the machine's speed cancels): over their mean. An
    interleaved probe carries its own steps alone: then no solo is needed, and the factor is the mean over the
    copies of each copy's steps together over its own steps alone."""
    if copies.get("interleave") and not solos:
        return phase_factors(copies)["step"]
    if not solos:
        raise ConfigError("the contention of a probe that is not interleaved needs one copy's JSON (--solo)")
    for solo in solos:
        if solo["copies"] != 1 or solo["batch"] != copies["batch"]:
            raise ConfigError(f"--solo must be one copy at the same batch ({copies['batch']}), "
                              f"not {solo['copies']} at {solo['batch']}")
    return copies["median_step_ms"] / statistics.fmean(solo["median_step_ms"] for solo in solos)


def phase_factors(copies: dict) -> dict:
    """An interleaved, phase-aligned probe's slowdown per phase: {"forward_backward", "clip_optimizer", "step"},
    each the mean over the copies of (median together) / (median alone). Data-parallel ranks run their
    memory-bound clip + optimizer at the same moments, so that phase loses more than the forward-backward."""
    if not (copies.get("interleave") and copies.get("align_phases")):
        raise ConfigError("per-phase factors need a probe run with --interleave (which aligns the phases)")
    k = copies["copies"]
    factors = {phase: statistics.fmean(copies["median_phase_ms_per_copy"][c][phase]
                                       / copies["alone_phase_ms_per_copy"][c][phase] for c in range(k))
               for phase in ("forward_backward", "clip_optimizer")}
    factors["step"] = statistics.fmean(copies["median_step_ms_per_copy"][c] / copies["alone_step_ms_per_copy"][c]
                                       for c in range(k))
    return factors


def pooled_phase_factors(probes: list[dict]) -> dict:
    """The mean of several interleaved probes' phase factors (e.g. one before and one after a backend's part
    of a study)."""
    each = [phase_factors(p) for p in probes]
    return {key: statistics.fmean(f[key] for f in each) for key in each[0]}
