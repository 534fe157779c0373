"""torchrun --nproc-per-node W tests/dist_scripts/eval_counts.py OUT.json

Runs HellaSwag, LAMBADA and validation loss on a tiny GPT spread over W gloo ranks; rank 0 writes the
results and every rank's number of forward calls (which must be equal: the FSDP rule)."""

import json
import sys

import torch.distributed as dist

from eval_stubs import run_all_evals
from gptdist.dist import distributed

with distributed("cpu", need_group=True) as ctx:
    out = run_all_evals(ctx)
    per_rank = [None] * ctx.world_size
    dist.all_gather_object(per_rank, (out["hellaswag_calls"], out["lambada_calls"], out["calls"]))
    out["calls_per_rank"] = per_rank
    out["world_size"] = ctx.world_size
    if ctx.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
