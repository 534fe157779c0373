"""LAMBADA, OpenAI's detokenized test set as used in the GPT-2 paper (5,153 passages).

Each line is {"text": passage}. The target is the passage's last word, split off at the last space
exactly as lm-eval-harness `lambada_openai` does (`text.split(' ')[:-1]` / `' ' + text.split(' ')[-1]`):

    context = text[:i]          target = text[i:] = " " + last word        (i = index of the last " ")

The target keeps its leading space (GPT-2's BPE attaches it to the word) and any punctuation after the
word as is (OpenAI's file has none: every passage ends in a letter or digit). The target may be
several BPE tokens.

- acc: the passage counts as right when the model's greedy (argmax) prediction equals the target at
  EVERY target token, given the context and the earlier target tokens (teacher forcing) — lm-eval's
  `is_greedy`. Equivalently: greedy decoding of len(target) tokens reproduces the word.
- ppl: perplexity of the final word, exp(sum over passages of the target's summed NLL / number of
  passages), i.e. per word, not per token. lm-eval reports the same: its `perplexity` aggregation is
  exp(-mean(loglikelihood of the target)) over documents.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Optional, Sequence

import torch

from gptdist.dist import DistContext
from gptdist.errors import DataError
from gptdist.evals import read_jsonl, resolve_data_file
from gptdist.evals.common import Autocast, all_reduce_sums, continuation_nll, eval_mode, progress_bar, rank_slice

LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"
MIRROR_PATH = "lambada/lambada_test.jsonl"  # inside $GPTDIST_DATA_MIRROR
NUM_TEST_ITEMS = 5153


def split_last_word(text: str) -> tuple[str, str]:
    """(context, " " + last word), split at the last space. Raises ValueError if there is none or
    the last word is empty."""
    i = text.rfind(" ")
    if i <= 0 or i == len(text) - 1:
        raise ValueError("needs a context, a space and a final word")
    return text[:i], text[i:]


def load_lambada(path: Optional[str | os.PathLike] = None) -> list[str]:
    """The passages of a LAMBADA jsonl file (default: the mirror copy, else a download of OpenAI's
    file). A malformed line raises DataError naming the file and line number."""
    path = resolve_data_file(path, MIRROR_PATH, LAMBADA_URL, "lambada_test.jsonl")
    texts = []
    for lineno, obj in read_jsonl(path):
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: expected a string field 'text'")
        try:
            split_last_word(text)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from None
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: no LAMBADA passages")
    return texts


def render_text(text: str, enc) -> tuple[list[int], list[int]]:
    """(context tokens, target tokens), each encoded on its own (as build-nanogpt does for HellaSwag)."""
    context, target = split_last_word(text)
    return enc.encode(context), enc.encode(target)


def evaluate_lambada(
    model: torch.nn.Module,
    enc,
    items: Sequence[str],
    ctx: DistContext,
    device: torch.device | str,
    limit: int = 0,
    progress: bool = True,
    items_per_forward: int = 8,
    autocast: Autocast = contextlib.nullcontext,
) -> dict:
    """Last-word accuracy and perplexity over the first `limit` passages (0 = all):
    {"acc", "ppl", "n"}. Spread over ranks like evaluate_hellaswag (equal forwards on every rank,
    dummies not counted, counts and NLL sums all-reduced). Contexts longer than block_size are cut
    from the left."""
    if items_per_forward < 1:
        raise ValueError("items_per_forward must be >= 1")
    items = list(items[:limit] if limit > 0 else items)
    if not items:
        raise DataError("no LAMBADA passages to evaluate")
    slots = rank_slice(len(items), ctx.rank, ctx.world_size)
    correct = counted = 0
    nll_sum = 0.0
    bar = progress_bar(len(slots), "lambada", progress, ctx)
    with eval_mode(model):
        for start in range(0, len(slots), items_per_forward):
            chunk = slots[start : start + items_per_forward]
            rows = [render_text(items[0 if i is None else i], enc) for i in chunk]
            scored = continuation_nll(model, rows, device, autocast, vocab_limit=enc.n_vocab)
            for i, (nll, greedy) in zip(chunk, scored):
                if i is None:  # dummy slot (equal-forwards rule), not counted
                    continue
                counted += 1
                correct += int(bool(greedy.all()))
                nll_sum += float(nll.sum())
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    correct, nll_sum, counted = all_reduce_sums([correct, nll_sum, counted], ctx)
    return {"acc": correct / counted, "ppl": math.exp(nll_sum / counted), "n": int(counted)}
