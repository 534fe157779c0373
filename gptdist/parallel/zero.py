"""`zero`: ZeRO stage 1 and 2 written by hand (Rajbhandari et al. 2020), on the manual backend's buckets.

Data parallelism keeps N identical copies of everything. ZeRO notices that the optimizer update is
elementwise: rank r only needs to UPDATE 1/N of the parameters, if afterwards every rank receives the
others' updated slices. So each rank keeps AdamW's two moments for its slice only (stage 1), and the
averaged gradient for its slice only (stage 2).

Layout (the same on every rank, so slices line up):

- Parameters are grouped into the manual backend's buckets (`gptdist/parallel/buckets.py`: reverse
  registration order, small first bucket, `bucket_cap_mb` cap). Each bucket's parameters become views
  of one flat fp32 buffer, padded to a multiple of N: `flat_params` (padded,).
- Rank r owns elements [r*S, (r+1)*S) of every bucket (S = padded / N): its SHARD of that bucket.
- The optimizer sees PIECES: a piece is the part of one parameter that falls into this rank's shard,
  a 1-D view of `flat_params`, its `.grad` a view of the rank's gradient shard. A shard can span several
  parameters, and one parameter can be cut between two ranks; cutting at parameter boundaries (rather
  than one flat tensor with a per-element weight-decay mask) lets the pieces go into torch's own AdamW
  with the trainer's two groups (decay on >=2-D weights only, `gptdist.optim.param_groups`): the update
  is exactly torch's, no mask to store, and fused/foreach AdamW work unchanged.
- The tied wte/lm_head weight is one Parameter, so it sits in one bucket once; its gradient hook fires
  once, after both the embedding and the lm_head contributions (as in the manual backend).

One step:

    stage 1: backward -> bucket all-reduce (async, in bucket order, as manual)  grads: full, N copies
    stage 2: backward -> bucket reduce-scatter (async, in bucket order)          grads: 1/N per rank
    then:    global-norm clip over the shards (one scalar all-reduce)
             AdamW on this rank's pieces (moments: 1/N per rank)
             all-gather each bucket's updated shard into `flat_params` (async, forward order); with
             overlap_param_gather the next forward waits per module for its bucket only

Stage 2 gradients: on the synced micro-step each parameter's gradient (autograd's own tensor) is copied
into a full-size staging buffer for its bucket as soon as it is ready and then dropped (`p.grad = None`);
the bucket is reduce-scattered into the rank's persistent gradient shard, and the staging buffer is
freed after the wait. Between steps only the shard (1/N) exists. On non-synced micro-steps (gradient
accumulation) autograd accumulates full local gradients in `p.grad` and no collective runs, as FSDP2's
no-sync does; the last micro-step reduces the accumulated sum once.

Checkpoints: `checkpoint_optimizer` gathers the moments into an AdamW over the model's own parameters
(the per-parameter form every other backend saves), and scatters what was loaded back into the pieces.
So a zero checkpoint loads into manual/ddp/fsdp at any world size, and back.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from gptdist.dist import DistContext
from gptdist.errors import ConfigError
from gptdist.optim import param_groups, use_fused
from gptdist.parallel.base import Backend
from gptdist.parallel.broadcast import broadcast_from_rank0
from gptdist.parallel.buckets import MB, Bucket, plan_buckets

MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's per-element state


@dataclass
class ZeroOptions:
    """`parallel.zero.*`: the handwritten ZeRO backend (sharded optimizer state, and gradients at stage 2).

    Fields:
        stage: 1 = shard the optimizer state; 2 = also shard gradients (reduce-scatter during backward)
        bucket_cap_mb: bucket size cap (MiB) for the gradient reduction and the parameter all-gather
        first_bucket_mb: the first bucket (last layers) is small so its reduction starts early (MiB)
        overlap: reduce each bucket during backward; false = all buckets after backward
        overlap_param_gather: the parameter all-gather runs until the next forward needs each bucket
        reduce_dtype: gradient communication dtype (stage 2; gloo and NCCL both reduce bf16)
    """

    stage: int = 2
    bucket_cap_mb: float = 25.0
    first_bucket_mb: float = 1.0
    overlap: bool = True
    overlap_param_gather: bool = True
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ConfigError(f"zero stage must be 1 or 2, not {self.stage!r} (stage 3 is --backend fsdp)")
        if self.reduce_dtype not in ("fp32", "bf16"):
            raise ConfigError(f"zero reduce_dtype must be fp32 or bf16, not {self.reduce_dtype!r}")
        if self.reduce_dtype == "bf16" and self.stage == 1:
            raise ConfigError("zero reduce_dtype=bf16 is implemented for stage 2 only")
        if self.bucket_cap_mb <= 0 or self.first_bucket_mb <= 0:
            raise ConfigError("zero bucket sizes must be > 0")


@dataclass
class ShardedBucket:
    """One bucket: its parameters flattened into `flat_params`, and this rank's shard of it."""

    plan: Bucket  # names, shapes, offsets, numel (from the planner)
    params: list[nn.Parameter]
    flat_params: torch.Tensor  # (padded,): every parameter of the bucket is a view into it
    shard_numel: int  # S = padded / world
    shard_start: int  # rank * S
    grad_shard: torch.Tensor  # (S,): this rank's averaged gradient (stage 1: a view of grad_full)
    grad_full: Optional[torch.Tensor] = None  # (padded,): stage 1 always; stage 2 only while reducing
    reduce_out: Optional[torch.Tensor] = None  # stage 2: the reduce-scatter's output (grad_shard, or bf16)

    @property
    def padded(self) -> int:
        return self.flat_params.numel()


