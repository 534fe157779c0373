"""The throughput harness runs end to end and writes its result files (a smoke test, not a timing)."""

from __future__ import annotations

import json

from gptdist.studies.throughput import main
from launchers import python


def test_bench_writes_json_and_markdown_and_compares_interleaved(tmp_path):
    out = tmp_path / "bench"
    # gptdist/model.py itself is a valid nanoGPT-style reference file: GPT, GPTConfig, forward -> (logits, loss).
    rc = main(["--preset", "test", "-B", "2", "--steps", "2", "--warmup", "1", "--rounds", "2", "--threads", "1",
               "--reference", "gptdist/model.py", "--out", str(out), "--note", "smoke"])
    assert rc == 0
    result = json.loads(out.with_suffix(".json").read_text())
    ours, ref = result["results"]["gptdist"], result["results"]["reference"]
    assert ours["steps_timed"] == ref["steps_timed"] == 4
    assert ours["step_ms_p10"] <= ours["step_ms_median"] <= ours["step_ms_p90"]
    assert ours["params"] == ref["params"] == 30_592
    assert ours["tokens_per_s"] == 2 * 64 / (ours["step_ms_median"] / 1e3)
    assert result["flops_per_token"] == 220_416
    assert ours["mfu"] is None and result["peak_flops"] is None  # CPU: no peak, no MFU
    assert len(result["comparison"]["per_round"]) == 2
    assert result["hardware"]["torch_threads"] == 1
    text = out.with_suffix(".md").read_text()
    assert "| gptdist | 30,592 |" in text and "- smoke" in text


def test_bench_with_a_peak_override_reports_mfu(tmp_path):
    out = tmp_path / "bench"
    assert main(["--preset", "test", "-B", "1", "--steps", "2", "--warmup", "0", "--peak-flops", "1e12",
                 "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())["results"]["gptdist"]
    assert r["mfu"] == r["tokens_per_s"] * 220_416 / 1e12


def test_bench_bad_input_is_one_line_error(tmp_path):
    proc = python(["launch/bench_throughput.py", "--preset", "test", "--n-head", "3", "--out", str(tmp_path / "x")],
                  check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: n_embd 32 is not divisible by n_head 3"
    assert not list(tmp_path.iterdir())
