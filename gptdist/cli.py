"""Shared behaviour of the launch scripts: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from gptdist.errors import GptdistError

EXIT_USER_ERROR = 2
USER_ERROR_GRACE_S = 5.0


def exit_now(code: int) -> None:
    """Flush and leave without running interpreter shutdown. gloo's worker threads can free finished
    work objects while Python tears down, which aborts the process ("terminate called without an active
    exception") after a successful run; everything the run writes is closed before this point."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_guard(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run main(argv). A GptdistError (bad config, data, checkpoint, a failed collective...) prints
    `error: <message>` (prefixed with the rank under torchrun) and exits 2; bugs keep their traceback."""
    try:
        main(argv)
    except GptdistError as e:
        rank = os.environ.get("RANK")
        prefix = f"[rank{rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
        # One write call: under torchrun every rank shares the same stderr pipe, and a write below
        # PIPE_BUF (4 KiB) is never interleaved with another rank's line.
        sys.stderr.flush()
        os.write(2, f"{prefix}error: {e}\n".encode())
        if prefix:
            # torchrun stops every worker as soon as one exits; a moment's grace lets the other ranks,
            # which usually hit the same error at the same point, print theirs too.
            time.sleep(USER_ERROR_GRACE_S)
        exit_now(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        exit_now(130)
    exit_now(0)


def usage_or_help(argv: list[str], usage: str, reference: Callable[[], str]) -> None:
    """`-h`/`--help` anywhere: the usage and `reference()` on stdout, exit 0. No arguments at all: the usage on
    stderr and exit 2, so a bare command never starts a default run. Otherwise return."""
    if "-h" in argv or "--help" in argv:
        try:
            sys.stdout.write(f"{usage}\n\n{reference()}\n")
        except BrokenPipeError:  # `--help | head`: the reader has all it wanted
            pass
        exit_now(0)
    if not argv:
        sys.stderr.write(f"{usage}\n")
        exit_now(EXIT_USER_ERROR)
