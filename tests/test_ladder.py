"""The optimisation ladder: rungs compose (each is the previous plus exactly one change), CUDA-only rungs are
skipped on a CPU without leaking their change, and the runner works end to end on a tiny 2-rung ladder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from gptdist.errors import ConfigError
from gptdist.studies.ladder import compose_ladder, load_ladder, main, plan_ladder
from gptdist.model import GPT, PRESETS, GPTConfig
from launchers import python

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# The order of build-nanogpt's story (issue: fp32 naive -> TF32 -> bf16 -> compile -> SDPA -> 50304 -> fused).
EXPECTED_MAIN = [
    ("fp32_naive", None),
    ("tf32", ("train.tf32", True)),
    ("bf16_autocast", ("train.dtype", "bf16")),
    ("compile", ("train.compile", True)),
    ("sdpa", ("model.attention", "sdpa")),
    ("vocab_50304", ("model.vocab_size", 50304)),
    ("fused_adamw", ("train.fused_adamw", "on")),
]


@pytest.mark.parametrize("name", ["default.yaml", "cpu_tiny.yaml"])
def test_default_ladders_compose_one_change_per_rung(name):
    ladder = load_ladder(REPO / "configs" / "ladder" / name)
    main_rungs = [r for r in ladder.rungs if not r.side]
    assert [(r.name, r.change) for r in main_rungs] == EXPECTED_MAIN
    for rung in ladder.rungs[1:]:
        parent = ladder.get(rung.parent)
        if not rung.side:  # the main ladder: each rung follows the one before it
            assert parent is ladder.rungs[ladder.rungs.index(rung) - 1]
        key, value = rung.change
        differing = {k for k in set(rung.settings) | set(parent.settings)
                     if rung.settings.get(k) != parent.settings.get(k)}
        assert differing == {key}, rung.name
        assert rung.settings == {**parent.settings, key: value}
    baseline = ladder.rungs[0].settings
    assert baseline["model.attention"] == "naive" and baseline["train.dtype"] == "fp32"
    assert baseline["train.tf32"] is False and baseline["train.fused_adamw"] == "off"
    # Side rungs: checkpointing from the last main rung, then twice its micro-batch ("x2").
    ckpt, big = ladder.get("act_ckpt"), ladder.get("act_ckpt_2x_batch")
    assert ckpt.side and ckpt.parent == "fused_adamw" and ckpt.change == ("model.activation_checkpointing", True)
    assert big.parent == "act_ckpt" and big.change == ("data.batch_size", 2 * baseline["data.batch_size"])


def test_cuda_rungs_are_skipped_on_cpu_and_later_rungs_run_without_their_change():
    ladder = load_ladder(REPO / "configs" / "ladder" / "cpu_tiny.yaml")
    plan = {p.rung.name: p for p in plan_ladder(ladder, CPU)}
    assert plan["tf32"].skip_reason.startswith("needs CUDA") and plan["bf16_autocast"].skip_reason
    assert plan["compile"].skip_reason is None and plan["compile"].compare_to == "fp32_naive"
    final = plan["fused_adamw"].settings
    assert final["train.dtype"] == "fp32" and final["train.tf32"] is False
    assert ladder.get("fused_adamw").settings["train.dtype"] == "bf16"  # as defined, for a GPU
    # On a CUDA device nothing is skipped and the effective settings are the defined ones.
    for p in plan_ladder(ladder, torch.device("cuda")):
        assert p.skip_reason is None and p.settings == p.rung.settings


def _spec(rungs, side=None, **base):
    return {"base": {"model.preset": "test", "model.attention": "naive", "data.batch_size": 2, "data.seq_len": 32,
                     **base}, "rungs": rungs, "side_rungs": side or []}


@pytest.mark.parametrize("rungs,side,message", [
    ([{"name": "a"}, {"name": "b", "set": {"model.attention": "sdpa", "train.compile": True}}], None,
     "exactly one change"),
    ([{"name": "a"}, {"name": "b", "set": {"model.attention": "naive"}}], None, "already 'naive'"),
    ([{"name": "a"}, {"name": "b", "set": {"train.lr": 1.0}}], None, "not a setting the ladder runner reads"),
    ([{"name": "a"}, {"name": "b", "set": {"model.n_heads": 4}}], None, "unknown config key"),
    ([{"name": "a"}, {"name": "b", "set": {"train.dtype": "fp8"}}], None, "not one of"),
    ([{"name": "a"}, {"name": "b", "set": {"data.seq_len": 4096}}], None, "exceeds model.block_size"),
    ([{"name": "a"}], [{"name": "s", "from": "nope", "set": {"train.compile": True}}], "branches `from`"),
    ([{"name": "a"}, {"name": "a", "set": {"train.compile": True}}], None, "used twice"),
    ([{"name": "a", "set": {"train.compile": True}}], None, "baseline"),
    ([{"name": "a"}, {"name": "b", "set": {"train.compile": "x2"}}], None, "scales an integer"),
])
def test_bad_rungs_are_refused_with_a_clear_message(rungs, side, message):
    with pytest.raises(ConfigError, match=message):
        compose_ladder(_spec(rungs, side), source="t.yaml")


def test_extends_and_base_overrides_reach_every_rung(tmp_path):
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump(_spec(
        [{"name": "a"}, {"name": "b", "set": {"model.attention": "sdpa"}}],
        [{"name": "big", "from": "b", "set": {"data.batch_size": "x4"}}])))
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nbase: {data.batch_size: 3}\n")
    ladder = load_ladder(tmp_path / "child.yaml", {"data.seq_len": 16})
    assert [r.name for r in ladder.rungs] == ["a", "b", "big"]
    assert all(r.settings["data.seq_len"] == 16 for r in ladder.rungs)
    assert ladder.get("b").settings["data.batch_size"] == 3
    assert ladder.get("big").change == ("data.batch_size", 12)


def test_two_rung_ladder_end_to_end_on_cpu(tmp_path):
    spec = _spec([{"name": "naive", "why": "baseline"}, {"name": "sdpa", "set": {"model.attention": "sdpa"}}])
    config = tmp_path / "ladder.yaml"
    config.write_text(yaml.safe_dump(spec))
    out, traces = tmp_path / "out" / "ladder", tmp_path / "traces"
    rc = main(["--config", str(config), "--device", "cpu", "--threads", "1", "--steps", "2", "--rounds", "2",
               "--warmup", "1", "--profile-steps", "1", "--top", "20", "--traces", str(traces), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.with_suffix(".json").read_text())
    naive, sdpa = result["rungs"]
    assert naive["status"] == sdpa["status"] == "ok" and result["baseline"] == "naive"
    assert naive["steps_timed"] == sdpa["steps_timed"] == 4 and len(sdpa["round_medians_ms"]) == 2
    assert sdpa["settings"]["model.attention"] == "sdpa" and naive["settings"]["model.attention"] == "naive"
    # Same initial weights, same batch: both rungs train the same model, only the attention kernel differs.
    assert sdpa["final_loss"] == pytest.approx(naive["final_loss"], rel=1e-4)
    s = sdpa["speedup_vs_previous"]
    assert s["vs"] == "naive" and s["tokens_per_s_ratio"] == pytest.approx(sdpa["tokens_per_s"] / naive["tokens_per_s"])
    assert s["per_round_min"] <= s["per_round_max"]
    assert naive["speedup_vs_previous"] is None and naive["speedup_vs_baseline"] is None
    assert naive["mfu"] is None  # CPU: no peak
    mem = sdpa["memory"]
    # The test preset: 30,592 parameters in 28 tensors. fp32 weights + AdamW's two moments, one causal-mask
    # buffer per block (2 x 64 x 64 bools) and AdamW's fp32 step counter per parameter tensor.
    n_tensors = len(list(GPT(GPTConfig(**dataclasses.asdict(PRESETS["test"]))).parameters()))
    assert mem["state_bytes"] == 3 * 4 * 30_592 + 2 * 64 * 64 + 4 * n_tensors
    assert mem["peak_bytes"] == mem["state_bytes"] + mem["step_rise_bytes"]
    # The profiler sees what changed: naive attention's softmax/masking gone, the fused SDPA kernel new.
    names = {op["name"] for op in naive["profile"]["top"]} | {x["name"] for x in sdpa["profile"]["vs_previous"]["faster"]}
    assert any("softmax" in n or "masked_fill" in n or "bmm" in n for n in names)
    new = {x["name"] for x in sdpa["profile"]["vs_previous"]["slower"] + sdpa["profile"]["top"]}
    assert any("scaled_dot_product" in n for n in new)
    # Each op's share is its time over all ops' self time, the total the profile reports.
    for op in naive["profile"]["top"]:
        assert op["share"] == pytest.approx(op["ms_per_step"] / naive["profile"]["total_self_ms_per_step"])
    assert sorted(p.name for p in traces.iterdir()) == ["00_naive.json", "01_sdpa.json"]
    text = out.with_suffix(".md").read_text()
    assert "| 1 | sdpa | `model.attention=sdpa` | 2 |" in text and "### sdpa" in text
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_ladder_is_one_line_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_spec([{"name": "a"}, {"name": "b", "set": {"train.lr": 1.0}}])))
    proc = python(["launch/ladder.py", "--config", str(config), "--out", str(tmp_path / "out" / "x")], check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "train.lr" in proc.stderr and not (tmp_path / "out").exists()
