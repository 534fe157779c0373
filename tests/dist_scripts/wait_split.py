"""A rank that arrives late at a collective, with real gloo processes:

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tests/dist_scripts/wait_split.py --out DIR --sleep 1.0

Per step, rank 1 sleeps --sleep seconds in "forward" before the loss all-reduce; rank 0 arrives at once.
The Instrumentation's end-of-run summary (rank 0) is written to DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gptdist.config import build_config
from gptdist.dist import init_distributed, teardown
from gptdist.instrument.instrumentation import Instrumentation


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sleep", type=float, default=1.0)
    args = p.parse_args()
    ctx = init_distributed("cpu", 120, need_group=True)
    cfg = build_config(None, {"model.preset": "test", "data.seq_len": 32, "instrument.summary_skip_steps": 0})
    run = Path(args.out)
    instr = Instrumentation(cfg, ctx, run)
    for step in (1, 2, 3):
        instr.begin_step(step)
        with instr.phase("forward"):
            if ctx.rank == 1:
                time.sleep(args.sleep)
        with instr.phase("loss_reduce"):
            x = torch.ones(1024)
            with instr.recorder.timed("all_reduce", x, "loss"):
                dist.all_reduce(x)
        instr.end_step(0.0)
    summary = instr.finish()
    if ctx.is_main:
        (run / "summary.json").write_text(json.dumps(summary))
    instr.close()
    teardown()


if __name__ == "__main__":
    main()
