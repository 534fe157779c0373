"""Evaluation: scoring arithmetic against hand-computed values on models with controlled logits,
token alignment, acc vs acc_norm, LAMBADA word boundaries, malformed files, real data files, the
distributed split (real gloo processes) against a single process, and the launch scripts."""

from __future__ import annotations

import collections
import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from dist_scripts.eval_stubs import (
    HIT,
    MISS,
    LetterEncoder,
    random_batches,
    run_all_evals,
    successor_model,
    tiny_gpt,
)
from gptdist.dist import DistContext
from gptdist.errors import DataError
from gptdist.evals.hellaswag import HellaSwagItem, choose_endings, evaluate_hellaswag, load_hellaswag, render_item
from gptdist.evals.lambada import evaluate_lambada, load_lambada, render_text, split_last_word
from gptdist.evals.common import continuation_nll, rank_slice
from gptdist.evaluate import sample_text, validation_loss
from launchers import python, torchrun

SINGLE = DistContext(0, 1, 0, 1, torch.device("cpu"), None)


def item(ctx, endings, label):
    return HellaSwagItem(ctx, tuple(endings), label, "act", 1)


# ----------------------------------------------------------------------------- continuation scoring


def test_continuation_nll_alignment_logits_at_t_predict_t_plus_1():
    model = successor_model()
    # context 1,2,3; continuation 4,5: every continuation token is the successor of the one before it.
    (nll, greedy), (nll_shifted, greedy_shifted) = continuation_nll(model, [([1, 2, 3], [4, 5]), ([1, 2, 3], [3, 4])], "cpu")
    assert nll.tolist() == pytest.approx([HIT, HIT], abs=1e-5)
    assert greedy.tolist() == [True, True]
    # The continuation an off-by-one scorer would favour (the token itself, not its successor) loses here.
    assert nll_shifted.tolist() == pytest.approx([MISS, HIT], abs=1e-5)
    assert greedy_shifted.tolist() == [False, True]
    assert model.calls == 1  # both rows in one padded forward


def test_continuation_nll_vocab_limit_ignores_padding_columns():
    # A last column with a huge logit (a padded vocabulary's non-token) would swallow the softmax mass and
    # win every argmax; with vocab_limit the scores are those of the real tokens alone.
    model = successor_model()
    real = model.table.clone()
    model.table[:, -1] = 50.0
    (nll, greedy), = continuation_nll(model, [([1, 2, 3], [4, 5])], "cpu", vocab_limit=real.size(1) - 1)
    expected = [-torch.log_softmax(real[i, :-1].double(), dim=0)[i + 1].item() for i in (3, 4)]
    assert nll.tolist() == pytest.approx(expected, abs=1e-5) and greedy.tolist() == [True, True]
    (nll_all, greedy_all), = continuation_nll(model, [([1, 2, 3], [4, 5])], "cpu")
    assert (nll_all > 40).all() and greedy_all.tolist() == [False, False]


def test_continuation_nll_padding_does_not_change_scores():
    model = successor_model()
    alone = continuation_nll(model, [([5], [6, 9])], "cpu")[0][0]
    batched = continuation_nll(model, [([5], [6, 9]), ([1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11])], "cpu")[0][0]
    assert torch.equal(alone, batched)
    assert alone.tolist() == pytest.approx([HIT, MISS], abs=1e-5)


def test_long_context_is_cut_from_the_left_and_continuation_kept_whole():
    model = successor_model(block_size=4)
    context, continuation = list(range(1, 11)), [11, 12, 13]  # 13 tokens; the model sees at most 4
    (nll, greedy), = continuation_nll(model, [(context, continuation)], "cpu")
    assert model.max_len == 4
    assert nll.tolist() == pytest.approx([HIT] * 3, abs=1e-5)  # first-order stub: the last context token suffices
    assert greedy.all()
    with pytest.raises(DataError, match="exceeds block_size"):
        continuation_nll(model, [([1], [2, 3, 4, 5, 6])], "cpu")
    with pytest.raises(DataError, match="empty context"):
        continuation_nll(model, [([], [2])], "cpu")


# ----------------------------------------------------------------------------- HellaSwag


def test_choose_endings_sum_vs_mean():
    # ending 0: one bad token (sum 3.0, mean 3.0); ending 1: a long ending with low mean, high sum.
    nlls = [torch.tensor([3.0]), torch.tensor([1.0, 1.0, 1.5, 0.5]), torch.tensor([2.0, 2.0]), torch.tensor([4.0])]
    assert choose_endings(nlls) == (0, 1)  # acc: lowest sum 3.0; acc_norm: lowest mean 1.0
    assert choose_endings([torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])]) == (0, 0)


