"""Models and tokenizers with known behaviour, shared by tests/test_eval.py and the eval_* dist scripts."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import torch
import torch.nn as nn

# The successor stub: vocab of 32, p(next = cur + 1) = 0.9, every other token 0.1 / 31.
V = 32
P_NEXT = 0.9
HIT = -math.log(P_NEXT)  # NLL of the predicted (successor) token
MISS = -math.log((1 - P_NEXT) / (V - 1))  # NLL of any other token


class LetterEncoder:
    """'a'..'z' -> 1..26, spaces dropped: context "abc" + ending " def" is the run 1,2,3,4,5,6."""

    n_vocab = V
    eot_token = 0

    def encode(self, text, allowed_special=()):
        return [ord(c) - 96 for c in text if c != " "]

    def decode(self, tokens):
        return "".join(chr(t + 96) for t in tokens)


class AsciiEncoder:
    """Printable ASCII, one token per character (vocab 96, the 'test' model preset)."""

    n_vocab = 96
    eot_token = 0

    def encode(self, text, allowed_special=()):
        return [ord(c) - 32 for c in text]

    def decode(self, tokens):
        return "".join(chr(t + 32) for t in tokens)


class TableModel(nn.Module):
    """logits[b, t, :] = table[idx[b, t]]: a first-order Markov model whose rows are log-probabilities,
    so the NLL of token j after token i is exactly -table[i, j]. Counts its forward calls."""

    def __init__(self, table: torch.Tensor, block_size: int = 64):
        super().__init__()
        self.register_buffer("table", table)
        self.config = SimpleNamespace(block_size=block_size, vocab_size=table.size(0))
        self.calls = 0
        self.max_len = 0

    def forward(self, idx, targets=None):
        assert idx.dtype == torch.long and idx.dim() == 2
        assert idx.size(1) <= self.config.block_size, "input longer than block_size"
        self.calls += 1
        self.max_len = max(self.max_len, idx.size(1))
        return self.table[idx], None  # (B, T, V)


def successor_model(block_size: int = 64) -> TableModel:
    table = torch.full((V, V), math.log((1 - P_NEXT) / (V - 1)), dtype=torch.float64)
    for i in range(V):
        table[i, (i + 1) % V] = math.log(P_NEXT)
    return TableModel(table.float(), block_size)


def random_hellaswag_items(n: int, seed: int = 0):
    from gptdist.evals.hellaswag import HellaSwagItem

    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 6)))  # noqa: E731
    items = []
    for k in range(n):
        ctx = " ".join(word() for _ in range(rng.randint(2, 8)))
        endings = tuple(" ".join(word() for _ in range(rng.randint(1, 4))) for _ in range(4))
        items.append(HellaSwagItem(ctx, endings, rng.randint(0, 3), "act", k + 1))
    return items


def random_lambada_texts(n: int, seed: int = 1):
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcde") for _ in range(rng.randint(1, 4)))  # noqa: E731
    return [" ".join(word() for _ in range(rng.randint(2, 12))) for _ in range(n)]


def random_batches(n: int, batch_size: int = 2, seq_len: int = 16, vocab: int = 96, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
        out.append((tokens[:, :-1].clone(), tokens[:, 1:].clone()))
    return out


def tiny_gpt():
    """The 'test' preset GPT (vocab 96), identically initialised in every process."""
    from gptdist.model import GPT, PRESETS

    torch.manual_seed(0)
    return GPT(PRESETS["test"])


def run_all_evals(ctx, limit_items: int = 7, val_batches: int = 5) -> dict:
    """The evals the distributed test compares: a tiny GPT on random items, with forward calls counted."""
    from gptdist.evals.hellaswag import evaluate_hellaswag
    from gptdist.evals.lambada import evaluate_lambada
    from gptdist.evaluate import validation_loss

    model = tiny_gpt()
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    enc = AsciiEncoder()
    out = {}
    out["hellaswag"] = evaluate_hellaswag(model, enc, random_hellaswag_items(limit_items), ctx, "cpu",
                                          progress=False, items_per_forward=2)
    out["hellaswag_calls"] = calls["n"]
    out["lambada"] = evaluate_lambada(model, enc, random_lambada_texts(limit_items), ctx, "cpu",
                                      progress=False, items_per_forward=3)
    out["lambada_calls"] = calls["n"] - out["hellaswag_calls"]
    out["val_loss"] = validation_loss(model, None, 2, 16, val_batches, ctx, batches=random_batches(val_batches))
    out["calls"] = calls["n"]
    return out
