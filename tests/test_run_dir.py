"""Run folders: what prepare_run_dir refuses, and reading a finished one back (gptdist/run_reader.py)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from gptdist.config import build_config
from gptdist.dist import DistContext
from gptdist.errors import ConfigError
from gptdist.run_dir import prepare_run_dir
from gptdist.run_reader import read_rank_rows, read_run_config, with_step_periods

ONE = DistContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)


def test_a_new_folder_is_made_and_an_existing_one_refused(tmp_path):
    cfg = build_config(None, {"log.out_dir": str(tmp_path), "log.run_name": "r"})
    run = prepare_run_dir(cfg, ONE)
    assert run == tmp_path / "r" and yaml.safe_load((run / "config.yaml").read_text())["log"]["run_name"] == "r"
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="already exists; pass --checkpoint.resume=auto"):
        prepare_run_dir(cfg, ONE)
    assert (run / "metrics.jsonl").read_text() == "{}\n"  # nothing lost


def test_step_period_is_the_time_between_step_ends():
    # Ends at 10.0, 10.5, 11.25 s: periods 500 and 750 ms; the first row has no previous end: its step_ms.
    rows = [{"step": 2, "step_ms": 400.0, "end_unix_s": 10.5}, {"step": 1, "step_ms": 300.0, "end_unix_s": 10.0},
            {"step": 3, "step_ms": 600.0, "end_unix_s": 11.25}]
    assert [r["period_ms"] for r in with_step_periods(rows)] == [300.0, 500.0, 750.0]
    assert [r["period_ms"] for r in with_step_periods([{"step": 1, "step_ms": 7.0}])] == [7.0]  # an older run


def test_reader_reads_every_rank_and_upgrades_old_parallel_keys(tmp_path):
    for rank in (0, 1):
        d = tmp_path / "ranks" / f"rank{rank}"
        d.mkdir(parents=True)
        (d / "steps.jsonl").write_text(json.dumps({"step": 1, "step_ms": 5.0 + rank}) + "\n")
    old = build_config(None, {"backend": "manual"}).to_dict()
    old["parallel"] = {"bucket_cap_mb": 5.0, "ddp_bucket_cap_mb": 25.0, "reshard_after_forward": True}  # before subsections
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert {r: rows[0]["period_ms"] for r, rows in read_rank_rows(tmp_path).items()} == {0: 5.0, 1: 6.0}
    cfg = read_run_config(tmp_path)
    assert cfg.backend == "manual" and cfg.parallel.manual.bucket_cap_mb == 5.0
    with pytest.raises(ConfigError, match="no ranks/rank"):
        read_rank_rows(tmp_path / "nothing")
