"""What the collective recorder sees from each backend, with real gloo processes:

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tests/dist_scripts/instr_backends.py --out /tmp/r.json

- manual (small buckets, grad accumulation 2): the records of each micro-step (none expected on the
  non-sync one; one all-reduce per bucket on the synced one), and the bucket sizes.
- ddp: gradients after each step with the timing comm hook vs. a DDP without it (same weights, same
  batches), compared bitwise; the hook's records per step.
- fsdp: per step, the all-gathers and reduce-scatters per FSDP group, and each group's parameter
  sizes (full shapes), so the test can compute what the sharded sizes must be.
- zero (stages 1 and 2, small buckets, grad accumulation 2): the records of each micro-step, of the clip
  and of the optimizer step (the parameter all-gathers), and each bucket's parameter count.
Rank 0 writes everything as JSON to --out.
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
import torch.distributed as dist

from gptdist.parallel.ddp import DDPOptions
from gptdist.parallel.fsdp import FSDPOptions
from gptdist.parallel.manual import ManualOptions
from gptdist.dist import init_distributed, teardown
from gptdist.instrument.recorder import CollectiveRecorder
from gptdist.model import GPT, PRESETS
from gptdist.parallel import backend_class
from gptdist.cli import exit_now

SEED = 1234
B, T = 2, 16


def batches(steps: int, accum: int, rank: int, vocab: int):
    g = torch.Generator().manual_seed(SEED + rank)
    tokens = torch.randint(0, vocab, (steps, accum, B, T + 1), generator=g)
    return tokens[..., :-1].contiguous(), tokens[..., 1:].contiguous()


def rows(records) -> list[dict]:
    return [{"op": r.op, "label": r.label, "bytes": r.bytes, "blocking": r.blocking, "dtype": r.dtype,
             "group_size": r.group_size, "duration_ms": r.duration_s * 1e3 if r.duration_s is not None else None}
            for r in records]


def run_manual(ctx, cfg_gpt, steps=2, accum=2) -> dict:
    torch.manual_seed(SEED)
    rec = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size)
    backend = backend_class("manual")(GPT(cfg_gpt), ctx, ManualOptions(bucket_cap_mb=0.01, first_bucket_mb=0.002), recorder=rec)
    start_up = rows(rec.collect())
    x, y = batches(steps, accum, ctx.rank, cfg_gpt.vocab_size)
    micro = []
    for s in range(steps):
        for m in range(accum):
            rec.set_step(s + 1)
            backend.set_grad_sync(m == accum - 1)
            _, loss = backend.module(x[s, m], y[s, m])
            (loss / accum).backward()
            backend.finish_grad_sync()
            micro.append({"step": s + 1, "micro": m, "sync": m == accum - 1, "records": rows(rec.collect())})
        backend.zero_grad()
    out = {"num_buckets": len(backend.buckets), "bucket_bytes": [b.bytes for b in backend.buckets],
           "grad_bytes": sum(p.numel() * p.element_size() for p in backend.raw_model.parameters()),
           "start_up": start_up, "micro_steps": micro}
    backend.close()
    return out


def run_ddp(ctx, cfg_gpt, steps=3) -> dict:
    x, y = batches(steps, 1, ctx.rank, cfg_gpt.vocab_size)
    grads, records = {}, []
    for timed in (False, True):
        torch.manual_seed(SEED)
        rec = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size) if timed else None
        backend = backend_class("ddp")(GPT(cfg_gpt), ctx, DDPOptions(bucket_cap_mb=0.01), recorder=rec)
        opt = torch.optim.SGD(backend.raw_model.parameters(), lr=0.1)
        grads[timed] = []
        for s in range(steps):
            if rec is not None:
                rec.collect()
            _, loss = backend.module(x[s, 0], y[s, 0])
            loss.backward()
            grads[timed].append({n: p.grad.clone() for n, p in backend.raw_model.named_parameters()})
            if rec is not None:
                records.append(rows(rec.collect()))
            opt.step()
            backend.zero_grad()
        backend.close()
        del backend, opt
        gc.collect()
    identical = all(torch.equal(a[n], b[n]) for a, b in zip(grads[False], grads[True]) for n in a)
    max_diff = max((a[n] - b[n]).abs().max().item() for a, b in zip(grads[False], grads[True]) for n in a)
    return {"bitwise_identical": identical, "max_abs_diff": max_diff, "steps": records,
            "grad_bytes": sum(p.numel() * 4 for p in GPT(cfg_gpt).parameters())}


def run_fsdp(ctx, cfg_gpt, steps=2) -> dict:
    torch.manual_seed(SEED)
    rec = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size)
    model = GPT(cfg_gpt)
    groups = {"module=root": [], **{f"module=transformer.h.{i}": [] for i in range(cfg_gpt.n_layer)}}
    for name, p in model.named_parameters():
        owner = next((g for g in groups if g != "module=root" and name.startswith(g.removeprefix("module=") + ".")), "module=root")
        groups[owner].append(list(p.shape))
    backend = backend_class("fsdp")(model, ctx, FSDPOptions(), recorder=rec)
    rec.collect()
    x, y = batches(steps, 1, ctx.rank, cfg_gpt.vocab_size)
    per_step = []
    for s in range(steps):
        backend.set_grad_sync(True)
        _, loss = backend.module(x[s, 0], y[s, 0])
        loss.backward()
        backend.finish_grad_sync()
        backend.clip_grad_norm(1.0)
        per_step.append(rows(rec.collect()))
        backend.zero_grad()
    backend.close()
    del backend
    gc.collect()
    return {"group_param_shapes": groups, "steps": per_step}


def run_zero(ctx, cfg_gpt, stage, steps=2, accum=2) -> dict:
    from gptdist.config import TrainSection
    from gptdist.parallel.zero import ZeroOptions

    torch.manual_seed(SEED)
    rec = CollectiveRecorder(ctx.device, ctx.rank, ctx.world_size)
    options = ZeroOptions(stage=stage, bucket_cap_mb=0.01, first_bucket_mb=0.002)
    backend = backend_class("zero")(GPT(cfg_gpt), ctx, options, recorder=rec)
    optimizer = backend.build_optimizer(TrainSection(), ctx.device)
    rec.collect()
    x, y = batches(steps, accum, ctx.rank, cfg_gpt.vocab_size)
    per_step = []
    for s in range(steps):
        micro = []
        for m in range(accum):
            backend.set_grad_sync(m == accum - 1)
            _, loss = backend.module(x[s, m], y[s, m])
            (loss / accum).backward()
            backend.finish_grad_sync()
            micro.append(rows(rec.collect()))
        backend.clip_grad_norm(1.0)
        clip = rows(rec.collect())
        backend.optimizer_step(optimizer)
        backend.wait_for_params()
        per_step.append({"micro": micro, "clip": clip, "optimizer": rows(rec.collect())})
        backend.zero_grad()
    out = {"bucket_numels": [b.plan.numel for b in backend.buckets],
           "param_bytes": sum(p.numel() * 4 for p in backend.raw_model.parameters()), "steps": per_step}
    backend.close()
    del backend, optimizer
    gc.collect()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ctx = init_distributed("cpu", timeout_s=120, need_group=True)
    try:
        cfg_gpt = PRESETS["test"]
        result = {"world_size": ctx.world_size, "manual": run_manual(ctx, cfg_gpt), "ddp": run_ddp(ctx, cfg_gpt),
                  "fsdp": run_fsdp(ctx, cfg_gpt), "zero1": run_zero(ctx, cfg_gpt, 1), "zero2": run_zero(ctx, cfg_gpt, 2)}
        flags = torch.tensor([float(result["ddp"]["bitwise_identical"])])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # every rank's gradients, not only rank 0's
        result["ddp"]["bitwise_identical_all_ranks"] = bool(flags.item() == 1.0)
        if ctx.rank == 0:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    exit_now(main())  # skips interpreter shutdown: gloo's worker-thread abort (gptdist/cli.py)
