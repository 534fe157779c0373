"""Where documents come from: Tiny Shakespeare, local files, the offline mirror, a Hugging Face dataset.

`resolve_source(spec, ...)` turns the `--source` argument into a `Source`, checking what can be checked
before any work starts (files exist, the hub is reachable). A Source yields documents as strings.

    tinyshakespeare                     the mirror's tinyshakespeare/input.txt, else karpathy's char-rnn URL
    mirror:webtext/c4/c4_sample.jsonl   a file or folder inside the offline mirror ($GPTDIST_DATA_MIRROR)
    path/to/file.txt|.jsonl|.parquet    a local file; .txt = one document, .jsonl/.parquet = one per row
    path/to/folder                      every .txt/.jsonl/.parquet file below it, in sorted path order
    hf:HuggingFaceFW/fineweb-edu        a Hugging Face dataset, streamed with `datasets`

The hub path fails within seconds when offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are honoured, and
otherwise the hub host is probed with a short socket timeout (`datasets` itself retries for ~24 s).
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from gptdist import tokenizer
from gptdist.jsonl import read_jsonl
from gptdist.net import reachable
from gptdist.errors import DataError

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_MIRROR_PATH = "tinyshakespeare/input.txt"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0


@dataclass
class Source:
    """A stream of documents plus what the manifest records about it."""

    name: str  # the --source spec as given
    description: dict  # recorded in manifest.json ("kind", paths or dataset name, ...)
    documents: Callable[[], Iterator[str]]  # a fresh iterator over the documents, in a fixed order
    single_document: bool = False  # one long text (Tiny Shakespeare, one .txt): split by characters
    num_documents: Optional[int] = None  # when known up front (for the progress bar)
    extra: dict = field(default_factory=dict)


def _is_true(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# --- Tiny Shakespeare -------------------------------------------------------------------------------


def _tinyshakespeare_text(mirror: Optional[Path]) -> tuple[str, str]:
    """The text and where it came from: the mirror when it has the file, else the char-rnn URL."""
    if mirror is not None and (mirror / TINYSHAKESPEARE_MIRROR_PATH).is_file():
        path = mirror / TINYSHAKESPEARE_MIRROR_PATH
        return path.read_text(encoding="utf-8"), str(path)
    host = urllib.parse.urlparse(TINYSHAKESPEARE_URL).hostname
    if not reachable(host, 443):
        where = f"{mirror} has no {TINYSHAKESPEARE_MIRROR_PATH}" if mirror else f"{tokenizer.MIRROR_ENV} is not set"
        raise DataError(
            f"cannot get Tiny Shakespeare: {where} and {host} is unreachable; set "
            f"{tokenizer.MIRROR_ENV}=/path/to/mirror (with {TINYSHAKESPEARE_MIRROR_PATH}) or pass --mirror"
        )
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
            data = response.read()
    except OSError as e:
        raise DataError(f"cannot download Tiny Shakespeare from {TINYSHAKESPEARE_URL}: {e}") from e
    if hashlib.sha256(data).hexdigest() != TINYSHAKESPEARE_SHA256:
        raise DataError(f"downloaded Tiny Shakespeare from {TINYSHAKESPEARE_URL} has an unexpected sha256")
    return data.decode("utf-8"), TINYSHAKESPEARE_URL


def tinyshakespeare_source(spec: str, mirror: Optional[Path]) -> Source:
    text, origin = _tinyshakespeare_text(mirror)
    return Source(
        name=spec,
        description={"kind": "tinyshakespeare", "origin": origin, "characters": len(text)},
        documents=lambda: iter([text]),
        single_document=True,
        num_documents=1,
    )


# --- local files (also used for the mirror) ------------------------------------------------------------


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8")
    elif path.suffix == ".jsonl":
        for line_no, row in read_jsonl(path):
            if text_field not in row:
                raise DataError(f"{path}:{line_no}: no field {text_field!r} (choose one with --text-field)")
            yield str(row[text_field])
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if text_field not in parquet.schema_arrow.names:
            raise DataError(
                f"{path}: no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}; "
                f"choose one with --text-field)"
            )
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"source {path}: no such file or folder")
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"source {path}: unsupported file type {path.suffix!r} (use {', '.join(LOCAL_SUFFIXES)})")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise DataError(f"source {path}: folder has no {', '.join(LOCAL_SUFFIXES)} files")
    return files


def local_source(spec: str, path: Path, text_field: str, kind: str = "local") -> Source:
    files = _local_files(path)

    def documents() -> Iterator[str]:
        for file in files:
            yield from _iter_file(file, text_field)

    return Source(
        name=spec,
        description={"kind": kind, "path": str(path), "files": [str(f) for f in files], "text_field": text_field},
        documents=documents,
        single_document=len(files) == 1 and files[0].suffix == ".txt",
        num_documents=1 if len(files) == 1 and files[0].suffix == ".txt" else None,
    )


# --- Hugging Face hub ------------------------------------------------------------------------------------


def hub_offline_reason(timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the hub cannot be reached right now, or None if it seems reachable. Takes at most ~timeout_s."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _is_true(os.environ.get(var)):
            return f"{var}={os.environ[var]} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
    url = urllib.parse.urlparse(endpoint)
    host = url.hostname or endpoint
    port = url.port or (80 if url.scheme == "http" else 443)
    if not reachable(host, port, timeout_s):
        return f"{host}:{port} is unreachable"
    return None


def hf_source(spec: str, dataset: str, config: Optional[str], split: str, text_field: str) -> Source:
    if not dataset:
        raise DataError("source hf: needs a dataset name, e.g. hf:HuggingFaceFW/fineweb-edu")
    reason = hub_offline_reason()
    if reason is not None:
        raise DataError(
            f"cannot stream hf:{dataset} from the Hugging Face hub: {reason}; offline, prepare from local "
            f"files instead (--source path/to/*.jsonl|*.parquet, or mirror:webtext/...)"
        )

    def documents() -> Iterator[str]:
        import datasets

        ds = datasets.load_dataset(dataset, name=config, split=split, streaming=True)
        for row in ds:
            if text_field not in row:
                raise DataError(f"hf:{dataset}: rows have no field {text_field!r} (fields: {', '.join(row)})")
            yield row[text_field]

    return Source(
        name=spec,
        description={"kind": "huggingface", "dataset": dataset, "config": config, "split": split,
                     "text_field": text_field, "streaming": True},
        documents=documents,
    )


# --- dispatch --------------------------------------------------------------------------------------------


def resolve_source(
    spec: str,
    text_field: str = "text",
    hf_config: Optional[str] = None,
    hf_split: str = "train",
    mirror: Optional[str | os.PathLike] = None,
) -> Source:
    """Turn a --source string into a Source (raises DataError with a one-line reason)."""
    mirror_path = tokenizer.mirror_dir(mirror)
    if spec == "tinyshakespeare":
        return tinyshakespeare_source(spec, mirror_path)
    if spec.startswith("hf:"):
        return hf_source(spec, spec[3:], hf_config, hf_split, text_field)
    if spec.startswith("mirror:"):
        if mirror_path is None:
            raise DataError(f"source {spec}: no mirror; set {tokenizer.MIRROR_ENV}=/path/to/mirror or pass --mirror")
        return local_source(spec, mirror_path / spec[len("mirror:"):], text_field, kind="mirror")
    return local_source(spec, Path(spec), text_field)
