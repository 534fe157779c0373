"""Token shards in llm.c's format: a 1024-byte header, then the tokens as uint16.

Header: 256 little-endian int32, of which three are used:
    [0] magic 20240520   [1] version 1   [2] number of tokens
The remaining 253 are zero. The file size is therefore exactly 1024 + 2 * ntok bytes. The same files are
read by llm.c (`dataloader.h`) and build-nanogpt (after skipping the header), and written by their
`fineweb.py` scripts.

Shards are written under a temporary name and renamed into place (`os.replace`), so a crash never leaves
a half-written shard under its final name. Reading maps the file (`np.memmap`) after checking the header
and the size; with `vocab_size` it also checks the largest token id once per shard per process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from gptdist.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4  # 1024
TOKEN_DTYPE = np.dtype("<u2")  # uint16 little-endian: GPT-2's 50257 ids fit
MAX_TOKEN_ID = int(np.iinfo(TOKEN_DTYPE).max)

# (resolved path, size, mtime_ns) -> largest token id: the O(n) scan runs once per shard per process
_max_token_cache: dict[tuple[str, int, int], int] = {}


def write_shard(path: str | os.PathLike, tokens) -> str:
    """Write `tokens` (any 1-D integer array-like, ids in [0, 65535]) as a shard; return its sha256.

    The sha256 is of the whole file (header + tokens), so `sha256sum FILE` gives the same value."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > MAX_TOKEN_ID):
        raise ValueError(f"token ids must be in [0, {MAX_TOKEN_ID}] to fit uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, arr.size
    header_bytes = header.tobytes()
    token_bytes = arr.astype(TOKEN_DTYPE, copy=False).tobytes()
    digest = hashlib.sha256(header_bytes)
    digest.update(token_bytes)

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header_bytes)
            f.write(token_bytes)
        os.replace(tmp, path)  # atomic: readers see the old file or the complete new one
    finally:
        if tmp.exists():
            tmp.unlink()
    return digest.hexdigest()


def read_shard_header(path: str | os.PathLike) -> dict:
    """Check a shard's header and size; return {"magic", "version", "num_tokens"}.

    Raises DataError naming the file for: missing file, short/bad header, wrong magic or version,
    a size that is not a whole number of tokens, or a size that disagrees with the header's count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path}: file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"shard {path}: truncated header ({size} bytes, expected at least {HEADER_BYTES})")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    magic, version, ntok = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise DataError(f"shard {path}: bad magic number {magic} (expected {MAGIC}); not an llm.c token shard")
    if version != VERSION:
        raise DataError(f"shard {path}: unsupported version {version} (expected {VERSION})")
    if ntok < 0:
        raise DataError(f"shard {path}: negative token count {ntok} in header")
    payload = size - HEADER_BYTES
    if payload % TOKEN_DTYPE.itemsize != 0:
        raise DataError(
            f"shard {path}: size not a multiple of the token size ({payload} bytes after the header, "
            f"tokens are {TOKEN_DTYPE.itemsize} bytes)"
        )
    expected = HEADER_BYTES + TOKEN_DTYPE.itemsize * ntok
    if size < expected:
        raise DataError(f"shard {path}: truncated ({size} bytes, header says {ntok} tokens = {expected} bytes)")
    if size > expected:
        raise DataError(f"shard {path}: {size - expected} bytes after the {ntok} tokens the header announces")
    return {"magic": magic, "version": version, "num_tokens": ntok}


def max_token_id(path: str | os.PathLike, tokens: np.ndarray) -> int:
    """Largest id in a shard's tokens, computed once per (file, size, mtime) in this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _max_token_cache:
        _max_token_cache[key] = int(tokens.max()) if tokens.size else -1  # vectorised scan of the map
    return _max_token_cache[key]


def open_shard(path: str | os.PathLike, vocab_size: Optional[int] = None) -> np.memmap:
    """Memory-map a shard's tokens (read-only, uint16, shape (num_tokens,)) after validating it.

    With `vocab_size`, every token id must be < vocab_size (checked once per shard per process)."""
    ntok = read_shard_header(path)["num_tokens"]
    if ntok == 0:
        tokens = np.zeros(0, dtype=TOKEN_DTYPE).view(np.memmap)  # np.memmap cannot map 0 bytes
    else:
        tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(ntok,))
    if vocab_size is not None:
        top = max_token_id(path, tokens)
        if top >= vocab_size:
            raise DataError(
                f"shard {path}: token id {top} >= vocab_size {vocab_size}; the data was tokenised for a "
                f"larger vocabulary than the model's"
            )
    return tokens


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