def test_hellaswag_scoring_arithmetic_and_acc_vs_acc_norm():
    enc, model = LetterEncoder(), successor_model()
    # Context "abc" ends in c (3). Ending losses under the successor stub, by hand:
    #   " x"   c->x miss                      sum MISS          mean MISS
    #   " xyz" c->x miss, x->y hit, y->z hit  sum MISS+2HIT     mean (MISS+2HIT)/3
    #   " pq"  c->p miss, p->q hit            sum MISS+HIT      mean (MISS+HIT)/2
    #   " ww"  c->w miss, w->w miss           sum 2MISS         mean MISS
    endings = ["x", "xyz", "pq", "ww"]
    context, ending_tokens = render_item(item("abc", endings, 0), enc)
    nlls = [nll for nll, _ in continuation_nll(model, [(context, e) for e in ending_tokens], "cpu")]
    assert [float(n.sum()) for n in nlls] == pytest.approx([MISS, MISS + 2 * HIT, MISS + HIT, 2 * MISS], abs=1e-4)
    assert choose_endings(nlls) == (0, 1)  # acc takes the short ending, acc_norm the long one
    got = evaluate_hellaswag(model, enc, [item("abc", endings, 0)], SINGLE, "cpu", progress=False)
    assert got == {"acc": 1.0, "acc_norm": 0.0, "n": 1}
    got = evaluate_hellaswag(model, enc, [item("abc", endings, 1)], SINGLE, "cpu", progress=False)
    assert got == {"acc": 0.0, "acc_norm": 1.0, "n": 1}


def test_hellaswag_alignment_right_ending_wins():
    enc, model = LetterEncoder(), successor_model()
    # " def" continues the run a,b,c; " cde" is what a scorer reading logits one position late would pick.
    items = [item("ab c", ["cde", "bcd", "def", "xyz"], 2), item("fgh", ["ijk", "hij", "ghi", "abc"], 0)]
    assert evaluate_hellaswag(model, enc, items, SINGLE, "cpu", progress=False) == {"acc": 1.0, "acc_norm": 1.0, "n": 2}
    for items_per_forward in (1, 2, 3):  # several items per forward give the same counts
        model.calls = 0
        got = evaluate_hellaswag(model, enc, items, SINGLE, "cpu", progress=False, items_per_forward=items_per_forward)
        assert got == {"acc": 1.0, "acc_norm": 1.0, "n": 2}
        assert model.calls == math.ceil(2 / items_per_forward)
    assert evaluate_hellaswag(model, enc, items, SINGLE, "cpu", limit=1, progress=False)["n"] == 1


def test_hellaswag_activity_label_rendering():
    class Echo:  # "encodes" a string as itself, to see the rendered text
        def encode(self, text):
            return [text]

    it = HellaSwagItem("A man sits. he", ("runs.", "b", "c", "d"), 0, "Running", 1)
    assert render_item(it, Echo()) == (["A man sits. he"], [[" runs."], [" b"], [" c"], [" d"]])
    assert render_item(it, Echo(), with_activity_label=True)[0] == ["Running: A man sits. he"]


def test_load_hellaswag_malformed_lines_name_the_line(tmp_path):
    good = json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1, "activity_label": "x"})
    cases = {
        "{not json": "not valid JSON",
        json.dumps({"ctx": "A", "endings": ["a", "b", "c"], "label": 0, "activity_label": "x"}): "4 non-empty strings",
        json.dumps({"ctx": "A", "endings": ["a", "b", "c", "d"], "label": 4, "activity_label": "x"}): "label must be",
        json.dumps({"ctx": "A", "endings": ["a", "b", "c", "d"], "label": 0}): "missing field",
        "[1, 2]": "expected a JSON object",
    }
    for bad, message in cases.items():
        path = tmp_path / "h.jsonl"
        path.write_text(f"{good}\n{good}\n{bad}\n{good}\n")
        with pytest.raises(DataError, match=rf"h\.jsonl:3: .*{message}"):
            load_hellaswag(path)
    path.write_text(f"{good}\n\n{good}\n")
    assert [it.line for it in load_hellaswag(path)] == [1, 3]
    with pytest.raises(DataError, match="no such file"):
        load_hellaswag(tmp_path / "missing.jsonl")


