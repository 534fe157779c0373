"""The helpers the evaluations share (validation loss, HellaSwag, LAMBADA), on one process or many.

- `continuation_nll`: the per-token negative log-likelihood (and greedy hits) of continuations given
  contexts, one forward for a list of (context, continuation) token rows. HellaSwag and LAMBADA are
  built on it.
- `rank_slice`: which items a rank takes, padded so that every rank makes the same number of forward
  calls (the FSDP rule, below).

The FSDP rule. Under FSDP every forward runs collectives (parameter all-gathers), so every rank must
call forward the same number of times, in the same order, or the job hangs. Whenever work is split
over ranks we therefore give each rank ceil(n / W) slots; a rank whose slots run past the end fills
them with dummy work (a copy of a real item) that is computed but not counted.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gptdist.dist import DistContext
from gptdist.dtypes import check_dtype_name
from gptdist.errors import DataError

Autocast = Callable[[], contextlib.AbstractContextManager]


# ----------------------------------------------------------------------------- distributed helpers


def rank_slice(n: int, rank: int, world_size: int) -> list[Optional[int]]:
    """Item indices for `rank`: i with i % world_size == rank, padded with None to ceil(n / world_size)
    slots so that every rank makes the same number of forward calls (see the FSDP rule above)."""
    slots = math.ceil(n / world_size) if n > 0 else 0
    mine: list[Optional[int]] = list(range(rank, n, world_size))
    return mine + [None] * (slots - len(mine))


def all_reduce_sums(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over all ranks in float64 (one collective; identity without a group)."""
    if not ctx.has_group:
        return [float(v) for v in values]
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() and no_grad for the block; restores the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def progress_bar(total: int, desc: str, enabled: bool, ctx: DistContext):
    """A tqdm bar on rank 0 only (None when disabled). It counts this rank's slots. Only on a terminal:
    redirected into a log, a carriage-return bar is megabytes of partial lines."""
    if not enabled or not ctx.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)


def autocast_factory(device: torch.device, dtype: str = "auto") -> Autocast:
    """A zero-argument factory of autocast contexts: bf16 on CUDA for "auto"/"bf16", else none."""
    check_dtype_name(dtype, ("auto", "fp32", "bf16"), "--dtype")
    if dtype == "fp32" or (dtype == "auto" and device.type != "cuda"):
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _gpt_config(model: torch.nn.Module):
    """The GPTConfig of a GPT, also when wrapped by DDP (which keeps the GPT as `.module`)."""
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config (expected a GPT or a wrapper of one)")
    return config


def model_block_size(model: torch.nn.Module) -> int:
    return _gpt_config(model).block_size


def model_vocab_size(model: torch.nn.Module) -> int:
    return _gpt_config(model).vocab_size


# ----------------------------------------------------------------------------- validation loss


def continuation_nll(
    model: torch.nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    device: torch.device,
    autocast: Autocast = contextlib.nullcontext,
    vocab_limit: Optional[int] = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Score each (context_tokens, continuation_tokens) row with ONE forward over a padded batch.
    vocab_limit: the softmax and argmax run over the first vocab_limit columns only (the tokenizer's
    tokens; a padded vocabulary's extra columns are not tokens).

    Returns, per row, (nll, greedy): nll (L,) float64 is -log p(continuation token j | everything
    before it), greedy (L,) bool says whether the model's argmax at that position is that token
    (teacher forcing: earlier continuation tokens are given, as in lm-eval's `is_greedy`).

    Alignment: the input is full[:-1] with full = context + continuation, and the logits at input
    position t predict full[t + 1]. The first continuation token full[c] (c = len(context)) is thus
    predicted at position c - 1, the last context token. (Using position c instead is the classic
    off-by-one.)

    Too long for the model: contexts are cut from the LEFT so that the input fits block_size and the
    continuation stays whole (it must have at most block_size tokens). Rows are right-padded with
    token 0; with causal attention padding never affects earlier positions, and padded positions are
    not read.
    """
    if not rows:
        return []
    block_size = model_block_size(model)
    inputs, spans = [], []
    for context, continuation in rows:
        context, continuation = list(context), list(continuation)
        if not context:
            raise DataError("cannot score a continuation with an empty context (nothing predicts its first token)")
        if not continuation:
            raise DataError("cannot score an empty continuation")
        if len(continuation) > block_size:
            raise DataError(f"continuation of {len(continuation)} tokens exceeds block_size {block_size}")
        full = (context + continuation)[-(block_size + 1) :]  # left-truncate the context only
        start = len(full) - len(continuation) - 1  # input position that predicts the first continuation token
        inputs.append(full[:-1])
        spans.append((start, continuation))
    T = max(len(r) for r in inputs)
    idx = torch.zeros((len(inputs), T), dtype=torch.long)  # (R, T)
    for r, row in enumerate(inputs):
        idx[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    with autocast():
        logits, _ = model(idx.to(device))  # (R, T, V)
    results = []
    for r, (start, continuation) in enumerate(spans):
        L = len(continuation)
        row_logits = logits[r, start : start + L, :vocab_limit].float()  # (L, V): predicts the continuation
        target = torch.tensor(continuation, dtype=torch.long, device=row_logits.device)  # (L,)
        nll = F.cross_entropy(row_logits, target, reduction="none").double().cpu()
        greedy = (row_logits.argmax(dim=-1) == target).cpu()
        results.append((nll, greedy))
    return results


# ----------------------------------------------------------------------------- sampling
