"""Cut a prepared GPT-2-token data set down to its K most frequent token ids.

Why: with GPT-2's 50,257-token vocabulary the tied embedding/head matrix is V·d parameters, so every model
small enough to train on a CPU is almost all head (d=64: 3.2M of its 3.3M parameters) and its FLOPs barely
move with depth or width. A scaling-law sweep then has nothing to vary. Keeping the K most frequent ids of
the training split (ranked by count there, so validation never chooses) and mapping every other id to one
"rare token" id K-1 gives a vocabulary small models can afford. The loss is then over this K-token
alphabet, not GPT-2's: numbers are comparable within the sweep, not with GPT-2 losses.

New id i < K-1 is the i-th most frequent old id (ties broken by the smaller old id); K-1 is "rare".
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np

from gptdist.data.loader import MANIFEST, load_manifest
from gptdist.data.shards import open_shard, write_shard
from gptdist.errors import DataError


def frequency_mapping(train_tokens: list[np.ndarray], keep: int, source_vocab: int) -> np.ndarray:
    """old id -> new id (array of length source_vocab): the keep-1 most frequent old ids get 0..keep-2 in
    order of frequency, every other id gets keep-1."""
    counts = np.zeros(source_vocab, dtype=np.int64)
    for tokens in train_tokens:
        counts += np.bincount(np.asarray(tokens, dtype=np.int64), minlength=source_vocab)[:source_vocab]
    order = np.lexsort((np.arange(source_vocab), -counts))  # by count descending, then by id
    mapping = np.full(source_vocab, keep - 1, dtype=np.int64)
    mapping[order[: keep - 1]] = np.arange(keep - 1)
    return mapping


def truncate_vocabulary(source_dir: str | Path, out_dir: str | Path, keep: int, overwrite: bool = False) -> dict:
    """Write out_dir (manifest + shards) with every id of source_dir remapped to `keep` ids; return the manifest."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    manifest = load_manifest(source_dir)
    source_vocab = int(manifest.get("tokenizer", {}).get("vocab_size", 50257))
    if not 2 <= keep <= source_vocab:
        raise DataError(f"keep must be in [2, {source_vocab}], got {keep}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} is not empty; pass overwrite to replace it")
    shards = {e["file"]: open_shard(source_dir / e["file"], source_vocab) for e in manifest["shards"]}
    train = [shards[e["file"]] for e in manifest["shards"] if e["split"] == "train"]
    mapping = frequency_mapping(train, keep, source_vocab)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    entries = []
    for e in manifest["shards"]:
        new = mapping[np.asarray(shards[e["file"]], dtype=np.int64)]
        sha = write_shard(out_dir / e["file"], new)
        entries.append({**e, "sha256": sha, "max_token": int(new.max()) if new.size else -1,
                        "rare_fraction": float(np.mean(new == keep - 1)) if new.size else 0.0})
    out = {
        **{k: v for k, v in manifest.items() if k not in ("shards", "created")},
        "tokenizer": {**manifest.get("tokenizer", {}), "name": f"{manifest.get('tokenizer', {}).get('name', 'gpt2')}-top{keep}",
                      "vocab_size": keep, "rare_token": keep - 1,
                      "kept_source_ids": [int(i) for i in np.argsort(mapping)[: keep - 1]]},
        "derived_from": str(source_dir),
        "shards": entries,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / MANIFEST).write_text(json.dumps(out, indent=1) + "\n")
    return out


def unigram_loss(data_dir: str | Path) -> float:
    """Cross-entropy (nats/token) of the val split under the train split's token frequencies: the loss of a
    model that has learnt only which tokens are common, a yardstick for tiny runs."""
    manifest = load_manifest(data_dir)
    vocab = int(manifest.get("tokenizer", {}).get("vocab_size", 50257))
    counts = {split: np.zeros(vocab, dtype=np.int64) for split in ("train", "val")}
    for e in manifest["shards"]:
        if e["split"] in counts:
            counts[e["split"]] += np.bincount(np.asarray(open_shard(Path(data_dir) / e["file"]), dtype=np.int64), minlength=vocab)[:vocab]
    train = (counts["train"] + 1) / (counts["train"].sum() + vocab)  # add-one: a val-only id has finite loss
    return float(-(counts["val"] * np.log(train)).sum() / counts["val"].sum())
