"""GPT-2 BPE through tiktoken, with offline mirror support.

tiktoken downloads `vocab.bpe` and `encoder.json` on first use and caches each file under
`$TIKTOKEN_CACHE_DIR/<sha1 of its URL>`. Offline, we seed that cache from a mirror folder laid out like
`shared/data` (the files in `<mirror>/gpt2_bpe/`). The mirror comes from the `mirror` argument or the
`GPTDIST_DATA_MIRROR` environment variable. With neither a cached copy, a mirror nor a network, we stop
within seconds with a message that says how to fix it (tiktoken itself would retry for much longer).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from gptdist.errors import TokenizerError
from gptdist.net import reachable

EOT_TOKEN = 50256  # <|endoftext|>: separates documents in our shards
GPT2_VOCAB_SIZE = 50257

BPE_HOST = "openaipublic.blob.core.windows.net"
# file in <mirror>/gpt2_bpe/  ->  the URL tiktoken fetches it from
BPE_FILES = {
    "vocab.bpe": f"https://{BPE_HOST}/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": f"https://{BPE_HOST}/gpt-2/encodings/main/encoder.json",
}
MIRROR_ENV = "GPTDIST_DATA_MIRROR"


def _cache_setting() -> Optional[str]:
    """tiktoken's own rule: TIKTOKEN_CACHE_DIR if *set*, else DATA_GYM_CACHE_DIR if set, else None.
    A variable set to "" counts (tiktoken then caches nothing and always downloads)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return None


def cache_dir() -> Path:
    """The folder tiktoken reads (its default is <tmp>/data-gym-cache)."""
    return Path(_cache_setting() or Path(tempfile.gettempdir()) / "data-gym-cache")


def _cache_name(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


def is_cached() -> bool:
    if _cache_setting() == "":
        return False  # tiktoken's caching is off: it would download even if the files were on disk
    return all((cache_dir() / _cache_name(url)).is_file() for url in BPE_FILES.values())


def mirror_dir(mirror: Optional[str | os.PathLike] = None) -> Optional[Path]:
    value = mirror or os.environ.get(MIRROR_ENV)
    return Path(value) if value else None


def seed_cache_from_mirror(mirror: str | os.PathLike) -> Path:
    """Copy `<mirror>/gpt2_bpe/{vocab.bpe,encoder.json}` into tiktoken's cache under their sha1 names.
    Sets TIKTOKEN_CACHE_DIR if it was unset or empty so tiktoken reads exactly this folder."""
    src = Path(mirror) / "gpt2_bpe"
    missing = [name for name in BPE_FILES if not (src / name).is_file()]
    if missing:
        raise TokenizerError(f"offline mirror {mirror} lacks gpt2_bpe/{', gpt2_bpe/'.join(missing)}")
    if not _cache_setting():  # unset, or "" (caching off): point tiktoken at the folder we fill
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir())
    dst = cache_dir()
    dst.mkdir(parents=True, exist_ok=True)
    for name, url in BPE_FILES.items():
        target = dst / _cache_name(url)
        if not target.is_file():
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(src / name, tmp)
            os.replace(tmp, target)  # atomic: another rank seeding at once never sees half a file
    return dst


def get_tokenizer(mirror: Optional[str | os.PathLike] = None):
    """tiktoken's `gpt2` encoding, from cache, mirror or network — or a TokenizerError within seconds."""
    import tiktoken

    if not is_cached():
        m = mirror_dir(mirror)
        if m is not None:
            seed_cache_from_mirror(m)
        elif not reachable(BPE_HOST):
            raise TokenizerError(
                f"GPT-2 BPE files are not cached in {cache_dir()} and {BPE_HOST} is unreachable; "
                f"set {MIRROR_ENV}=/path/to/mirror (a folder with gpt2_bpe/vocab.bpe and gpt2_bpe/encoder.json)"
            )
    enc = tiktoken.get_encoding("gpt2")
    assert enc.eot_token == EOT_TOKEN and enc.n_vocab == GPT2_VOCAB_SIZE
    return enc