@dataclass
class Piece:
    """The part of one parameter inside this rank's shard: param.view(-1)[start:end] = `tensor`."""

    tensor: nn.Parameter  # 1-D view of the bucket's flat_params, what the optimizer updates
    param: nn.Parameter  # the model parameter it belongs to
    start: int  # element range within the flattened parameter
    end: int


@dataclass
class ZeroStats:
    reduce_calls: int = 0  # gradient collectives (all-reduce in stage 1, reduce-scatter in stage 2)
    gather_calls: int = 0  # parameter all-gathers
    synced_steps: int = 0


class ZeroBackend(Backend):
    name = "zero"
    needs_group = True
    Options = ZeroOptions

    def __init__(self, model: nn.Module, ctx: DistContext, options: ZeroOptions, recorder=None):
        super().__init__(model, ctx, options, recorder)
        self.stage = options.stage
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.reduce_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[options.reduce_dtype]
        if self.world_size > 1:
            broadcast_from_rank0(model, self.recorder)

        named = list(model.named_parameters())  # the tied wte/lm_head weight appears once
        self.param_names = {p: n for n, p in named}
        plans = plan_buckets(named, int(options.bucket_cap_mb * MB), int(options.first_bucket_mb * MB))
        self.buckets = [self._flatten(plan, dict(named)) for plan in plans]
        self._bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b.params}
        self._offset_of = {p: off for b in self.buckets for p, off in zip(b.params, b.plan.offsets)}
        self.pieces = [piece for b in self.buckets for piece in self._pieces(b)]
        if not self.pieces:
            raise ConfigError(f"zero: the model is too small to give every one of {self.world_size} ranks a slice")

        self._grad_hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in self._bucket_of]
        # Before a module's forward, wait for the all-gather of the buckets holding its own parameters.
        self._forward_hooks = []
        for module in model.modules():
            own = {self._bucket_of[p] for p in module.parameters(recurse=False) if p in self._bucket_of}
            if own:
                hook = module.register_forward_pre_hook(lambda _m, _args, own=sorted(own): self._wait_params(own))
                self._forward_hooks.append(hook)
        self._gathers: dict[int, tuple[dist.Work, torch.Tensor]] = {}  # bucket -> (work, its send buffer)
        self.stats = ZeroStats()
        self.last_launch_order: list[int] = []
        self._reset_step()

    # --- layout ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _flatten(self, plan: Bucket, params_by_name: dict[str, nn.Parameter]) -> ShardedBucket:
        """Make the bucket's parameters views of one padded flat buffer; allocate the gradient storage."""
        padded = math.ceil(plan.numel / self.world_size) * self.world_size
        flat = torch.zeros(padded, dtype=plan.dtype, device=plan.device)
        params = [params_by_name[name] for name in plan.names]
        for p, offset in zip(params, plan.offsets):
            flat[offset : offset + p.numel()].copy_(p.detach().view(-1))
            p.data = flat[offset : offset + p.numel()].view(p.shape)
        shard = padded // self.world_size
        start = self.rank * shard
        bucket = ShardedBucket(plan, params, flat, shard, start, grad_shard=torch.empty(0))
        if self.stage == 1:
            # As in the manual backend: p.grad is a view of the bucket, autograd accumulates in place.
            bucket.grad_full = torch.zeros_like(flat)
            for p, offset in zip(params, plan.offsets):
                p.grad = bucket.grad_full[offset : offset + p.numel()].view(p.shape)
            bucket.grad_shard = bucket.grad_full[start : start + shard]
        else:
            bucket.grad_shard = torch.zeros(shard, dtype=plan.dtype, device=plan.device)
        return bucket

    def _pieces(self, bucket: ShardedBucket) -> list[Piece]:
        lo, hi = bucket.shard_start, bucket.shard_start + bucket.shard_numel
        pieces = []
        for p, offset in zip(bucket.params, bucket.plan.offsets):
            start, end = max(offset, lo), min(offset + p.numel(), hi)
            if start >= end:
                continue
            tensor = nn.Parameter(bucket.flat_params[start:end])  # shares the flat buffer's storage
            tensor.grad = bucket.grad_shard[start - lo : end - lo]
            pieces.append(Piece(tensor, p, start - offset, end - offset))
        return pieces

    # --- gradients -------------------------------------------------------------------------------
    def _reset_step(self) -> None:
        self._pending = [len(b.params) for b in self.buckets]
        self._next_to_launch = 0  # the order rule (see manual.py): buckets launch in index order only
        self._works: list[dist.Work] = []
        self.launch_order: list[int] = []

    def _on_grad_ready(self, p: nn.Parameter) -> None:
        if not self._sync:
            return  # accumulation micro-step: gradients stay local
        i = self._bucket_of[p]
        if self.stage == 2:
            self._stage_grad(i, p)
        elif p.grad is None or p.grad.data_ptr() != self.buckets[i].grad_full[self._offset_of[p]:].data_ptr():
            raise RuntimeError("zero backend (stage 1): a gradient is no longer a view of its bucket "
                               "(optimizer.zero_grad() or p.grad = None?); call backend.zero_grad() instead")
        self._pending[i] -= 1
        if self._pending[i] < 0:
            raise RuntimeError("zero backend: a second synced backward before finish_grad_sync()")
        if self._pending[i] == 0:
            self.recorder.mark("bucket_ready", i, self.buckets[i].plan.bytes)
        if self.options.overlap:
            while self._next_to_launch < len(self.buckets) and self._pending[self._next_to_launch] == 0:
                self._launch(self._next_to_launch)

    @torch.no_grad()
    def _stage_grad(self, i: int, p: nn.Parameter) -> None:
        """Stage 2: copy p's finished gradient into bucket i's staging buffer and drop autograd's copy."""
        offset = self._offset_of[p]
        self._staging(i)[offset : offset + p.numel()].copy_(p.grad.view(-1))
        p.grad = None

    def _staging(self, i: int) -> torch.Tensor:
        """Stage 2: bucket i's full-size gradient buffer for this step (zeros: unused parameters and
        the padding reduce as zero)."""
        bucket = self.buckets[i]
        if bucket.grad_full is None:
            bucket.grad_full = torch.zeros(bucket.padded, dtype=self.reduce_dtype, device=bucket.flat_params.device)
        return bucket.grad_full

    def _launch(self, i: int) -> None:
        """The one place a gradient collective is issued: bucket i, asynchronously, SUM (divided later)."""
        assert i == self._next_to_launch, "buckets must be launched in index order"
        bucket = self.buckets[i]
        if self.stage == 1:
            work = dist.all_reduce(bucket.grad_full, op=dist.ReduceOp.SUM, async_op=True)
            self._works.append(self.recorder.track("all_reduce", bucket.grad_full, f"bucket={i}", work))
        else:
            out = bucket.grad_shard if self.reduce_dtype == bucket.grad_shard.dtype else \
                torch.empty(bucket.shard_numel, dtype=self.reduce_dtype, device=bucket.grad_shard.device)
            bucket.reduce_out = out
            work = dist.reduce_scatter_tensor(out, bucket.grad_full, op=dist.ReduceOp.SUM, async_op=True)
            self._works.append(self.recorder.track("reduce_scatter", bucket.grad_full, f"bucket={i}", work))
        self.launch_order.append(i)
        self.stats.reduce_calls += 1
        self._next_to_launch += 1

    def finish_grad_sync(self) -> None:
        if not self._sync:
            return
        while self._next_to_launch < len(self.buckets):
            i = self._next_to_launch
            if self.stage == 2:  # a parameter whose hook did not fire this micro-step: stage what it has
                for p in self.buckets[i].params:
                    if p.grad is not None:
                        self._stage_grad(i, p)
                self._staging(i)
            self._launch(i)
        for work in self._works:
            work.wait()
        for bucket in self.buckets:
            if self.stage == 1:
                bucket.grad_full.div_(self.world_size)  # sum -> mean (the shard is a view of it)
                continue
            if bucket.reduce_out is not bucket.grad_shard:
                bucket.grad_shard.copy_(bucket.reduce_out)  # bf16 communication -> fp32 shard
            bucket.reduce_out = None
            bucket.grad_full = None  # free the staging buffer: only the 1/N shard outlives the step
            bucket.grad_shard.div_(self.world_size)
        self.stats.synced_steps += 1
        self.last_launch_order = self.launch_order
        self._reset_step()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global L2 norm: each rank's sum of squares over its shard, summed over ranks."""
        grads = [piece.tensor.grad for piece in self.pieces]
        local = torch.nn.utils.get_total_norm(grads).to(torch.float32)
        squares = local.square().reshape(1)
        with self.recorder.timed("all_reduce", squares, "grad_norm"):
            dist.all_reduce(squares, op=dist.ReduceOp.SUM)
        norm = squares.sqrt()[0]
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_([piece.tensor for piece in self.pieces], max_norm, norm)
        return float(norm)

    def zero_grad(self) -> None:
        for bucket in self.buckets:
            if self.stage == 1:
                bucket.grad_full.zero_()
                for p, offset in zip(bucket.params, bucket.plan.offsets):
                    p.grad = bucket.grad_full[offset : offset + p.numel()].view(p.shape)
            else:
                bucket.grad_shard.zero_()
                for p in bucket.params:
                    p.grad = None
        for piece in self.pieces:  # re-attach if someone dropped a piece's gradient
            if piece.tensor.grad is None:
                lo = self._shard_offset(piece)
                grad_shard = self.buckets[self._bucket_of[piece.param]].grad_shard
                piece.tensor.grad = grad_shard[lo : lo + piece.end - piece.start]

    # --- the optimizer ---------------------------------------------------------------------------
    def build_optimizer(self, train, device: torch.device) -> torch.optim.AdamW:
        """AdamW over this rank's pieces, grouped as the trainer groups whole parameters."""
        decay = {id(p) for p in param_groups(self.param_names_items(), train.weight_decay)[0]["params"]}
        groups = [
            {"params": [pc.tensor for pc in self.pieces if id(pc.param) in decay], "weight_decay": train.weight_decay},
            {"params": [pc.tensor for pc in self.pieces if id(pc.param) not in decay], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps,
            fused=use_fused(train.fused_adamw, device),
        )

    def param_names_items(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for p, name in self.param_names.items()]

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Update this rank's pieces, then all-gather every bucket's shard, in forward order (the
        embedding's bucket is the last one). The next forward waits per module (overlap_param_gather)."""
        optimizer.step()
        for i in reversed(range(len(self.buckets))):
            bucket = self.buckets[i]
            send = bucket.flat_params[bucket.shard_start : bucket.shard_start + bucket.shard_numel].clone()
            work = dist.all_gather_into_tensor(bucket.flat_params, send, async_op=True)
            self._gathers[i] = (self.recorder.track("all_gather", bucket.flat_params, f"params bucket={i}", work), send)
            self.stats.gather_calls += 1
        if not self.options.overlap_param_gather:
            self.wait_for_params()

    def _wait_params(self, indices: Iterable[int]) -> None:
        for i in indices:
            gather = self._gathers.pop(i, None)
            if gather is not None:
                gather[0].wait()

    def wait_for_params(self) -> None:
        """Block until every parameter all-gather of the last step is done (before reading parameters
        outside a forward: checkpoints, tests)."""
        self._wait_params(list(self._gathers))

    @contextlib.contextmanager
    def checkpoint_optimizer(self, optimizer: torch.optim.Optimizer) -> Iterator[torch.optim.Optimizer]:
        self.wait_for_params()
        full = self._gather_full_optimizer(optimizer)
        yield full
        self._scatter_full_optimizer(full, optimizer)

    @torch.no_grad()
    def _gather_full_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.AdamW:
        """An AdamW over the model's parameters with the trainer's groups and the gathered moments."""
        decay_group = optimizer.param_groups[0]  # build_optimizer's order: decay, then no decay
        groups = param_groups(self.param_names_items(), decay_group["weight_decay"])
        full = torch.optim.AdamW(groups, lr=decay_group["lr"], betas=decay_group["betas"], eps=decay_group["eps"])
        if not optimizer.state:
            return full  # nothing to gather (a fresh run loading a checkpoint)
        step = next(iter(optimizer.state.values()))["step"]
        for key in MOMENTS:
            for i, bucket in enumerate(self.buckets):
                local = torch.zeros(bucket.shard_numel, dtype=bucket.flat_params.dtype, device=bucket.flat_params.device)
                for piece in self._bucket_pieces(i):
                    lo = self._shard_offset(piece)
                    local[lo : lo + piece.end - piece.start] = optimizer.state[piece.tensor][key]
                gathered = torch.empty_like(bucket.flat_params)
                with self.recorder.timed("all_gather", gathered, f"checkpoint {key} bucket={i}"):
                    dist.all_gather_into_tensor(gathered, local)
                for p, offset in zip(bucket.params, bucket.plan.offsets):
                    state = full.state[p]
                    state["step"] = step.detach().to("cpu", torch.float32).clone()
                    state[key] = gathered[offset : offset + p.numel()].view(p.shape).clone()
        return full

    @torch.no_grad()
    def _scatter_full_optimizer(self, full: torch.optim.AdamW, optimizer: torch.optim.Optimizer) -> None:
        """Copy each piece's part of the per-parameter state (e.g. just loaded) into the rank's optimizer."""
        if not full.state:
            return
        state_dict = optimizer.state_dict()
        index = {id(t): i for i, t in enumerate(t for g in optimizer.param_groups for t in g["params"])}
        for piece in self.pieces:
            source = full.state[piece.param]
            state_dict["state"][index[id(piece.tensor)]] = {
                "step": source["step"].clone(),
                **{key: source[key].reshape(-1)[piece.start : piece.end].clone() for key in MOMENTS},
            }
        optimizer.load_state_dict(state_dict)

    def _bucket_pieces(self, i: int) -> list[Piece]:
        return [piece for piece in self.pieces if self._bucket_of[piece.param] == i]

    def _shard_offset(self, piece: Piece) -> int:
        """Where the piece starts inside this rank's shard of its bucket."""
        bucket = self.buckets[self._bucket_of[piece.param]]
        return self._offset_of[piece.param] + piece.start - bucket.shard_start

    # --- the rest of the Backend interface -------------------------------------------------------
    def parameters(self) -> Iterable[nn.Parameter]:
        self.wait_for_params()
        return self.raw_model.parameters()

    def close(self) -> None:
        self.wait_for_params()
        for hook in self._grad_hooks + self._forward_hooks:
            hook.remove()
        self._grad_hooks, self._forward_hooks = [], []
