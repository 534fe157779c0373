"""Check the data-parallel backends against a single-process reference, tensor by tensor.

Run under torchrun (gloo on CPU); each rank also computes the reference itself, on the full global
batch, so every rank checks its own replica:

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tests/dist_scripts/check_backends.py --out /tmp/r.json

For every variant (backend + parallel options) it builds a fresh "test"-preset GPT (rank r > 0 starts
from different weights, so the broadcast from rank 0 is checked too), trains `--steps` AdamW steps with
`--grad-accum` micro-steps each (rank r takes rows r*B..(r+1)*B of every micro-batch of the global
batch), and records the largest errors against the reference (max over ranks):

- grad_err: after the first step's sync, max over parameters of max|g - g_ref| / max|g_ref|
- nonsync_err: the same after the first (non-sync) micro-step, against THIS rank's local gradient
  (proves no gradient was averaged before the last micro-step)
- losses: each step's loss averaged over ranks; loss_err: max over steps of |loss - loss_ref| / loss_ref
- norm_err: max over steps of the relative error of the clipped global grad norm
- param_err: after the last step, max over parameters of max|p - p_ref| / max|p_ref|
- manual backends also report their all-reduce counts and launch order.
Rank 0 writes everything as JSON to --out; the test decides what is close enough.
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from gptdist.config import TrainSection
from gptdist.dist import all_reduce_scalar, init_distributed, teardown
from gptdist.model import GPT, PRESETS
from gptdist.optim import build_optimizer
from gptdist.parallel import backend_class
from gptdist.cli import exit_now

# name -> (backend, parallel options). Small manual/ddp caps give several buckets on the tiny model
# (c_fc's weight, 16 KiB, is larger than the 10 KiB cap and gets a bucket of its own).
SMALL = dict(bucket_cap_mb=0.01, first_bucket_mb=0.002)
VARIANTS = {
    "manual": ("manual", dict(SMALL)),
    "manual-no-overlap": ("manual", dict(SMALL, overlap=False)),
    "manual-default-buckets": ("manual", {}),
    "ddp": ("ddp", dict(bucket_cap_mb=0.01)),
    "ddp-no-bucket-view": ("ddp", dict(gradient_as_bucket_view=False)),
    "fsdp": ("fsdp", {}),
    "fsdp-no-reshard": ("fsdp", dict(reshard_after_forward=False)),
    # zero: options are ZeroOptions fields. Small buckets: slices cut parameters between ranks.
    "zero1": ("zero", dict(SMALL, stage=1)),
    "zero2": ("zero", dict(SMALL, stage=2)),
    "zero2-no-overlap": ("zero", dict(SMALL, stage=2, overlap=False, overlap_param_gather=False)),
    "zero2-default-buckets": ("zero", dict(stage=2)),
    "zero2-bf16": ("zero", dict(SMALL, stage=2, reduce_dtype="bf16")),  # gloo reduces bf16 in torch 2.13
}

SEED = 1234
LR, MAX_NORM = 1e-2, 0.5


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP's sharded params and grads) as the full tensor; a plain tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


# AdamW with the trainer's parameter groups (decay on >=2-D weights only), built by each backend.
TRAIN = TrainSection(lr=LR, beta1=0.9, beta2=0.95, weight_decay=0.1, fused_adamw="off")


def zero_full_grads(backend) -> dict:
    """The zero backend's averaged gradients as full tensors: all-gather every bucket's gradient shard."""
    import torch.distributed as dist

    grads = {}
    for bucket in backend.buckets:
        full_flat = torch.empty(bucket.padded)
        dist.all_gather_into_tensor(full_flat, bucket.grad_shard.contiguous())
        for name, p, offset in zip(bucket.plan.names, bucket.params, bucket.plan.offsets):
            grads[name] = full_flat[offset : offset + p.numel()].view(p.shape)
    return grads


def zero_decay_err(backend, ctx) -> float:
    """A first AdamW step on zero gradients moves nothing but the decoupled weight decay (m = v = 0):
    p -> p * (1 - lr * wd) for >=2-D weights, p unchanged for biases and LayerNorm gains. Hand-derived
    (lr 1, wd 0.5: exactly p / 2), so it checks each piece's group even where a slice cuts a parameter."""
    optimizer = backend.build_optimizer(TrainSection(lr=1.0, weight_decay=0.5, fused_adamw="off"), ctx.device)
    backend.zero_grad()
    before = {n: p.detach().clone() for n, p in backend.raw_model.named_parameters()}
    backend.optimizer_step(optimizer)
    backend.wait_for_params()
    return max(
        (p.detach() - (before[n] * 0.5 if p.dim() >= 2 else before[n])).abs().max().item()
        for n, p in backend.raw_model.named_parameters()
    )


