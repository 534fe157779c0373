"""Token shards, the prepare pipeline and TokenLoader.

References: the llm.c header layout, tiktoken's encoding of the source text (prepared shards must decode
back to it), and a single-rank loader with batch W*B (W ranks must together give exactly its batches).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptdist.data import TokenLoader, open_shard, read_shard_header, verify_manifest, write_shard
from gptdist.data.prepare import prepare
from gptdist.errors import DataError
from gptdist.tokenizer import EOT_TOKEN, get_tokenizer
from launchers import python, subprocess_env

PREPARE = "launch/prepare_data.py"
TS_TOKENS = 338025  # GPT-2 tokens of Tiny Shakespeare (shared/data/SOURCES.md)


def all_tokens(data_dir: Path, split: str) -> np.ndarray:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    parts = [np.asarray(open_shard(data_dir / s["file"])) for s in manifest["shards"] if s["split"] == split]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def make_dataset(folder: Path, sizes: list[int], split: str = "train") -> np.ndarray:
    """Shards whose tokens are their global positions (unique ids), plus a manifest like prepare writes."""
    folder.mkdir(parents=True, exist_ok=True)
    stream = np.arange(sum(sizes), dtype=np.uint16)
    assert sum(sizes) < 65536
    entries, start = [], 0
    for i, n in enumerate(sizes):
        name = f"{split}_{i:06d}.bin"
        sha = write_shard(folder / name, stream[start : start + n])
        entries.append({"file": name, "split": split, "tokens": n, "sha256": sha})
        start += n
    (folder / "manifest.json").write_text(json.dumps({"shards": entries}))
    return stream


# --- shard format ---------------------------------------------------------------------------------------------


def test_shard_round_trip_and_llmc_header(tmp_path):
    tokens = np.array([0, 1, 50256, 42, 65535, 7], dtype=np.int64)
    path = tmp_path / "s.bin"
    sha = write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(tokens)
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:3]) == [20240520, 1, len(tokens)] and not header[3:].any()
    assert np.array_equal(np.frombuffer(raw[1024:], dtype="<u2"), tokens)
    assert sha == hashlib.sha256(raw).hexdigest()
    assert read_shard_header(path) == {"magic": 20240520, "version": 1, "num_tokens": len(tokens)}
    assert np.array_equal(open_shard(path), tokens)
    assert not [p for p in tmp_path.iterdir() if p.name != "s.bin"]  # temp file renamed away


def _corrupt(path: Path, case: str) -> None:
    raw = bytearray(path.read_bytes())
    if case == "magic":
        raw[0:4] = np.int32(1234).tobytes()
    elif case == "version":
        raw[4:8] = np.int32(7).tobytes()
    elif case == "truncated":
        raw = raw[:-20]
    elif case == "odd":
        raw += b"\x00"
    elif case == "extra":
        raw += b"\x00\x00"
    elif case == "short_header":
        raw = raw[:100]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "case, problem",
    [
        ("magic", "bad magic"),
        ("version", "unsupported version 7"),
        ("truncated", "truncated"),
        ("odd", "not a multiple of the token size"),
        ("extra", "bytes after"),
        ("short_header", "truncated header"),
        ("missing", "not found"),
        ("vocab", "token id 200 >= vocab_size 100"),
    ],
)
def test_bad_shards_are_rejected_naming_file_and_problem(tmp_path, case, problem):
    path = tmp_path / f"bad_{case}.bin"
    write_shard(path, np.array([1, 2, 200, 3] * 10))
    if case == "missing":
        path.unlink()
    elif case != "vocab":
        _corrupt(path, case)
    with pytest.raises(DataError) as err:
        open_shard(path, vocab_size=100)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_vocab_check_runs_once_per_shard(tmp_path, monkeypatch):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(1000))
    assert open_shard(path, vocab_size=1000).shape == (1000,)
    calls = []
    monkeypatch.setattr(np.memmap, "max", lambda self, *a, **k: calls.append(1) or 0)
    open_shard(path, vocab_size=1000)
    assert calls == []  # answered from the per-process cache
    monkeypatch.undo()
    write_shard(path, np.arange(2000))  # a rewritten file (new size and mtime) is checked again
    with pytest.raises(DataError, match="token id 1999 >= vocab_size 1000"):
        open_shard(path, vocab_size=1000)


# --- loader ---------------------------------------------------------------------------------------------------


def take(loader: TokenLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [loader.next_batch() for _ in range(n)]


def test_batches_are_shifted_windows_in_order(tmp_path):
    make_dataset(tmp_path, [100, 70])
    loader = TokenLoader(tmp_path, "train", batch_size=2, seq_len=8, shuffle=False)
    assert loader.batches_per_shard == [6, 4]  # (100-1)//16, (70-1)//16
    x, y = loader.next_batch()
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 8)
    assert torch.equal(x.flatten(), torch.arange(0, 16)) and torch.equal(y.flatten(), torch.arange(1, 17))
    batches = take(loader, 5 + 4)  # the rest of shard 0, then all of shard 1
    assert batches[5][0][0, 0].item() == 100  # shard 1 starts at stream position 100
    x, _ = loader.next_batch()  # epoch 1 starts again at shard 0
    assert x[0, 0].item() == 0 and loader.epoch == 1


def test_ranks_together_equal_one_rank_with_the_whole_batch(tmp_path):
    make_dataset(tmp_path, [400, 260, 333])
    W, B, T = 3, 2, 8
    single = TokenLoader(tmp_path, "train", W * B, T, rank=0, world_size=1, seed=5)
    ranks = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=W, seed=5) for r in range(W)]
    n = 2 * single.batches_per_epoch + 3  # over two epoch boundaries
    assert all(r.batches_per_epoch == single.batches_per_epoch for r in ranks)
    seen = set()
    for step in range(n):
        xs, ys = zip(*(r.next_batch() for r in ranks))
        x_ref, y_ref = single.next_batch()
        assert torch.equal(torch.cat(xs), x_ref) and torch.equal(torch.cat(ys), y_ref)
        if step < single.batches_per_epoch:  # within an epoch no token is used twice as input
            ids = torch.cat(xs).flatten().tolist()
            assert len(set(ids)) == len(ids) and not seen & set(ids)
            seen |= set(ids)


def test_same_seed_same_batches_and_seed_changes_shard_order(tmp_path):
    make_dataset(tmp_path, [50] * 8)
    a = TokenLoader(tmp_path, "train", 2, 4, seed=1)
    b = TokenLoader(tmp_path, "train", 2, 4, seed=1)
    for (xa, ya), (xb, yb) in zip(take(a, 40), take(b, 40)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    orders = {tuple(TokenLoader(tmp_path, "train", 2, 4, seed=s).shard_order(0)) for s in range(5)}
    assert len(orders) > 1
    assert a.shard_order(0) != a.shard_order(1) or a.shard_order(1) != a.shard_order(2)  # reshuffled per epoch
    assert sorted(a.shard_order(3)) == list(range(8))


@pytest.mark.parametrize("k", [0, 3, 11, 25])
def test_resume_gives_the_same_next_batches(tmp_path, k):
    make_dataset(tmp_path, [90, 60, 75])
    args = dict(split="train", batch_size=2, seq_len=4, rank=1, world_size=2, seed=3)
    uninterrupted = TokenLoader(tmp_path, **args)
    take(uninterrupted, k)
    expected = take(uninterrupted, 15)

    first = TokenLoader(tmp_path, **args)
    take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = TokenLoader(tmp_path, **args)
    resumed.load_state_dict(state)
    for (x, y), (xe, ye) in zip(take(resumed, 15), expected):
        assert torch.equal(x, xe) and torch.equal(y, ye)


def test_resume_with_another_layout_is_refused(tmp_path):
    make_dataset(tmp_path, [200])
    state = TokenLoader(tmp_path, "train", 2, 4, rank=0, world_size=2).state_dict()
    with pytest.raises(DataError, match="world_size was 2, now 1"):
        TokenLoader(tmp_path, "train", 2, 4).load_state_dict(state)


def test_reset_and_val_batches_repeat(tmp_path):
    make_dataset(tmp_path, [300], split="val")
    val = TokenLoader(tmp_path, "val", 2, 8, rank=1, world_size=2)
    first = list(val.val_batches(4))
    take(val, 3)
    again = list(val.val_batches(4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    val.reset()
    assert torch.equal(val.next_batch()[0], first[0][0])


def test_loader_errors_are_clear(tmp_path):
    make_dataset(tmp_path, [100])
    with pytest.raises(DataError, match=r"fewer than one global micro-batch \(world_size\*batch_size\*seq_len \+ 1 = 4\*2\*16 \+ 1 = 129\)"):
        TokenLoader(tmp_path, "train", 2, 16, rank=0, world_size=4)
    with pytest.raises(DataError, match="no 'val' shards"):
        TokenLoader(tmp_path, "val", 2, 4)
    with pytest.raises(DataError, match="no manifest.json in .*prepare_data.py"):
        TokenLoader(tmp_path / "nothing", "train", 2, 4)
    with pytest.raises(DataError, match="token id 99 >= vocab_size 50"):
        TokenLoader(tmp_path, "train", 2, 4, vocab_size=50).next_batch()


# --- prepare: Tiny Shakespeare end to end through the CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def tinyshakespeare(tmp_path_factory, mirror) -> Path:
    out = tmp_path_factory.mktemp("ts") / "tinyshakespeare"
    proc = python([PREPARE, "--source", "tinyshakespeare", "--out", str(out), "--shard-tokens", "100000",
                   "--workers", "2"])
    assert "train: 301,967 tokens in 4 shard(s)" in proc.stdout
    return out


def test_tinyshakespeare_manifest_counts_and_checksums(tinyshakespeare, mirror):
    manifest = verify_manifest(tinyshakespeare)  # headers, sizes, counts and sha256 of every shard
    assert [s["file"] for s in manifest["shards"]] == [
        "val_000000.bin", "train_000000.bin", "train_000001.bin", "train_000002.bin", "train_000003.bin"]
    assert [s["tokens"] for s in manifest["shards"] if s["split"] == "train"][:3] == [100000] * 3
    assert manifest["tokenizer"] == {"name": "gpt2", "vocab_size": 50257, "eot_token": 50256,
                                     "documents_prefixed_with_eot": True}
    totals = manifest["total_tokens"]
    assert totals["train"] + totals["val"] == TS_TOKENS + 2  # + one <|endoftext|> before each part
    for s in manifest["shards"]:
        assert hashlib.sha256((tinyshakespeare / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    assert manifest["source"] == "tinyshakespeare" and manifest["gptdist_version"]

    # the shards decode back to the text: first 90% of the characters is train, the rest val (nanoGPT)
    text = (mirror / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    enc = get_tokenizer()
    for split, part in (("train", text[:cut]), ("val", text[cut:])):
        tokens = all_tokens(tinyshakespeare, split)
        assert tokens[0] == EOT_TOKEN and (tokens == EOT_TOKEN).sum() == 1
        assert enc.decode(tokens[1:].tolist()) == part
        assert totals[split] == len(tokens)


def test_tinyshakespeare_val_feeds_four_ranks(tinyshakespeare):
    loaders = [TokenLoader(tinyshakespeare, "val", 8, 256, rank=r, world_size=4, vocab_size=50257) for r in range(4)]
    assert loaders[0].batches_per_epoch == (36060 - 1) // (4 * 8 * 256)
    starts = [loader.next_batch()[0] for loader in loaders]
    val = torch.from_numpy(all_tokens(tinyshakespeare, "val").astype(np.int64))
    assert torch.equal(torch.cat(starts).flatten(), val[: 4 * 8 * 256])


def test_same_preparation_again_is_a_no_op_and_a_different_one_is_refused(tinyshakespeare, tmp_path):
    def snapshot(folder):
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}

    before = snapshot(tinyshakespeare)
    # the README's one-liner run twice: the second prepare finds its own manifest and leaves it be
    proc = python([PREPARE, "--source", "tinyshakespeare", "--out", str(tinyshakespeare), "--shard-tokens", "100000"])
    assert f"{tinyshakespeare} already holds this preparation (manifest.json matches): nothing to do" in proc.stdout
    assert snapshot(tinyshakespeare) == before

    # another split rule or shard size into the same folder: refused, naming the field and both values
    proc = python([PREPARE, "--source", "tinyshakespeare", "--out", str(tinyshakespeare)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: output folder {tinyshakespeare} holds a different preparation (shard_tokens: 100000 there, "
        f"100000000 here); pass --overwrite to replace it or choose another --out")
    proc = python([PREPARE, "--source", "tinyshakespeare", "--out", str(tinyshakespeare), "--shard-tokens", "100000",
                   "--val-fraction", "0.2"], check=False)
    assert proc.returncode == 2 and "(val_split.val_fraction: 0.1 there, 0.2 here)" in proc.stderr
    assert snapshot(tinyshakespeare) == before

    # a matching manifest whose shard was cut short is not reused
    damaged = tmp_path / "damaged"
    shutil.copytree(tinyshakespeare, damaged)
    with open(damaged / "train_000003.bin", "r+b") as f:
        f.truncate(100)
    proc = python([PREPARE, "--source", "tinyshakespeare", "--out", str(damaged), "--shard-tokens", "100000"],
                  check=False)
    assert proc.returncode == 2 and "train_000003.bin is missing or has the wrong size" in proc.stderr

    # a non-empty folder without a manifest is nobody's preparation: refused as before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = python([PREPARE, "--source", "tinyshakespeare", "--out", str(other)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: output folder {other} is not empty; pass --overwrite to replace it"
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_only_once_complete(tinyshakespeare, tmp_path):
    before = {p.name: p.read_bytes() for p in tinyshakespeare.iterdir()}

    # --overwrite replaces it only once the new data is complete; a failing run leaves the old one alone
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n{"body": "no text field"}\n')
    proc = python([PREPARE, "--source", str(jsonl), "--out", str(tinyshakespeare), "--overwrite"], check=False)
    assert proc.returncode == 2 and "docs.jsonl:2: no field 'text'" in proc.stderr
    assert {p.name: p.read_bytes() for p in tinyshakespeare.iterdir()} == before
    assert [p.name for p in tinyshakespeare.parent.iterdir()] == ["tinyshakespeare"]  # no staging left


# --- prepare: local and mirror sources --------------------------------------------------------------------


def _docs(n: int) -> list[str]:
    return [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 5 + 1) for i in range(n)]


def _expected(texts: list[str]) -> np.ndarray:
    enc = get_tokenizer()
    return np.concatenate([[EOT_TOKEN] + enc.encode_ordinary(t) for t in texts]).astype(np.uint16)


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_source_val_fraction_picks_every_nth_document(tmp_path, workers):
    texts = _docs(40)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": i, "content": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    manifest = prepare(str(src), out, text_field="content", shard_tokens=500, val_fraction=0.25,
                       workers=workers, chunksize=3, progress=False)
    val_docs = [t for i, t in enumerate(texts) if i % 4 == 3]  # floor((i+1)/4) > floor(i/4)
    train_docs = [t for i, t in enumerate(texts) if i % 4 != 3]
    assert np.array_equal(all_tokens(out, "val"), _expected(val_docs))
    assert np.array_equal(all_tokens(out, "train"), _expected(train_docs))
    assert manifest["documents"] == {"train": 30, "val": 10}
    assert all(s["tokens"] == 500 for s in manifest["shards"][:-1] if s["split"] == "train")
    verify_manifest(out)


def test_val_tokens_takes_the_first_tokens_of_the_stream(tmp_path):
    texts = _docs(12)
    folder = tmp_path / "mirror" / "web"
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:7]))
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[7:]))
    manifest = prepare("mirror:web", tmp_path / "out", mirror=str(tmp_path / "mirror"), shard_tokens=64,
                       val_tokens=100, workers=1, progress=False)
    stream = _expected(texts)
    assert np.array_equal(all_tokens(tmp_path / "out", "val"), stream[:100])
    assert np.array_equal(all_tokens(tmp_path / "out", "train"), stream[100:])
    assert manifest["val_split"] == {"rule": "first_tokens", "val_tokens": 100}
    assert manifest["source_details"]["kind"] == "mirror"


def test_parquet_and_text_folder_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _docs(10)
    pq.write_table(pa.table({"text": texts}), tmp_path / "docs.parquet")
    prepare(str(tmp_path / "docs.parquet"), tmp_path / "pq", shard_tokens=10_000, val_fraction=0.0, workers=1,
            progress=False)
    assert np.array_equal(all_tokens(tmp_path / "pq", "train"), _expected(texts))

    folder = tmp_path / "txt"
    folder.mkdir()
    for i, t in enumerate(texts[:3]):
        (folder / f"{i}.txt").write_text(t)
    prepare(str(folder), tmp_path / "tx", shard_tokens=10_000, val_fraction=0.0, workers=1, progress=False)
    assert np.array_equal(all_tokens(tmp_path / "tx", "train"), _expected(texts[:3]))  # one document per file


# --- command-line errors -------------------------------------------------------------------------------------


def _run_cli(args: list[str], **env: str):
    start = time.monotonic()
    environment = subprocess_env(**env)
    for var in [k for k, v in env.items() if v == ""]:
        environment.pop(var)
    proc = python([PREPARE, *args], env=environment, check=False, timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "tinyshakespeare"], "error: the following arguments are required: --out"),
        (["--source", "x", "--out", "o", "--shard-tokens", "0"], "error: --shard-tokens must be >= 1, got 0"),
        (["--source", "x", "--out", "o", "--val-fraction", "1.5"], "error: --val-fraction must be in [0, 1), got 1.5"),
        (["--source", "nowhere.jsonl", "--out", "o"], "error: source nowhere.jsonl: no such file or folder"),
        (["--source", "x", "--out", "o", "--val-tokens", "5", "--val-fraction", "0.1"], "not allowed with argument"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, message):
    proc, _ = _run_cli(args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


def test_hf_source_offline_env_fails_fast(tmp_path):
    proc, seconds = _run_cli(["--source", "hf:HuggingFaceFW/fineweb-edu", "--hf-config", "sample-10BT",
                              "--out", str(tmp_path / "fw")], HF_HUB_OFFLINE="1")
    assert proc.returncode == 2 and seconds < 10
    assert proc.stderr.startswith("error: cannot stream hf:HuggingFaceFW/fineweb-edu") and "HF_HUB_OFFLINE=1" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "fw").exists()


def test_hf_source_unreachable_hub_fails_fast(tmp_path):
    # no offline variables: the socket probe of the hub endpoint must catch it (datasets would retry ~24 s)
    proc, seconds = _run_cli(["--source", "hf:HuggingFaceFW/fineweb-edu", "--out", str(tmp_path / "fw")],
                             HF_HUB_OFFLINE="", HF_DATASETS_OFFLINE="", HF_ENDPOINT="https://nonexistent.invalid")
    assert proc.returncode == 2 and seconds < 10
    assert "nonexistent.invalid:443 is unreachable" in proc.stderr and proc.stderr.count("\n") == 1
