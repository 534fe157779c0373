"""The scaling study: "if one rank takes T, do N ranks take T/N? If not, why?"

    python launch/scaling.py --config configs/scaling_cpu.yaml --backends manual,ddp,fsdp --world-sizes 1,2,4

runs one training config per backend at each world size (and "2x4" = 2 nodes x 4 ranks), in two modes,
reads the instrumentation every run writes, and reports speed-up, efficiency and where the time went.

MODES (docs/scaling.md)
- strong: a fixed global batch G = per-rank batch b x the largest world size, split over the ranks
  (data.batch_size = G/N, no accumulation). Ideal: T_N = T_1 / N. Efficiency E = T_1 / (N·T_N).
- weak: a fixed per-rank batch b (global batch b·N). Ideal: T_N = T_1. Efficiency = per-rank
  throughput at N / at 1 = T_1 / T_N.
At the largest world size both modes run the same job (run once, used for both).

WHAT A RUN GIVES (ranks/rank{r}/steps.jsonl, first `warmup` steps left out; per step, over ranks):
    step      the step PERIOD: mean over ranks of the time from the rank's previous step end to this
              one's (`end_unix_s`; rows without it: step_ms). Each rank's periods add up to the run's wall
              time, so this is the step time throughput sees (tokens/s = tokens per step / step).
    slowest   max over ranks of step_ms (a rank's step from its own start to its end). Reported, not used:
              when ranks drift apart (e.g. oversubscribed cores), a rank that finished the previous step
              early starts early and waits in the first collective, so its step_ms includes time the
              others spent still finishing the previous step; the max over ranks then adds up to MORE
              than the wall time. slowest - step shows how far the ranks' step boundaries drift.
    compute   mean over ranks of time/compute_ms
    comm      mean over ranks of comm/total_ms; overlap likewise
    exposed   MIN over ranks of comm/exposed_ms: the last rank to arrive waits least, so its exposed
              time is the collectives' own cost
    wait      mean over ranks of (exposed_r - min exposed): time ranks sat in a collective waiting
              for a slower rank (stragglers, uneven load)
    data      mean over ranks of time/data_ms
Medians over steps (with p25/p75); `other` = median step - the other medians (Python, logging and
work between steps, and the residual of taking medians separately), so the parts add up to the median
step exactly.

GAP ATTRIBUTION. The gap to ideal, T_N - ideal_N, is split part by part:
    part_N - share·part_1   for part in (compute, exposed, wait, data, other),   share = 1/N (strong) or 1 (weak)
    extra compute  = compute_N - share·compute_1   (FSDP's extra copies, oversubscribed cores, small-batch inefficiency)
    exposed comm   = exposed_N - share·exposed_1
    straggler wait = wait_N - share·wait_1
    data           = data_N - share·data_1
    other          = other_N - share·other_1
The parts sum to the gap exactly (tested).

Modules: `plan`, `analysis`, `report` (the names below are re-exported here).
"""

from gptdist.studies.scaling.plan import (  # noqa: F401
    REPO, Layout, parse_world_sizes, RunSpec, plan_runs, launch_commands, run_spec,
)
from gptdist.studies.scaling.analysis import (  # noqa: F401
    PARTS, PART_TITLES, Stat, RunResult, per_step_values, summarize_steps, read_rank_rows, collect_run, efficiency, attribute_gap, analyse,
)
from gptdist.studies.scaling.report import (  # noqa: F401
    markdown_table, answer_in_words, write_report, comm_split_table,
)
from gptdist.studies.plotting import plot_predicted_vs_measured, plot_report  # noqa: F401