def run_reference(gpt_cfg, x, y, rank, world, B):
    """Single process on the full global batch. Also the local-only gradient of the first micro-step."""
    torch.manual_seed(SEED)
    model = GPT(gpt_cfg)
    torch.manual_seed(SEED)
    local = GPT(gpt_cfg)  # same weights: this rank's slice only, no communication
    steps, A = x.shape[:2]
    _, loss = local(x[0, 0, rank * B : (rank + 1) * B], y[0, 0, rank * B : (rank + 1) * B])
    (loss / A).backward()
    local_grads = {n: p.grad.clone() for n, p in local.named_parameters()}

    gen = model.generate(x[0, 0, :2, :8].contiguous(), 4, temperature=0)  # at init, as the backends do
    opt = build_optimizer(model, TRAIN, torch.device("cpu"))
    losses, norms, first_grads = [], [], None
    for s in range(steps):
        step_loss = 0.0
        for a in range(A):
            _, loss = model(x[s, a], y[s, a])
            (loss / A).backward()
            step_loss += loss.item() / A
        if s == 0:
            first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))
        losses.append(step_loss)
        opt.step()
        opt.zero_grad()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return dict(losses=losses, norms=norms, grads=first_grads, local_grads=local_grads, params=params, gen=gen)


def run_variant(name, gpt_cfg, x, y, ctx, B, ref, generate=True):
    backend_name, options = VARIANTS[name]
    torch.manual_seed(SEED + ctx.rank)  # ranks > 0 differ until the backend broadcasts rank 0's weights
    model = GPT(gpt_cfg).to(ctx.device)
    cls = backend_class(backend_name)
    backend = cls(model, ctx, cls.Options(**options))
    is_manual = backend_name == "manual"
    is_zero = backend_name == "zero"
    out: dict = {}
    # Generation through the wrapped/sharded model, all ranks together, before any step.
    if generate:
        gen = backend.raw_model.generate(x[0, 0, :2, :8].contiguous(), 4, temperature=0)
        out["generate_equal"] = bool(torch.equal(gen, ref["gen"]))

    opt = backend.build_optimizer(TRAIN, ctx.device)
    steps, A = x.shape[:2]
    rows = slice(ctx.rank * B, (ctx.rank + 1) * B)
    losses, loss_errs, norm_errs, calls_per_step, launched_in_backward, launch_orders = [], [], [], [], [], []
    gathers_per_step = []
    for s in range(steps):
        local_loss = 0.0
        calls_before = backend.stats.all_reduce_calls if is_manual else backend.stats.reduce_calls if is_zero else 0
        gathers_before = backend.stats.gather_calls if is_zero else 0
        for a in range(A):
            backend.set_grad_sync(a == A - 1)  # before the forward
            _, loss = backend.module(x[s, a, rows].contiguous(), y[s, a, rows].contiguous())
            (loss / A).backward()
            local_loss += loss.item() / A
            if a < A - 1 and (is_manual or is_zero):
                calls_now = backend.stats.all_reduce_calls if is_manual else backend.stats.reduce_calls
                assert calls_now == calls_before, "gradient collective on a non-sync micro-step"
            if s == 0 and a == 0 and A > 1 and backend_name != "fsdp":
                out["nonsync_err"] = max(
                    rel_err(p.grad, ref["local_grads"][n]) for n, p in backend.raw_model.named_parameters()
                )
        if is_manual or is_zero:
            launched_in_backward.append(len(backend.launch_order))
        backend.finish_grad_sync()
        if is_manual or is_zero:
            calls_now = backend.stats.all_reduce_calls if is_manual else backend.stats.reduce_calls
            calls_per_step.append(calls_now - calls_before)
            launch_orders.append(backend.last_launch_order)
        if s == 0:
            grads = zero_full_grads(backend) if is_zero else {n: full(p.grad) for n, p in backend.raw_model.named_parameters()}
            out["grad_err"] = max(rel_err(grads[n], ref["grads"][n]) for n, _ in backend.raw_model.named_parameters())
        norm = backend.clip_grad_norm(MAX_NORM)
        norm_errs.append(abs(norm - ref["norms"][s]) / ref["norms"][s])
        step_loss = all_reduce_scalar(local_loss, ctx, "sum") / ctx.world_size
        losses.append(step_loss)
        loss_errs.append(abs(step_loss - ref["losses"][s]) / ref["losses"][s])
        backend.optimizer_step(opt)
        backend.zero_grad()
        if is_zero:
            gathers_per_step.append(backend.stats.gather_calls - gathers_before)
            backend.wait_for_params()  # before reading parameters outside a forward
    out["losses"] = losses  # the same on every rank (all-reduced)
    out["loss_err"] = max(loss_errs)
    out["norm_err"] = max(norm_errs)
    out["param_err"] = max(
        rel_err(full(p.detach()), ref["params"][n]) for n, p in backend.raw_model.named_parameters()
    )
    out["clipped"] = any(n > MAX_NORM for n in ref["norms"])
    if is_zero:
        out["num_buckets"] = len(backend.buckets)
        out["calls_per_step"] = calls_per_step
        out["gathers_per_step"] = gathers_per_step
        out["launch_orders"] = launch_orders
        out["launched_in_backward"] = launched_in_backward
        out["decay_err"] = zero_decay_err(backend, ctx)
        # Parameters cut between two ranks' slices (the case per-piece groups exist for).
        out["cut_params"] = len({pc.param for pc in backend.pieces if pc.end - pc.start < pc.param.numel()})
    if is_manual:
        out["num_buckets"] = len(backend.buckets)
        out["calls_per_step"] = calls_per_step
        out["launch_orders"] = launch_orders
        out["launched_in_backward"] = launched_in_backward
        out["bucket_names"] = [b.names for b in backend.buckets]
    backend.close()
    del backend, model, opt
    # Free this variant's DDP/FSDP state while the process group still exists. Left to interpreter
    # shutdown (after teardown), a process that had run fsdp and another backend sometimes aborted
    # with "terminate called without an active exception".
    gc.collect()
    return out


