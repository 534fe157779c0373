"""Reading JSON Lines files with errors that name the file and the line."""

from __future__ import annotations

import json
import os
from typing import Iterator

from gptdist.errors import DataError


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number from 1, object) for every non-blank line; a line that is not a JSON object raises
    DataError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
