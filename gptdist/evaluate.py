"""Validation loss, sampling, and the helpers the benchmark evals share (gptdist/evals/).

Everything here takes a `DistContext` and works the same on one process or many:

- `validation_loss`: the mean cross-entropy over a fixed list of validation batches. The batches are
  read as ONE stream, whatever the world size; rank r evaluates batches i with i % W == r; the summed
  per-batch losses and the batch count are all-reduced. So the number is the same for any W (up to
  float rounding of the final sum).
- `continuation_nll`: the per-token negative log-likelihood (and greedy hits) of continuations given
  contexts, one forward for a list of (context, continuation) token rows. HellaSwag and LAMBADA are
  built on it.
- `rank_slice`: which items a rank takes, padded so that every rank makes the same number of forward
  calls (the FSDP rule, below).
- `sample_text`: text samples from a model (launch/sample.py and the training loop).

The FSDP rule. Under FSDP every forward runs collectives (parameter all-gathers), so every rank must
call forward the same number of times, in the same order, or the job hangs. Whenever work is split
over ranks we therefore give each rank ceil(n / W) slots; a rank whose slots run past the end fills
them with dummy work (a copy of a real item) that is computed but not counted.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gptdist.dist import DistContext
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
    """A zero-argument factory of autocast contexts: bf16 on CUDA for "auto"/"bfloat16", else none."""
    if dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32 or bfloat16, not {dtype!r}")
    if dtype == "float32" or (dtype == "auto" and device.type != "cuda"):
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

TASKS = ("val", "hellaswag", "lambada")


def parse_tasks(spec: str) -> list[str]:
    """"val,hellaswag" -> ["val", "hellaswag"]; an unknown name raises ConfigError."""
    from gptdist.errors import ConfigError

    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown task(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(TASKS)}")
    return tasks


def add_model_source_args(parser) -> None:
    """--checkpoint | --hf | --random-init: where launch/evaluate.py and launch/sample.py get a model."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a gptdist checkpoint, its checkpoints/ folder or its run folder")
    src.add_argument("--hf", help="Hugging Face GPT-2 weights: gpt2, gpt2-medium, ... or a local folder")
    src.add_argument("--random-init", metavar="PRESET", help="a randomly initialised preset (baseline, smoke test)")


def load_model_for_eval(
    checkpoint: Optional[str] = None,
    hf: Optional[str] = None,
    random_init: Optional[str] = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> torch.nn.Module:
    """Exactly one source: a gptdist checkpoint, Hugging Face GPT-2 weights (a hub name such as
    "gpt2" or a local folder), or a randomly initialised preset (a chance-level baseline and a smoke
    test of the pipeline). Returns the model on `device` in eval mode."""
    from gptdist.errors import CheckpointError, ConfigError

    if sum(x is not None for x in (checkpoint, hf, random_init)) != 1:
        raise ConfigError("give exactly one of --checkpoint PATH, --hf NAME or --random-init PRESET")
    if checkpoint is not None:
        from pathlib import Path

        if not Path(checkpoint).exists():
            raise CheckpointError(f"{checkpoint}: no such checkpoint")
        from gptdist.checkpoint import load_model  # the trainer's checkpoint format

        model = load_model(checkpoint, device)
    elif hf is not None:
        from gptdist.hf import from_pretrained  # raises a clear GptdistError offline

        model = from_pretrained(hf)
    else:
        from gptdist.model import GPT, PRESETS

        if random_init not in PRESETS:
            raise ConfigError(f"unknown preset {random_init!r}: choose from {', '.join(PRESETS)}")
        torch.manual_seed(seed)
        model = GPT(PRESETS[random_init])
    return model.to(device).eval()


def run_eval_tasks(
    model: torch.nn.Module,
    tasks: Sequence[str],
    ctx: DistContext,
    enc,
    data_dir=None,
    batch_size: int = 8,
    seq_len: Optional[int] = None,
    val_batches: int = 20,
    limit: int = 0,
    hellaswag_path=None,
    lambada_path=None,
    items_per_forward: int = 1,
    autocast: Autocast = contextlib.nullcontext,
    progress: bool = True,
) -> dict:
    """Run the named tasks and return {"val": {"loss"}, "hellaswag": {...}, "lambada": {...}}."""
    from gptdist.errors import ConfigError

    results: dict = {}
    for task in tasks:
        if task in ("hellaswag", "lambada") and model_vocab_size(model) < enc.n_vocab:
            raise ConfigError(
                f"{task} needs GPT-2's tokenizer, but the model's vocab_size {model_vocab_size(model)} "
                f"is smaller than its {enc.n_vocab}"
            )
        if task == "val":
            if data_dir is None:
                raise ConfigError("task 'val' needs --data-dir (a folder written by launch/prepare_data.py)")
            T = seq_len or model_block_size(model)
            loss = validation_loss(model, data_dir, batch_size, T, val_batches, ctx, autocast)
            results["val"] = {"loss": loss, "batches": val_batches, "batch_size": batch_size, "seq_len": T}
        elif task == "hellaswag":
            from gptdist.evals.hellaswag import evaluate_hellaswag, load_hellaswag

            items = load_hellaswag(hellaswag_path)
            results["hellaswag"] = evaluate_hellaswag(
                model, enc, items, ctx, ctx.device, limit, progress, items_per_forward, autocast
            )
        elif task == "lambada":
            from gptdist.evals.lambada import evaluate_lambada, load_lambada

            items = load_lambada(lambada_path)
            results["lambada"] = evaluate_lambada(
                model, enc, items, ctx, ctx.device, limit, progress, max(1, 4 * items_per_forward), autocast
            )
        else:
            parse_tasks(task)  # raises the ConfigError that lists the valid names
    return results
