"""The throughput harness runs end to end and writes its result files (a smoke test, not a timing)."""

from __future__ import annotations

import json

import pytest

from gptdist.model import GPT, PRESETS
from gptdist.studies.throughput import main, summarize
from launchers import python


def test_summary_statistics_by_hand():
    # Four steps of 10, 20, 30, 40 ms with 1000 tokens each: median 25 ms -> 40,000 tokens/s. Inclusive
    # quantiles: p10 at position 0.3 -> 13 ms, p90 at 2.7 -> 37 ms, quartiles 17.5 and 32.5 -> IQR 15 ms.
    # 6,000 FLOPs per token at a 1 GFLOP/s peak: 2.4e8 / 1e9 = 24 % MFU, 0.00024 TFLOP/s achieved.
    s = summarize([40.0, 10.0, 30.0, 20.0], tokens_per_step=1000, fpt=6000, peak=1e9)
    assert (s["steps_timed"], s["step_ms_median"], s["step_ms_min"], s["step_ms_max"]) == (4, 25.0, 10.0, 40.0)
    assert (s["step_ms_p10"], s["step_ms_p90"], s["step_ms_iqr"]) == pytest.approx((13.0, 37.0, 15.0))
    assert s["tokens_per_s"] == pytest.approx(40_000)
    assert s["achieved_tflops"] == pytest.approx(0.00024) and s["mfu"] == pytest.approx(0.24)
    assert summarize([1.0, 2.0], 10, 6000, None)["mfu"] is None  # no known peak: no MFU


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
    # 6N + 12·L·T·C with N counted from the built model (wpe left out): the test preset, T = 64.
    cfg = PRESETS["test"]
    model = GPT(cfg)
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    assert result["flops_per_token"] == 6 * n + 12 * cfg.n_layer * 64 * cfg.n_embd
    assert result["tokens_per_step"] == 2 * 64
    assert ours["mfu"] is None and result["peak_flops"] is None  # CPU: no peak, no MFU
    assert len(result["comparison"]["per_round"]) == 2
    assert result["hardware"]["torch_threads"] == 1
    text = out.with_suffix(".md").read_text()
    assert "| gptdist | 30,592 |" in text and "- smoke" in text


def test_bench_with_a_peak_override_reports_mfu_and_provenance(tmp_path):
    out = tmp_path / "bench"
    assert main(["--preset", "test", "-B", "1", "--steps", "2", "--warmup", "0", "--peak-flops", "1e12",
                 "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["peak_flops"] == 1e12 and result["results"]["gptdist"]["mfu"] is not None
    p = result["provenance"]
    assert p["command"].startswith("python") and p["hardware"]["cpu_count"] >= 1 and p["torch"]
    assert "- Command: `python" in out.with_suffix(".md").read_text()


def test_bench_bad_input_is_one_line_error(tmp_path):
    proc = python(["launch/bench_throughput.py", "--preset", "test", "--n-head", "3", "--out", str(tmp_path / "x")],
                  check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: n_embd 32 is not divisible by n_head 3"
    assert not list(tmp_path.iterdir())
