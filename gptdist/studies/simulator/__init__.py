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
    step_jitter_ms  σ of the step's independent step-to-step variation (from successive differences, so a
                  slow drift of the machine's speed is left out): the straggler wait below
Several 1-rank runs of one job (measured before and after a study) pool their steps into one timeline.

A REHEARSAL (`GPTDIST_FAKE_WORLD=N python launch/train.py ...`, gptdist/dist.py) is one process doing rank 0's work
at N ranks on torch's fake process group: FSDP's 1/N shards and its copies into and out of the collectives'
buffers, the optimizer on the shard. Its timeline (world_size N; comm_ms, its fake collectives' own time) is
replayed as it is by a layout of N ranks at its batch (`timeline_for_tokens`): only the communication is
modelled. It is not a multi-rank training run: nothing is exchanged, and `timeline_from_run` refuses real ones.

THE COMMUNICATION MODEL: time(op, bytes, N) in ms, from comm_bench's measured tables (`comm_from_table`,
interpolated), its α–β fits (`gptdist.studies.alphabeta`; any N, extrapolated) or a named hardware profile
(`PROFILES`, every number a stated assumption with its source). A table measured with `comm_bench --gap-ms G`
(each call after G ms of idle link) beside the back-to-back one also prices the idle time before a call: the
schedule passes how long its one stream sat idle before each collective (`comm_time`), and the saving the two
tables measured at that size is taken in proportion up to G ms of idle (a token-bucket link, as tc tbf on the
emulated cluster, sends its bucket at line speed after an idle spell; back-to-back calls never see it).

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
recorder sees every FSDP collective as blocking). Optimizer, clip and zero_grad: 1/N of a 1-rank
timeline's (the shard), a rehearsal's as it measured them.
Compute per unit is split in proportion to its model FLOPs. One comm stream for all collectives.

COMPUTE AT N RANKS: `compute_scale` multiplies the batch-dependent part (pre, backward, bucket ready
times): 1/N for strong scaling (the per-rank batch shrinks), 1 for weak scaling. With 1-rank timelines
measured at several batches, `timeline_for_tokens` picks the one measured at the rank's own batch (scale 1)
or the nearest one with an affine compute(batch) through the two around it. `contention` multiplies
all compute: 1 on GPUs (a rank owns its device); on a CPU with C cores and N ranks of t threads each,
`cpu_contention(N, t, C)` = max(1, N·t / C) (a rank gets C/(N·t) of a core's time). That is the one
thing the simulator does not know by itself; a measured factor replaces the formula where one exists:
`contention_from_runs` (K copies of the 1-rank job run at once, no communication) or the `lockstep` probe,
whose interleaved, phase-aligned form gives the forward-backward and the work after it (clip, optimizer: the
memory-bound phases DP ranks run at the same moments) their own factors (`update_contention`).
docs/scaling.md explains how it was validated.

COMPUTE WHILE A COLLECTIVE RUNS (`cpu_overlap`, the fraction of full speed compute keeps while one runs):
1 on GPUs (collectives run on the GPU's copy engines/SMs and NCCL's own streams, the host is free). On a CPU,
gloo moves and sums the buckets with CPU threads on the same cores the ranks compute on; comm_bench's
times were measured with every core doing communication. With N ranks of t threads on C cores, a rank has
spare cores for its collectives only when N·t < C: `cpu_overlap(N, t, C)` = min(1, (C − N·t)/N), so 0
once the ranks fill the cores (compute pauses while a collective runs: overlap buys nothing), 1 with a
spare core per rank.

THE STRAGGLER WAIT (`arrival_wait_ms`): ranks whose compute jitters independently reach a collective at
different times, and every rank waits for the slowest. Per step: e_N · σ · √k, where σ is the timeline's
jitter (scaled with its compute), e_N the expected lead of the slowest of N normal samples over their mean
(`expected_max_excess`: 1/√π at 2 ranks) and k the times per step the ranks must meet (1 for the all-reduce
schedule; every collective for FSDP without prefetch, whose compute between collectives jitters by σ/√k each).
It is the "straggler wait" part of the scaling study, predicted; near 0 for a GPU that only its rank uses.

Modules: `timeline`, `comm_model`, `schedule` (the names below are re-exported here); `lockstep`, the lock-step
contention probe behind `launch/simulate.py lockstep` (`--interleave`: per-phase factors).
"""

from gptdist.studies.simulator.timeline import (  # noqa: F401
    POST_PHASES, BucketTiming, Timeline, load_timeline, timeline_from_steps, timeline_from_run, modelled_timeline,
)
from gptdist.studies.simulator.comm_model import (  # noqa: F401
    CommFn, comm_from_fit, comm_from_table, comm_for_layout, inter_tables, HardwareProfile, PROFILES, comm_from_profile, batch_compute_scale, timeline_for_tokens, cpu_contention, cpu_overlap, contention_from_runs,
)
from gptdist.studies.simulator.schedule import (  # noqa: F401
    SCHEDULE_OF, CommEvent, Prediction, simulate_allreduce, fsdp_units, simulate_fsdp, simulate, expected_max_excess,
    arrival_wait_ms, collective_sizes,
)
