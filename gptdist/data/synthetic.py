"""A small learnable token dataset, written in launch/prepare_data.py's format (tests, the device check)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gptdist.data.shards import write_shard


def make_token_dataset(folder: Path, train_tokens: int = 20_000, val_tokens: int = 4_000, vocab: int = 96, seed: int = 0) -> Path:
    """A learnable stream: runs of consecutive ids (mod vocab) with random jumps, so loss can fall."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, n in (("val", val_tokens), ("train", train_tokens)):
        starts = rng.integers(0, vocab, size=n // 8 + 1)
        tokens = ((starts[:, None] + np.arange(8)[None, :]) % vocab).reshape(-1)[:n].astype(np.uint16)
        name = f"{split}_000000.bin"
        sha = write_shard(folder / name, tokens)
        entries.append({"file": name, "split": split, "tokens": int(n), "sha256": sha, "max_token": int(tokens.max())})
    (folder / "manifest.json").write_text(json.dumps({"shards": entries, "tokenizer": {"name": "synthetic"}}))
    return folder
