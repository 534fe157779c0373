"""`launch/train.py --help` lists every config field from the sections' docstrings; a bare command only
prints the usage (it used to start a 10-minute default run)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

from gptdist.config import Config, field_docs
from launchers import REPO, subprocess_env

TRAIN = str(REPO / "launch" / "train.py")


def leaf_fields(cls=Config, prefix=""):
    """(dotted key, owning section class, field) for every settable field, walking nested sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cls, f


def run(args, cwd):
    return subprocess.run([sys.executable, TRAIN, *args], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)


def test_every_field_has_a_one_line_doc():
    missing = [key for key, cls, f in leaf_fields() if not field_docs(cls).get(f.name)]
    assert missing == []
    # and no doc names a field that does not exist (a renamed field leaves no stale line behind)
    for _, cls, _ in leaf_fields():
        assert set(field_docs(cls)) <= {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_help_prints_usage_and_every_field_with_type_default_and_doc(tmp_path):
    proc = run(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python launch/train.py --config FILE")
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith("  --")}
    # every field once, in the order `--section.key`
    assert sorted(lines) == sorted(f"--{key}" for key, _, _ in leaf_fields())
    # hand-written rows: flag, type, default, then the doc's words
    assert lines["--train.max_steps"] == "--train.max_steps int 100 optimizer steps of the run".split()
    assert lines["--model.attention"][:3] == ["--model.attention", "naive|sdpa", "sdpa"]
    assert lines["--model.n_layer"][:3] == ["--model.n_layer", "int|null", "null"]
    assert lines["--log.overwrite"][:3] == ["--log.overwrite", "bool", "false"]
    assert lines["--backend"][:3] == ["--backend", "none|manual|ddp|fsdp|zero", "none"]
    assert "model: The GPT shape." in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written

    # --help after other arguments (even bad ones) still only prints help
    proc = run(["--config", "configs/none.yaml", "--nonsense=1", "-h"], tmp_path)
    assert proc.returncode == 0 and "--train.max_steps" in proc.stdout


def test_no_arguments_prints_usage_and_starts_nothing(tmp_path):
    proc = run([], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage: python launch/train.py --config FILE")
    assert list(tmp_path.iterdir()) == []  # no runs/ folder: no default run started
