"""Shared behaviour of the launch scripts: every error becomes one line on stderr and exit code 2.

Every launcher ends with `main_guard(main, sys.argv[1:])`. A GptdistError (bad config, data, checkpoint, a
failed collective...) prints `error: <message>`; any other exception prints one line naming its type too
(set GPTDIST_TRACEBACK=1 to see the traceback), so no launcher answers bad input with a traceback."""

from __future__ import annotations

import argparse
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


TRACEBACK_ENV = "GPTDIST_TRACEBACK"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows every flag's default."""


def make_parser(doc: str, first_paragraph_only: bool = True) -> argparse.ArgumentParser:
    """The launchers' argument parser: the module docstring as description, defaults in --help."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0] if first_paragraph_only else doc,
                                   formatter_class=HelpFormatter, allow_abbrev=False)


def main_guard(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run main(argv) and exit with its return code (an int; None means 0). An exception prints
    `error: <message>` (prefixed with the rank under torchrun) and exits 2."""
    try:
        code = main(argv)
    except GptdistError as e:
        report_error(str(e))
    except KeyboardInterrupt:
        exit_now(130)
    except Exception as e:  # a bug or an unforeseen input: still one line, the traceback on request
        if os.environ.get(TRACEBACK_ENV):
            raise
        report_error(f"{type(e).__name__}: {e} (set {TRACEBACK_ENV}=1 for the traceback)".replace("\n", " "))
    exit_now(code if isinstance(code, int) else 0)


def report_error(message: str) -> None:
    """`error: message` on stderr, then exit 2."""
    rank = os.environ.get("RANK")
    prefix = f"[rank{rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    # One write call: under torchrun every rank shares the same stderr pipe, and a write below
    # PIPE_BUF (4 KiB) is never interleaved with another rank's line.
    sys.stderr.flush()
    os.write(2, f"{prefix}error: {message}\n".encode())
    if prefix:
        # torchrun stops every worker as soon as one exits; a moment's grace lets the other ranks,
        # which usually hit the same error at the same point, print theirs too.
        time.sleep(USER_ERROR_GRACE_S)
    exit_now(EXIT_USER_ERROR)


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
