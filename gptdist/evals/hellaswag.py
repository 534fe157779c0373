"""HellaSwag (validation, 10,042 items), scored the standard completion way.

Each item has a context and 4 candidate endings; the model "chooses" the ending it finds most likely:

    context tokens = enc(ctx)            ending tokens = enc(" " + ending)
    loss_j         = sum over ending j's tokens of -log p(token | context, earlier ending tokens)
    acc            : argmin_j loss_j                       (total log-likelihood)
    acc_norm       : argmin_j loss_j / len(ending j tokens) (mean per token)

This is build-nanogpt's `hellaswag.py` rendering and its acc_norm (per-token mean). lm-eval-harness
differs in two ways: its acc_norm divides by the ending's length in characters (bytes), not tokens,
and its context is `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`. Our
mirror file (shared/data/hellaswag/hellaswag_val_klosax.jsonl) already has lm-eval's `preprocess`
applied to ctx and endings, with the activity label split off into its own field;
`with_activity_label=True` puts it back in front of the context.

The file format is the official jsonl (fields ctx, endings, label, activity_label; others ignored).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from gptdist.dist import DistContext
from gptdist.errors import DataError
from gptdist.evals import read_jsonl, resolve_data_file
from gptdist.evals.common import Autocast, all_reduce_sums, continuation_nll, eval_mode, progress_bar, rank_slice

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
MIRROR_PATH = "hellaswag/hellaswag_val_klosax.jsonl"  # inside $GPTDIST_DATA_MIRROR
NUM_VAL_ITEMS = 10042


@dataclass(frozen=True)
class HellaSwagItem:
    ctx: str
    endings: tuple[str, str, str, str]
    label: int  # index of the right ending
    activity_label: str
    line: int  # line number in the source file, for messages


def load_hellaswag(path: Optional[str | os.PathLike] = None) -> list[HellaSwagItem]:
    """Parse a HellaSwag jsonl file (default: the mirror copy, else a download of the official val
    file). A malformed line raises DataError naming the file and line number."""
    path = resolve_data_file(path, MIRROR_PATH, HELLASWAG_URL, "hellaswag_val.jsonl")
    items = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        missing = [k for k in ("ctx", "endings", "label", "activity_label") if k not in obj]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        ctx, endings, label, activity = obj["ctx"], obj["endings"], obj["label"], obj["activity_label"]
        if not isinstance(ctx, str) or not ctx.strip():
            raise DataError(f"{where}: ctx must be a non-empty string")
        if not isinstance(activity, str):
            raise DataError(f"{where}: activity_label must be a string")
        if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) and e for e in endings)):
            raise DataError(f"{where}: endings must be a list of 4 non-empty strings")
        if isinstance(label, str) and label.isdigit():  # some copies store the label as "3"
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 3:
            raise DataError(f"{where}: label must be 0, 1, 2 or 3, not {label!r}")
        items.append(HellaSwagItem(ctx, tuple(endings), label, activity, lineno))
    if not items:
        raise DataError(f"{path}: no HellaSwag items")
    return items


def render_item(item: HellaSwagItem, enc, with_activity_label: bool = False) -> tuple[list[int], list[list[int]]]:
    """(context tokens, [ending tokens] * 4). The leading space of each ending belongs to the ending:
    GPT-2's BPE attaches a space to the word after it."""
    context = f"{item.activity_label}: {item.ctx}" if with_activity_label else item.ctx
    return enc.encode(context), [enc.encode(" " + ending) for ending in item.endings]


def choose_endings(ending_nlls: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(pred, pred_norm) from the per-token NLLs of each ending: lowest sum, lowest mean per token.
    Ties go to the lower index."""
    sums = [float(nll.sum()) for nll in ending_nlls]
    means = [s / len(nll) for s, nll in zip(sums, ending_nlls)]
    pred = min(range(len(sums)), key=lambda j: sums[j])
    pred_norm = min(range(len(means)), key=lambda j: means[j])
    return pred, pred_norm


def evaluate_hellaswag(
    model: torch.nn.Module,
    enc,
    items: Sequence[HellaSwagItem],
    ctx: DistContext,
    device: torch.device | str,
    limit: int = 0,
    progress: bool = True,
    items_per_forward: int = 1,
    autocast: Autocast = contextlib.nullcontext,
    with_activity_label: bool = False,
) -> dict:
    """Accuracy over the first `limit` items (0 = all): {"acc", "acc_norm", "n"}.

    Items are spread over ranks (i % W == rank) and the counts all-reduced, so the result equals a
    single-process run. Each forward scores the 4 endings of `items_per_forward` items (4 rows each,
    right-padded). Every rank makes the same number of forwards (ceil(n / W) item slots, dummies not
    counted: the FSDP rule in gptdist/evals/common.py). Contexts longer than the model's block_size are
    cut from the left; endings stay whole.
    """
    if items_per_forward < 1:
        raise ValueError("items_per_forward must be >= 1")
    items = list(items[:limit] if limit > 0 else items)
    if not items:
        raise DataError("no HellaSwag items to evaluate")
    slots = rank_slice(len(items), ctx.rank, ctx.world_size)
    correct = correct_norm = counted = 0
    bar = progress_bar(len(slots), "hellaswag", progress, ctx)
    with eval_mode(model):
        for start in range(0, len(slots), items_per_forward):
            chunk = slots[start : start + items_per_forward]
            rows = []
            for i in chunk:
                context, endings = render_item(items[0 if i is None else i], enc, with_activity_label)
                rows.extend((context, ending) for ending in endings)
            scored = continuation_nll(model, rows, device, autocast, vocab_limit=enc.n_vocab)  # 4 rows per item slot
            for k, i in enumerate(chunk):
                if i is None:  # dummy slot: computed for the equal-forwards rule, never counted
                    continue
                pred, pred_norm = choose_endings([nll for nll, _ in scored[4 * k : 4 * k + 4]])
                counted += 1
                correct += int(pred == items[i].label)
                correct_norm += int(pred_norm == items[i].label)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(acc_norm=f"{correct_norm / max(counted, 1):.4f}")
    if bar is not None:
        bar.close()
    correct, correct_norm, counted = all_reduce_sums([correct, correct_norm, counted], ctx)
    return {"acc": correct / counted, "acc_norm": correct_norm / counted, "n": int(counted)}
