"""The optimisation ladder: one training step made faster one change at a time, each change measured.

    python launch/ladder.py --config configs/ladder/default.yaml --out runs/ladder/gpt2

A ladder file (configs/ladder/*.yaml) holds a baseline (`base`: dotted settings of `gptdist.config`) and a
list of rungs; each rung is the rung before it plus exactly one change (`set: {train.compile: true}`).
Side rungs branch from a named rung (`from:`), e.g. activation checkpointing and the larger micro-batch it
allows. `needs: cuda` marks a change that means nothing on a CPU: there the rung is reported as skipped and
the rungs after it run without its change.

Per rung, on the same model shape and the same random batch, with the trainer's step (gptdist/train_step.py,
through `gptdist.studies.throughput.TimedTrainStep`: forward + backward + clipping + AdamW with parameter
groups, synchronised clocks):
- step time: warm-up (compile included), then `rounds` x `steps` timed steps, the rungs interleaved round by
  round (order flipped every round) so that a noisy machine slows them alike; median with p10/p90;
- tokens/s, MFU (against the device's bf16 dense peak for every rung: one yardstick, the goal's);
- speed-up = tokens/s over the previous rung's and over the baseline's;
- memory: model + optimizer state (counted from the tensors) plus the rise during one step (CUDA: the
  allocator's peak; CPU: the process's peak RSS, reset through /proc/self/clear_refs: coarse);
- a short torch.profiler window after the timing: top ops by self time (CUDA: kernels by GPU time) and
  which ops got faster or slower than in the previous rung; optionally a Chrome trace per rung.

Modules: `spec`, `runner`, `report`, `cli` (the names below are re-exported here).
"""

from gptdist.studies.ladder.spec import (  # noqa: F401
    RUNNER_KEYS, NEEDS, SPEC_KEYS, RUNG_KEYS, Rung, Sweep, Ladder, apply_change, compose_ladder, load_ladder, PlannedRung, plan_ladder, bench_settings,
)
from gptdist.studies.ladder.runner import (  # noqa: F401
    state_bytes, step_memory_rise, profile_window, top_ops, ops_diff, LadderOptions, run_ladder,
)
from gptdist.studies.ladder.report import (  # noqa: F401
    to_markdown, plot,
)
from gptdist.studies.ladder.cli import (  # noqa: F401
    parse_args, main,
)
