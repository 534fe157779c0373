"""Sources -> GPT-2 token shards + manifest.json (the logic behind `launch/prepare_data.py`).

Output folder:
    train_000000.bin, train_000001.bin, ...   llm.c shards (see gptdist/data/shards.py)
    val_000000.bin, ...
    manifest.json                             source, tokenizer, every shard with split/tokens/sha256, totals

Each document is tokenised with GPT-2's BPE (`encode_ordinary`: a literal "<|endoftext|>" in the text is
plain text) and prefixed with the <|endoftext|> token 50256, as build-nanogpt's fineweb.py does, so the
model sees where documents start. Shards are filled to exactly `shard_tokens` (documents run on into
the next shard, as in llm.c); the last shard of each split holds the remainder.

Validation split, deterministic:
  * one-document sources (Tiny Shakespeare, a single .txt): by characters, the last `val_fraction` of the
    text (default 10%) is val, the rest train -- nanoGPT's shakespeare split. Each part is a document.
  * many documents, `val_fraction`: document i is val when floor((i+1)*f) > floor(i*f), i.e. every
    (1/f)-th document; it needs no document count up front, so it works on a stream.
  * `val_tokens` N: the first N tokens of the token stream are val (a document may be cut), the rest train;
    llm.c / build-nanogpt make their first shard of FineWeb the val split this way. Default for hf: sources
    (N = shard_tokens).

The folder is built under a temporary sibling name and renamed into place at the end, so a failure or
Ctrl-C leaves any existing folder untouched and never a half-written one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

import gptdist
from gptdist.cli import HelpFormatter
from gptdist.data.shards import HEADER_BYTES, TOKEN_DTYPE, write_shard
from gptdist.data.sources import Source, resolve_source
from gptdist.errors import DataError, GptdistError
from gptdist.tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, get_tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000  # llm.c / build-nanogpt fineweb shards
DEFAULT_VAL_FRACTION = 0.1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


class ShardWriter:
    """Collects one split's tokens into fixed-size shards in `folder`."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.buffer: Optional[np.ndarray] = None  # allocated on first use: a split may get no tokens
        self.filled = 0
        self.shards: list[dict] = []
        self.documents = 0
        self.total_tokens = 0

    def add(self, tokens: np.ndarray, new_document: bool = True) -> None:
        if self.buffer is None:
            self.buffer = np.empty(self.shard_tokens, dtype=TOKEN_DTYPE)
        self.documents += int(new_document)
        self.total_tokens += len(tokens)
        while len(tokens):
            take = min(len(tokens), self.shard_tokens - self.filled)
            self.buffer[self.filled : self.filled + take] = tokens[:take]
            self.filled += take
            tokens = tokens[take:]
            if self.filled == self.shard_tokens:
                self._flush()

    def close(self) -> list[dict]:
        if self.filled:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = shard_name(self.split, len(self.shards))
        tokens = self.buffer[: self.filled]
        sha = write_shard(self.folder / name, tokens)
        self.shards.append({"file": name, "split": self.split, "tokens": int(self.filled), "sha256": sha,
                            "max_token": int(tokens.max())})
        self.filled = 0


# --- tokenisation in worker processes ---------------------------------------------------------------------

_encoder = None


def _init_worker(mirror: Optional[str]) -> None:
    global _encoder
    _encoder = get_tokenizer(mirror)


def _encode(item: tuple[Optional[str], str]) -> tuple[Optional[str], np.ndarray]:
    """(split label, text) -> (split label, [EOT] + BPE ids as uint16)."""
    split, text = item
    ids = _encoder.encode_ordinary(text)
    tokens = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
    tokens[0] = EOT_TOKEN
    tokens[1:] = ids
    return split, tokens


def _labelled_documents(source: Source, val_fraction: Optional[float]) -> Iterator[tuple[Optional[str], str]]:
    """Documents with their split; None = decided later by the val_tokens rule."""
    if val_fraction is None:
        for text in source.documents():
            yield None, text
    elif source.single_document:
        (text,) = list(source.documents())
        cut = int(len(text) * (1.0 - val_fraction))  # nanoGPT: train = data[:int(n*0.9)], val = the rest
        yield "train", text[:cut]
        if cut < len(text):
            yield "val", text[cut:]
    else:
        for i, text in enumerate(source.documents()):
            is_val = math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction)
            yield ("val" if is_val else "train"), text


