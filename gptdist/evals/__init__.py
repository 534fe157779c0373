"""Benchmark evals (HellaSwag, LAMBADA) and the file handling they share.

Each eval's data file is found in this order:
1. an explicit path;
2. the offline mirror, `$GPTDIST_DATA_MIRROR/<relative path>` (laid out like ../shared/data);
3. a cached download under `$GPTDIST_CACHE_DIR` (default ~/.cache/gptdist), fetched from the
   official URL on first use. With no network this fails within seconds with a message that says to
   set GPTDIST_DATA_MIRROR, instead of hanging in a retry loop.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from gptdist.errors import DataError
from gptdist.net import reachable
from gptdist.jsonl import read_jsonl  # noqa: F401  (re-exported: evals read their files with it)

MIRROR_ENV = "GPTDIST_DATA_MIRROR"
CACHE_ENV = "GPTDIST_CACHE_DIR"


def cache_dir() -> Path:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else Path.home() / ".cache" / "gptdist"


def download(url: str, target: Path, timeout_s: float = 60.0) -> Path:
    """Fetch url to target (atomic rename, so concurrent ranks never read half a file)."""
    host = urllib.parse.urlparse(url).hostname or ""
    if not reachable(host):
        raise DataError(
            f"cannot download {url}: {host} is unreachable; set {MIRROR_ENV}=/path/to/mirror "
            f"(a folder laid out like shared/data) or pass the file's path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {exc}") from None
    return target


def resolve_data_file(path: Optional[str | os.PathLike], mirror_relpath: str, url: str, cache_name: str) -> Path:
    """An explicit path, else the mirror copy, else a cached download of the official file."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        return p
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and (Path(mirror) / mirror_relpath).is_file():
        return Path(mirror) / mirror_relpath
    cached = cache_dir() / cache_name
    if cached.is_file():
        return cached
    return download(url, cached)


