"""Rank-aware, resumable reader of token shards: `TokenLoader`.

Layout of one split (from manifest.json): shards s_0, s_1, ... Each rank yields micro-batches x, y of
shape (B, T), y = x shifted left by one token. With W ranks, one *global* micro-batch spans W*B*T tokens
of a shard; global micro-batch p of a shard covers tokens [p*W*B*T, (p+1)*W*B*T + 1) and rank r takes

    buf = shard[p*W*B*T + r*B*T : p*W*B*T + (r+1)*B*T + 1]       # B*T + 1 tokens
    x = buf[:-1].view(B, T)      y = buf[1:].view(B, T)

(build-nanogpt's DataLoaderLite). So the ranks' x are disjoint and side by side, and together they are
exactly the x of a single rank with batch W*B: rows r*B:(r+1)*B of it. A shard holds
(num_tokens - 1) // (W*B*T) global micro-batches; its remaining tail tokens are skipped. When a shard is
used up the loader moves to the next one; after the last it starts a new epoch. The shard order of each
epoch is a permutation drawn from (seed, epoch) when `shuffle` is on (default for train, off for val), so
every rank, and every resumed run, agrees on it.

`state_dict()` is (epoch, shard index in the epoch's order, position in the shard) and a few fields that
must match on `load_state_dict()`. Validation uses its own loader on the val split: `reset()` (or
`val_batches(n)`, which resets first) gives the same batches every time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from gptdist.data.shards import file_sha256, open_shard, read_shard_header
from gptdist.errors import DataError

MANIFEST = "manifest.json"
PREPARE_HINT = "python launch/prepare_data.py --source tinyshakespeare --out data/tinyshakespeare"


def load_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {data_dir}; prepare the data first, e.g. `{PREPARE_HINT}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{path}: no 'shards' list; was it written by launch/prepare_data.py?")
    return manifest


def verify_manifest(data_dir: str | os.PathLike) -> dict:
    """Check every shard against manifest.json: header, size, token count and sha256 (reads all data)."""
    manifest = load_manifest(data_dir)
    for entry in manifest["shards"]:
        path = Path(data_dir) / entry["file"]
        ntok = read_shard_header(path)["num_tokens"]
        if ntok != entry["tokens"]:
            raise DataError(f"shard {path}: {ntok} tokens, manifest says {entry['tokens']}")
        if file_sha256(path) != entry["sha256"]:
            raise DataError(f"shard {path}: sha256 differs from manifest.json (corrupt or replaced)")
    return manifest


class TokenLoader:
    """Micro-batches (x, y) of one split for one rank; deterministic for a seed, resumable exactly.

    Args:
        data_dir: folder with manifest.json and shards (from launch/prepare_data.py)
        split: "train" or "val"
        batch_size, seq_len: B and T of this rank's micro-batch
        rank, world_size: this rank's slice of each global micro-batch
        seed: picks the shard order of each epoch (when shuffling)
        vocab_size: if given, every shard's largest token id must be < vocab_size
        shuffle: shuffle the shard order per epoch; default True for "train", False otherwise
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        vocab_size: Optional[int] = None,
        shuffle: Optional[bool] = None,
    ):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.data_dir = Path(data_dir)
        self.split = split
        self.B, self.T = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.vocab_size = vocab_size
        self.shuffle = (split == "train") if shuffle is None else shuffle
        self.manifest = load_manifest(self.data_dir)

        entries = [s for s in self.manifest["shards"] if s.get("split") == split]
        if not entries:
            splits = sorted({s.get("split") for s in self.manifest["shards"]})
            raise DataError(f"{self.data_dir} has no {split!r} shards (splits there: {', '.join(map(str, splits))})")
        self.files = [e["file"] for e in entries]
        self.global_tokens = world_size * batch_size * seq_len  # tokens per global micro-batch, W*B*T
        self.batches_per_shard = []
        for entry in entries:
            ntok = read_shard_header(self.data_dir / entry["file"])["num_tokens"]
            if ntok != entry["tokens"]:
                raise DataError(f"shard {self.data_dir / entry['file']}: {ntok} tokens, manifest says {entry['tokens']}")
            if ntok < self.global_tokens + 1:
                raise DataError(
                    f"shard {self.data_dir / entry['file']} has {ntok} tokens, fewer than one global micro-batch "
                    f"(world_size*batch_size*seq_len + 1 = {world_size}*{batch_size}*{seq_len} + 1 = "
                    f"{self.global_tokens + 1}); use a smaller batch or seq_len, fewer ranks, or larger shards"
                )
            if vocab_size is not None and entry.get("max_token", -1) >= vocab_size:
                # the manifest's figure lets a mismatch stop the run at start-up; open_shard checks the data itself
                raise DataError(
                    f"shard {self.data_dir / entry['file']}: token id {entry['max_token']} >= vocab_size {vocab_size} "
                    f"(manifest tokenizer: {self.manifest.get('tokenizer', {}).get('name', '?')})"
                )
            self.batches_per_shard.append((ntok - 1) // self.global_tokens)
        self._maps: dict[str, np.memmap] = {}  # opened (and vocab-checked) on first use
        self.reset()

    # --- position ---------------------------------------------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each rank gets per pass over the split."""
        return sum(self.batches_per_shard)

    def shard_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.files)))
        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.files))]

    def reset(self) -> None:
        """Back to the first batch of epoch 0 (validation calls this to see the same batches each time)."""
        self._set_position(epoch=0, shard_index=0, position=0)

    def _set_position(self, epoch: int, shard_index: int, position: int) -> None:
        self.epoch, self.shard_index, self.position = epoch, shard_index, position
        self._order = self.shard_order(epoch)

    def _shard(self, file: str) -> np.memmap:
        if file not in self._maps:
            self._maps[file] = open_shard(self.data_dir / file, vocab_size=self.vocab_size)
        return self._maps[file]

    # --- batches -----------------------------------------------------------------------------------------

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch: x, y int64 CPU tensors (B, T); y[i, t] is the token after x[i, t]."""
        shard_id = self._order[self.shard_index]
        tokens = self._shard(self.files[shard_id])
        start = self.position * self.global_tokens + self.rank * self.B * self.T
        buf = torch.from_numpy(tokens[start : start + self.B * self.T + 1].astype(np.int64))  # (B*T + 1,)
        x = buf[:-1].view(self.B, self.T)
        y = buf[1:].view(self.B, self.T)

        # advance: next global micro-batch, next shard, next epoch
        self.position += 1
        if self.position >= self.batches_per_shard[shard_id]:
            self.position = 0
            self.shard_index += 1
            if self.shard_index >= len(self.files):
                self._set_position(self.epoch + 1, 0, 0)
        return x, y

    def val_batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """reset(), then yield n micro-batches: the same n every call."""
        self.reset()
        for _ in range(n):
            yield self.next_batch()

    # --- resume -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain ints and strings (safe for torch.save / json), one per rank."""
        return {
            "epoch": self.epoch,
            "shard_index": self.shard_index,
            "position": self.position,
            "split": self.split,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shards": list(self.files),
            "batch_size": self.B,
            "seq_len": self.T,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken. The data layout must match (same split, seed, shuffle,
        shards, batch_size, seq_len, world_size, rank): otherwise the position would mean other tokens."""
        mine = self.state_dict()
        for key in ("split", "seed", "shuffle", "shards", "batch_size", "seq_len", "world_size", "rank"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"data loader state does not match this run: {key} was {state.get(key)!r}, now {mine[key]!r}"
                )
        epoch, shard_index, position = (int(state[k]) for k in ("epoch", "shard_index", "position"))
        if not 0 <= shard_index < len(self.files) or epoch < 0:
            raise DataError(f"data loader state out of range: epoch {epoch}, shard index {shard_index}")
        shard_id = self.shard_order(epoch)[shard_index]
        if not 0 <= position < self.batches_per_shard[shard_id]:
            raise DataError(f"data loader state out of range: position {position} in shard {self.files[shard_id]}")
        self._set_position(epoch, shard_index, position)