# --- the whole job -----------------------------------------------------------------------------------------


def check_output_folder(out: Path, overwrite: bool) -> bool:
    """Refuse a non-folder or a non-empty folder without a manifest. Return True when `out` holds an
    earlier preparation (manifest.json) that `prepare` may find identical to this one."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if (out / MANIFEST).is_file():
            return True
        raise DataError(f"output folder {out} is not empty; pass --overwrite to replace it")
    return False


# The manifest fields that say what a preparation is; `created`, the version and the shard list follow from them.
# A source's `origin` (mirror path or download URL) is left out: both give the same checked text.
IDENTITY_FIELDS = ("source", "source_details", "tokenizer", "val_split", "shard_tokens")


def identity(manifest: dict) -> dict:
    ident = {key: manifest.get(key) for key in IDENTITY_FIELDS}
    if isinstance(ident["source_details"], dict):
        ident["source_details"] = {k: v for k, v in ident["source_details"].items() if k != "origin"}
    return ident


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: A there, B here' for every differing leaf of two identity dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
    return out


def reuse_existing(out: Path, planned: dict) -> dict:
    """The manifest already in `out` when it describes exactly the preparation `planned` and every shard it
    lists is present at its full size; else DataError naming the difference (nothing is touched)."""
    try:
        existing = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"output folder {out} holds an unreadable {MANIFEST} ({e}); pass --overwrite to replace it")
    diff = differences(identity(existing), identity(planned))
    if diff:
        raise DataError(f"output folder {out} holds a different preparation ({'; '.join(diff)}); "
                        f"pass --overwrite to replace it or choose another --out")
    for shard in existing.get("shards", []):
        path = out / shard["file"]
        expected = HEADER_BYTES + shard["tokens"] * TOKEN_DTYPE.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise DataError(f"output folder {out} has the same manifest but {shard['file']} is missing or has the "
                            f"wrong size; pass --overwrite to prepare it again")
    return existing


def prepare(
    source: str,
    out: str | os.PathLike,
    *,
    text_field: str = "text",
    hf_config: Optional[str] = None,
    hf_split: str = "train",
    mirror: Optional[str] = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_tokens: Optional[int] = None,
    val_fraction: Optional[float] = None,
    workers: Optional[int] = None,
    chunksize: int = 16,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenise `source` into shards under `out`; return the manifest (also written as out/manifest.json)."""
    out = Path(out)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    if val_tokens is not None and val_fraction is not None:
        raise DataError("give --val-tokens or --val-fraction, not both")
    if val_tokens is not None and val_tokens < 0:
        raise DataError(f"--val-tokens must be >= 0, got {val_tokens}")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    already_prepared = check_output_folder(out, overwrite)  # before any slow work

    src = resolve_source(source, text_field=text_field, hf_config=hf_config, hf_split=hf_split, mirror=mirror)
    if val_tokens is None and val_fraction is None:
        if src.description["kind"] == "huggingface":
            val_tokens = shard_tokens  # llm.c / build-nanogpt: the first shard is val
        else:
            val_fraction = DEFAULT_VAL_FRACTION
    val_split = (
        {"rule": "first_tokens", "val_tokens": val_tokens} if val_tokens is not None else
        {"rule": "last_characters" if src.single_document else "every_nth_document", "val_fraction": val_fraction}
    )
    tokenizer_info = {"name": "gpt2", "vocab_size": GPT2_VOCAB_SIZE, "eot_token": EOT_TOKEN,
                      "documents_prefixed_with_eot": True}
    if already_prepared:  # the same command run twice is a no-op; a different one is refused, naming why
        return reuse_existing(out, {"source": src.name, "source_details": src.description,
                                    "tokenizer": tokenizer_info, "val_split": val_split, "shard_tokens": shard_tokens})
    get_tokenizer(mirror)  # fail fast (and seed tiktoken's cache) before starting workers

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        writers = {split: ShardWriter(staging, split, shard_tokens) for split in SPLITS}
        _tokenise_into(writers, src, val_tokens, val_fraction, mirror, workers, chunksize, progress)
        shards = [s for split in ("val", "train") for s in writers[split].close()]
        manifest = {
            "format": "llm.c token shards (header 256 x int32: magic 20240520, version 1, num tokens; uint16 tokens)",
            "source": src.name,
            "source_details": src.description,
            "tokenizer": tokenizer_info,
            "val_split": val_split,
            "shard_tokens": shard_tokens,
            "shards": shards,
            "total_tokens": {split: writers[split].total_tokens for split in SPLITS},
            "documents": {split: writers[split].documents for split in SPLITS},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gptdist_version": gptdist.__version__,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _tokenise_into(writers, src, val_tokens, val_fraction, mirror, workers, chunksize, progress) -> None:
    from tqdm import tqdm

    items = _labelled_documents(src, val_fraction)
    bar = tqdm(unit="tok", unit_scale=True, desc=f"tokenising {src.name}",
               disable=not progress or not sys.stderr.isatty())
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(
            workers, initializer=_init_worker, initargs=(mirror,)
        )
        encoded = pool.imap(_encode, items, chunksize=chunksize)  # imap keeps document order
    else:
        _init_worker(mirror)
        encoded = map(_encode, items)
    try:
        for split, tokens in encoded:
            bar.update(len(tokens))
            if split is not None:
                writers[split].add(tokens)
                continue
            # val_tokens rule: the first val_tokens tokens of the stream are val
            room = val_tokens - writers["val"].total_tokens
            if room > 0:
                writers["val"].add(tokens[:room])
            if len(tokens) > room:
                writers["train"].add(tokens[max(room, 0):], new_document=room <= 0)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def _move_into_place(staging: Path, out: Path) -> None:
    """Swap the finished folder in; an existing folder is only deleted once the new one is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


# --- command line ------------------------------------------------------------------------------------------


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the usage too; we keep errors to one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineErrorParser(
        prog="prepare_data.py", formatter_class=HelpFormatter,
        description="Tokenise a text source with GPT-2's BPE into llm.c-format shards plus manifest.json.",
    )
    p.add_argument("--source", required=True,
                   help="tinyshakespeare | hf:ORG/NAME | mirror:REL/PATH | a .txt/.jsonl/.parquet file or a folder of them")
    p.add_argument("--out", required=True,
                   help="output folder; the same preparation again is a no-op, a different one into a "
                        "non-empty folder is refused unless --overwrite")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/parquet/hf rows")
    p.add_argument("--hf-config", default=None, help="Hugging Face dataset config, e.g. sample-10BT")
    p.add_argument("--hf-split", default="train", help="Hugging Face dataset split")
    p.add_argument("--mirror", default=None, help="offline mirror folder (default: $GPTDIST_DATA_MIRROR)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-tokens", type=int, default=None,
                     help="the first N tokens are val (default for hf: sources: one shard)")
    val.add_argument("--val-fraction", type=float, default=None,
                     help=f"fraction for val: of characters for one-document sources, else of documents "
                          f"(default {DEFAULT_VAL_FRACTION})")
    p.add_argument("--workers", type=int, default=None, help="tokeniser processes (default min(cpu count, 8))")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Without --overwrite, an existing manifest is either reused as it is or refused: prepare raises.
    reusing = not args.overwrite and (Path(args.out) / MANIFEST).is_file()
    try:
        manifest = prepare(
            args.source, args.out, text_field=args.text_field, hf_config=args.hf_config, hf_split=args.hf_split,
            mirror=args.mirror, shard_tokens=args.shard_tokens, val_tokens=args.val_tokens,
            val_fraction=args.val_fraction, workers=args.workers, overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except GptdistError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split in SPLITS:
        n_shards = sum(1 for s in manifest["shards"] if s["split"] == split)
        print(f"{split}: {manifest['total_tokens'][split]:,} tokens in {n_shards} shard(s), "
              f"{manifest['documents'][split]:,} document(s)")
    if reusing:
        print(f"{args.out} already holds this preparation ({MANIFEST} matches): nothing to do")
    else:
        print(f"wrote {Path(args.out) / MANIFEST}")
    return 0
