"""`fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`), parameters sharded over the ranks.

Every parameter becomes a DTensor sharded along dim 0 (rank r holds 1/world of each tensor). Sharding
is applied in groups, as torchtitan's `apply_fsdp` does: each transformer block is one group, then
the root (the GPT itself) takes what is left: wte (= lm_head, tied: one Parameter, so it must live
in one group), wpe and ln_f.

    forward of block i:   all-gather block i's params -> compute -> free them (reshard_after_forward)
    backward of block i:  all-gather again (if freed) -> compute grads -> reduce-scatter the grads

Options (`parallel.*`):
- reshard_after_forward: True frees each block's gathered parameters after its forward and gathers
  them again in backward (ZeRO-3: least memory, one more all-gather per block). False keeps them
  until backward (ZeRO-2-like: parameters stay unsharded between forward and backward).
- param_dtype / reduce_dtype: the MixedPrecisionPolicy. The sharded master weights stay fp32; they
  are all-gathered and computed in param_dtype (bf16 on CUDA with "auto"), and gradients are
  reduce-scattered in reduce_dtype (fp32 by default, which keeps the sum over ranks accurate).

Gradient accumulation: `set_requires_gradient_sync(False)` keeps unsharded gradients locally and
skips the reduce-scatter; the last micro-step reduces the accumulated sum.

Clipping: gradients are sharded DTensors, so the norm of the local shards is not the global norm.
`get_total_norm` over the DTensor gradients reduces over ranks and returns a (replicated) DTensor;
`.full_tensor()` turns it into the plain global norm, then every rank clips with it.

Timing the collectives: FSDP2 issues every all-gather and reduce-scatter through a replaceable comm
object per group (`set_custom_all_gather` / `set_custom_reduce_scatter`, public API). With an active
recorder each group gets `TimedAllGather` / `TimedReduceScatter`: subclasses of FSDP's own defaults
that make the very same `dist` call and report it, labelled with the group's module. They stay
instances of the defaults, so FSDP treats them exactly like its own (it checks with isinstance).
FSDP calls them with its all-gather / reduce-scatter stream current on CUDA, so their CUDA events are
recorded on the stream that runs the collective.

`module` is the GPT itself (fully_shard works in place), so `raw_model.generate` still works, as
long as every rank calls it together (each forward all-gathers parameters).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter
from torch.distributed.tensor import DTensor

from gptdist.dist import DistContext
from gptdist.parallel.base import Backend
from gptdist.parallel.broadcast import broadcast_from_rank0

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mixed_precision_policy(cfg, device: torch.device) -> MixedPrecisionPolicy:
    """param_dtype "auto" means bf16 on CUDA and fp32 on the CPU (where bf16 matmuls are slow)."""
    name = cfg.param_dtype
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return MixedPrecisionPolicy(param_dtype=DTYPES[name], reduce_dtype=DTYPES[cfg.reduce_dtype])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TimedAllGather(DefaultAllGather):
    """FSDP's default all-gather, recorded. Size = the whole gathered output (nccl-tests)."""

    def __init__(self, recorder, label: str):
        super().__init__()
        self.recorder, self.label = recorder, label

    def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
        if async_op:
            work = super().__call__(output_tensor, input_tensor, group, async_op=True)
            return self.recorder.track("all_gather", output_tensor, self.label, work, _nbytes(output_tensor), group.size())
        with self.recorder.timed("all_gather", output_tensor, self.label, _nbytes(output_tensor), group.size()):
            return super().__call__(output_tensor, input_tensor, group, async_op=False)


class TimedReduceScatter(DefaultReduceScatter):
    """FSDP's default reduce-scatter, recorded. Size = the whole input (nccl-tests)."""

    def __init__(self, recorder, label: str):
        super().__init__()
        self.recorder, self.label = recorder, label

    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        if async_op:
            work = super().__call__(output_tensor, input_tensor, group, op, async_op=True)
            return self.recorder.track("reduce_scatter", input_tensor, self.label, work, _nbytes(input_tensor), group.size())
        with self.recorder.timed("reduce_scatter", input_tensor, self.label, _nbytes(input_tensor), group.size()):
            return super().__call__(output_tensor, input_tensor, group, op, async_op=False)


class FSDPBackend(Backend):
    name = "fsdp"

    def __init__(self, model: nn.Module, ctx: DistContext, cfg, recorder=None):
        super().__init__(model, ctx, recorder)
        # fully_shard keeps each rank's own slice of its own tensors: make them rank 0's first, as
        # the manual and ddp backends do.
        if dist.get_world_size() > 1:
            broadcast_from_rank0(model, self.recorder)
        self.mesh = init_device_mesh(ctx.device.type, (dist.get_world_size(),))
        self.mp_policy = mixed_precision_policy(cfg, ctx.device)
        for block in model.transformer.h:
            fully_shard(block, mesh=self.mesh, mp_policy=self.mp_policy, reshard_after_forward=cfg.reshard_after_forward)
        # The root group: wte/lm_head (tied), wpe, ln_f. Its reshard_after_forward is left to FSDP,
        # which keeps the root unsharded after forward: lm_head is the last module of forward and the
        # first of backward, so freeing it would only mean gathering it again at once.
        fully_shard(model, mesh=self.mesh, mp_policy=self.mp_policy)
        self.module = model
        self.raw_model = model
        # A forward without backward (evaluation, generate) leaves every group that does not reshard
        # after forward (the root; every block with reshard_after_forward=False) holding unsharded
        # parameters, which the next optimizer step would make stale. Reshard after such a forward.
        self._fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        if self.recorder.enabled:
            for name, m in model.named_modules():
                if isinstance(m, FSDPModule):
                    label = f"module={name or 'root'}"
                    m.set_custom_all_gather(TimedAllGather(self.recorder, label))
                    m.set_custom_reduce_scatter(TimedReduceScatter(self.recorder, label))
        self._hooks = [model.register_forward_hook(self._reshard_after_no_grad_forward)]

    def _reshard_after_no_grad_forward(self, module, args, output):
        if not torch.is_grad_enabled():
            for m in self._fsdp_modules:
                m.reshard()

    def set_grad_sync(self, sync: bool) -> None:
        super().set_grad_sync(sync)
        self.module.set_requires_gradient_sync(sync)  # recurses into every block's group

    def finish_grad_sync(self) -> None:
        # The root's post-backward callback waits for the last reduce-scatter.
        pass

    def clip_grad_norm(self, max_norm: float) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):
            # DTensor already summed the squares over all shards on all ranks (a replicated
            # result); full_tensor() makes it a plain tensor, the same on every rank.
            with self.recorder.timed("all_reduce", label="grad_norm", nbytes=norm.element_size()):
                norm = norm.full_tensor()
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)

    def zero_grad(self) -> None:
        self.module.zero_grad(set_to_none=True)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