def test_offline_download_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    import gptdist.evals as evals

    monkeypatch.delenv("GPTDIST_DATA_MIRROR", raising=False)
    monkeypatch.setenv("GPTDIST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(evals, "reachable", lambda host, timeout_s=3.0: False)
    with pytest.raises(DataError, match=r"raw\.githubusercontent\.com is unreachable; set GPTDIST_DATA_MIRROR"):
        load_hellaswag()
    with pytest.raises(DataError, match=r"openaipublic.*unreachable"):
        load_lambada()


def test_real_hellaswag_file_parses(mirror):
    items = load_hellaswag()  # default path: the mirror copy
    assert len(items) == 10042
    assert collections.Counter(it.label for it in items) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert items[0].ctx == "A man is sitting on a roof. he" and items[0].label == 3
    assert len({it.activity_label for it in items}) == 192


# ----------------------------------------------------------------------------- LAMBADA


def test_lambada_word_boundary():
    assert split_last_word("He looked at the gun") == ("He looked at the", " gun")
    assert split_last_word("She said goodbye.") == ("She said", " goodbye.")  # punctuation kept, as lm-eval
    assert split_last_word("one two\nthree") == ("one", " two\nthree")  # lm-eval splits on ' ' only
    for bad in ("word", " word", "trailing "):
        with pytest.raises(ValueError):
            split_last_word(bad)


def test_lambada_tokens_with_the_real_tokenizer():
    from gptdist.tokenizer import get_tokenizer

    enc = get_tokenizer()
    text = "Third message sent from Dr. Gailynn"
    context, target = render_text(text, enc)
    assert enc.decode(target) == " Gailynn" and len(target) > 1  # a multi-token final word
    assert target[0] != enc.encode("Gailynn")[0]  # the leading space is part of the first target token
    assert enc.decode(context) == "Third message sent from Dr."
    assert context + target == enc.encode(text)  # separate encoding equals encoding the whole passage here


def test_lambada_accuracy_needs_every_target_token_and_ppl_is_per_word():
    enc, model = LetterEncoder(), successor_model()
    texts = [
        "x ab cd",  # target c,d after b: hit, hit             -> right, NLL 2 HIT
        "x ab ce",  # c hit, then e after c (d expected): miss -> wrong, NLL HIT + MISS
        "x ab e",   # e after b: miss                          -> wrong, NLL MISS
    ]
    got = evaluate_lambada(model, enc, texts, SINGLE, "cpu", progress=False, items_per_forward=2)
    assert got["n"] == 3 and got["acc"] == pytest.approx(1 / 3)
    assert got["ppl"] == pytest.approx(math.exp((2 * HIT + HIT + MISS + MISS) / 3), rel=1e-4)


def test_load_lambada_malformed_lines_name_the_line(tmp_path):
    path = tmp_path / "l.jsonl"
    for bad, message in (('{"text": "oneword"}', "final word"), ('{"txt": "a b"}', "'text'"), ("{", "not valid JSON")):
        path.write_text('{"text": "a b"}\n' + bad + "\n")
        with pytest.raises(DataError, match=rf"l\.jsonl:2: .*{message}"):
            load_lambada(path)


def test_real_lambada_file_parses(mirror):
    texts = load_lambada()
    assert len(texts) == 5153
    targets = [split_last_word(t)[1] for t in texts]
    assert all(t[-1].isalnum() for t in targets)  # OpenAI's file: no punctuation after the last word
    assert sum("\n" in t for t in targets) == 7  # lm-eval's split on ' ' keeps a few newlines in the word


# ----------------------------------------------------------------------------- validation loss


def test_validation_loss_is_the_mean_of_batch_losses_and_restores_train_mode():
    model = tiny_gpt().train()
    batches = random_batches(3)
    with torch.no_grad():
        model.eval()
        expected = sum(F.cross_entropy(model(x)[0].reshape(-1, 96), y.reshape(-1)).item() for x, y in batches) / 3
        model.train()
    got = validation_loss(model, None, 2, 16, 3, SINGLE, batches=batches)
    assert got == pytest.approx(expected, rel=1e-6)
    assert model.training
    with pytest.raises(DataError, match="ran out after 3 of 4"):
        validation_loss(model, None, 2, 16, 4, SINGLE, batches=batches)


def test_validation_loss_reads_the_val_split_as_one_stream(monkeypatch):
    """The real loader (another module) is replaced by a stand-in that records how it was built."""
    made = []

    class StandInLoader:
        def __init__(self, data_dir, split, batch_size, seq_len, rank=0, world_size=1, seed=0):
            made.append((data_dir, split, batch_size, seq_len, rank, world_size, seed))
            self.batches = iter(random_batches(5, batch_size, seq_len))

        def next_batch(self):
            return next(self.batches)

    fake = types.ModuleType("gptdist.data.loader")
    fake.TokenLoader = StandInLoader
    monkeypatch.setitem(sys.modules, "gptdist.data.loader", fake)
    if "gptdist.data" not in sys.modules:
        monkeypatch.setitem(sys.modules, "gptdist.data", types.ModuleType("gptdist.data"))
    model = tiny_gpt()
    got = validation_loss(model, "some/dir", 2, 16, 5, SINGLE)
    assert made == [("some/dir", "val", 2, 16, 0, 1, 0)]
    assert got == pytest.approx(validation_loss(model, None, 2, 16, 5, SINGLE, batches=random_batches(5)), rel=1e-7)


# ----------------------------------------------------------------------------- distributed


def test_rank_slice_covers_every_item_once_with_equal_slots():
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            slices = [rank_slice(n, r, world) for r in range(world)]
            assert len({len(s) for s in slices}) == 1 and len(slices[0]) == math.ceil(n / world)
            real = sorted(i for s in slices for i in s if i is not None)
            assert real == list(range(n))


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_distributed_equals_single_process(tmp_path, world):
    reference = run_all_evals(SINGLE)
    out = tmp_path / "out.json"
    torchrun(["tests/dist_scripts/eval_counts.py", str(out)], nproc=world, timeout=180)
    got = json.loads(out.read_text())
    assert got["world_size"] == world
    for task in ("hellaswag", "lambada"):
        assert got[task]["n"] == reference[task]["n"] == 7
        for key in reference[task]:
            assert got[task][key] == pytest.approx(reference[task][key], rel=1e-6), (task, key)
    assert got["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-6)
    # The FSDP rule: every rank made the same number of forwards, ceil(n / W) slots each.
    assert len(set(map(tuple, got["calls_per_rank"]))) == 1
    hellaswag_calls, lambada_calls, total = got["calls_per_rank"][0]
    slots = math.ceil(7 / world)
    assert hellaswag_calls == math.ceil(slots / 2) and lambada_calls == math.ceil(slots / 3)
    assert total == hellaswag_calls + lambada_calls + math.ceil(5 / world)


# ----------------------------------------------------------------------------- sampling and launch scripts


def test_sample_text_is_seeded_and_drops_ids_beyond_the_tokenizer():
    from dist_scripts.eval_stubs import AsciiEncoder

    enc, model = AsciiEncoder(), tiny_gpt()
    enc.n_vocab = 90  # pretend the model's vocab (96) is padded beyond the tokenizer's
    a = sample_text(model, enc, "Hi", 3, 20, temperature=1.0, top_k=10, seed=7)
    b = sample_text(model, enc, "Hi", 3, 20, temperature=1.0, top_k=10, seed=7)
    assert a == b and len(a) == 3 and all(s.startswith("Hi") for s in a)
    assert all(ord(c) - 32 < 90 for s in a for c in s)
    greedy = sample_text(model, enc, "Hi", 2, 5, temperature=0.0)
    assert greedy[0] == greedy[1]


@pytest.mark.slow
def test_launch_scripts_run_and_fail_cleanly(tmp_path):
    out = tmp_path / "eval.json"
    proc = python(["launch/evaluate.py", "--random-init", "gpt2-tiny", "--tasks", "lambada", "--limit", "3",
                   "--device", "cpu", "--no-progress", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["results"]["lambada"]["n"] == 3 and record["world_size"] == 1
    assert "launch/evaluate.py" in record["provenance"]["command"] and record["provenance"]["hardware"]
    assert "lambada: acc" in proc.stdout
    proc = python(["launch/sample.py", "--random-init", "gpt2-tiny", "--prompt", "Hello", "--num-samples", "2",
                   "--max-new-tokens", "4", "--device", "cpu"])
    assert proc.stdout.count("--- sample") == 2 and "Hello" in proc.stdout
    for args, message in (
        (["launch/evaluate.py", "--random-init", "gpt2-tiny", "--tasks", "mmlu"], "unknown task(s) mmlu"),
        (["launch/evaluate.py", "--checkpoint", str(tmp_path / "nope"), "--tasks", "lambada"], "no such checkpoint"),
        (["launch/evaluate.py", "--random-init", "test", "--tasks", "lambada"], "vocab_size 96 is smaller"),
        (["launch/evaluate.py", "--random-init", "test", "--tasks", "val"], "needs --data-dir"),  # no vocab check for val
        (["launch/sample.py", "--random-init", "gpt2-tiny", "--num-samples", "0"], "--num-samples must be"),
    ):
        proc = python(args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, proc.stderr
