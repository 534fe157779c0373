"""Validation loss and sampling, on one process or many (the helpers shared with the benchmark evals are in
gptdist/evals/common.py).

- `validation_loss`: the mean cross-entropy over a fixed list of validation batches. The batches are
  read as ONE stream, whatever the world size; rank r evaluates batches i with i % W == r; the summed
  per-batch losses and the batch count are all-reduced. So the number is the same for any W (up to
  float rounding of the final sum).
- `sample_text`: text samples from a model (launch/sample.py and the training loop).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from gptdist.dist import DistContext
from gptdist.errors import DataError
from gptdist.evals.common import Autocast, all_reduce_sums, eval_mode, rank_slice, model_block_size


def _loader_batches(data_dir, batch_size: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # The val split read as one stream (rank 0 of a world of 1), so every world size sees the same
    # batches in the same order. Imported here: the data package is optional for the evals.
    from gptdist.data.loader import TokenLoader

    loader = TokenLoader(data_dir, "val", batch_size, seq_len, rank=0, world_size=1, seed=0)
    while True:
        yield loader.next_batch()


def validation_loss(
    model: torch.nn.Module,
    data_dir,
    batch_size: int,
    seq_len: int,
    num_batches: int,
    ctx: DistContext,
    autocast: Autocast = contextlib.nullcontext,
    batches: Optional[Iterable[tuple[torch.Tensor, torch.Tensor]]] = None,
) -> float:
    """Mean cross-entropy (nats per token) over the first `num_batches` validation batches.

    Batches come from `data_dir`'s val split (gptdist.data.loader.TokenLoader, one stream) unless
    `batches` gives (x, y) pairs directly (tests). Rank r evaluates batches r, r+W, r+2W, ...; the sum
    of per-batch mean losses and the count are all-reduced, so the result does not depend on W.
    Every rank reads (not evaluates) all batches: reading a memory-mapped shard is cheap, and it keeps
    the stream identical on every rank. The model is left in the train/eval mode it came in.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, not {num_batches}")
    source = iter(batches) if batches is not None else _loader_batches(data_dir, batch_size, seq_len)
    slots = rank_slice(num_batches, ctx.rank, ctx.world_size)
    mine = {i for i in slots if i is not None}
    loss_sum, count = 0.0, 0
    dummy: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    with eval_mode(model):
        for i in range(num_batches):
            try:
                x, y = next(source)
            except StopIteration:
                raise DataError(f"validation data ran out after {i} of {num_batches} batches") from None
            if dummy is None:
                dummy = (x, y)
            if i not in mine:
                continue
            loss_sum += _batch_loss(model, x, y, ctx.device, autocast)
            count += 1
        # Ranks with fewer real batches run dummy forwards so all ranks make ceil(n/W) calls (FSDP rule).
        for _ in range(len(slots) - count):
            _batch_loss(model, dummy[0], dummy[1], ctx.device, autocast)
    loss_sum, count = all_reduce_sums([loss_sum, count], ctx)
    return loss_sum / count


def _batch_loss(model, x: torch.Tensor, y: torch.Tensor, device: torch.device, autocast: Autocast) -> float:
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    with autocast():
        logits, _ = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
    return loss.item()


# ----------------------------------------------------------------------------- continuation scoring


def encode_prompt(enc, prompt: str) -> list[int]:
    """Prompt tokens; an empty prompt starts from <|endoftext|> (the document separator)."""
    tokens = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    return tokens or [enc.eot_token]


def decode_tokens(enc, tokens: Sequence[int]) -> str:
    """Decode, dropping ids the tokenizer lacks (a model with a padded vocab, e.g. 50304, may sample
    ids 50257..50303, which have no text)."""
    return enc.decode([t for t in tokens if t < enc.n_vocab])


def sample_text(
    model: torch.nn.Module,
    enc,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: Optional[int] = None,
    device: torch.device | str = "cpu",
) -> list[str]:
    """`num_samples` continuations of `prompt` (prompt included), sampled in one batch with
    model.generate. The same seed gives the same samples. Under FSDP call it on every rank."""
    if num_samples < 1 or max_new_tokens < 0:
        raise ValueError("num_samples must be >= 1 and max_new_tokens >= 0")
    start = encode_prompt(enc, prompt)[-model_block_size(model) :]
    idx = torch.tensor([start] * num_samples, dtype=torch.long, device=device)  # (N, T0)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, vocab_limit=enc.n_vocab)
    return [decode_tokens(enc, row.tolist()) for row in out]


# ----------------------------------------------------------------------------- standalone evaluation