def reduce_max_over_ranks(out: dict, ctx) -> dict:
    """Errors: the worst rank. Booleans: all ranks. Everything else: rank 0's value."""
    result = {}
    for key, value in out.items():
        if key.endswith("_err"):
            result[key] = all_reduce_scalar(value, ctx, "max")
        elif isinstance(value, bool):
            result[key] = all_reduce_scalar(float(value), ctx, "min") == 1.0
        else:
            result[key] = value
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=16)
    args = parser.parse_args()

    ctx = init_distributed("cpu", timeout_s=120, need_group=True)
    try:
        gpt_cfg = PRESETS["test"]
        world, B, T = ctx.world_size, args.micro_batch, args.seq_len
        g = torch.Generator().manual_seed(SEED)
        tokens = torch.randint(0, gpt_cfg.vocab_size, (args.steps, args.grad_accum, world * B, T + 1), generator=g)
        x, y = tokens[..., :-1].contiguous(), tokens[..., 1:].contiguous()  # (steps, grad_accum, world*B, T)
        ref = run_reference(gpt_cfg, x, y, ctx.rank, world, B)
        results = {"world_size": world, "torch": torch.__version__, "variants": {}}
        for name in args.variants.split(","):
            out = run_variant(name, gpt_cfg, x, y, ctx, B, ref, generate=not args.no_generate)
            results["variants"][name] = reduce_max_over_ranks(out, ctx)
        if ctx.rank == 0:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        # No closing dist.barrier(): with gloo, a barrier's work object keeps earlier all-reduce works
        # (and their tensors) alive and is freed later on gloo's worker thread; if that happens while
        # Python shuts down, the thread cannot take the GIL and the process aborts ("terminate called
        # without an active exception").
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    exit_now(main())  # skips interpreter shutdown: gloo's worker-thread abort (gptdist/cli.py)
