"""The optimisation ladder: rungs compose one change at a time; the runner works end to end on a CPU."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from gptdist.errors import ConfigError
from gptdist.ladder import compose_ladder, load_ladder, plan_ladder
from launchers import python

REPO = Path(__file__).resolve().parents[1]


def test_default_ladder_rungs_each_add_exactly_one_change():
    ladder = load_ladder(REPO / "configs" / "ladder" / "default.yaml")
    names = [r.name for r in ladder.rungs]
    assert names[:7] == ["fp32_naive", "tf32", "bf16_autocast", "compile", "sdpa", "vocab_50304", "fused_adamw"]
    by_name = {r.name: r for r in ladder.rungs}
    for rung in ladder.rungs[1:]:
        parent = by_name[rung.parent]
        changed = {k for k in set(rung.settings) | set(parent.settings) if rung.settings.get(k) != parent.settings.get(k)}
        key, value = rung.change
        assert changed == {key}, (rung.name, changed)  # exactly the one change it names
        assert rung.settings[key] == value
    assert by_name["act_ckpt"].parent == "fused_adamw" and by_name["act_ckpt"].side
    # "x2" doubles the parent's micro-batch
    assert by_name["act_ckpt_2x_batch"].settings["data.batch_size"] == 2 * by_name["act_ckpt"].settings["data.batch_size"]
    # the last main rung carries every change of the ladder
    last = by_name["fused_adamw"].settings
    assert (last["model.attention"], last["model.vocab_size"], last["train.compile"], last["train.dtype"]) == ("sdpa", 50304, True, "bf16")


def test_cuda_rungs_are_skipped_on_cpu_with_the_reason_and_left_out_of_later_rungs():
    ladder = load_ladder(REPO / "configs" / "ladder" / "default.yaml")
    plan = {p.rung.name: p for p in plan_ladder(ladder, torch.device("cpu"))}
    assert plan["tf32"].skip_reason.startswith("needs CUDA") and plan["bf16_autocast"].skip_reason.startswith("needs CUDA")
    assert plan["compile"].skip_reason is None and plan["compile"].compare_to == "fp32_naive"
    assert plan["fused_adamw"].settings["train.dtype"] == "fp32"  # bf16 left out on a CPU


TINY = {"model.preset": "test", "data.seq_len": 32, "data.batch_size": 4}


@pytest.mark.parametrize("spec, message", [
    ({"base": TINY, "rungs": [{"name": "a"}, {"name": "b", "set": {"train.lr": 1.0}}]}, "train.lr"),
    ({"base": TINY, "rungs": [{"name": "a"}, {"name": "b", "set": {"model.attention": "sdpa", "train.compile": True}}]}, "one change"),
    ({"base": TINY, "rungs": [{"name": "a"}], "side_rungs": [{"name": "s", "from": "zz", "set": {"train.compile": True}}]}, "zz"),
])
def test_bad_ladders_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        compose_ladder(spec, source="t.yaml")


def test_runner_end_to_end_on_a_tiny_cpu_ladder(tmp_path):
    spec = {
        "base": {"model.preset": "test", "model.attention": "naive", "data.batch_size": 4, "data.seq_len": 32,
                 "train.dtype": "fp32", "train.compile": False, "train.fused_adamw": "off"},
        "rungs": [{"name": "naive"}, {"name": "sdpa", "set": {"model.attention": "sdpa"}}],
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "ladder"
    python(["launch/ladder.py", "--config", str(config), "--steps", "2", "--rounds", "2", "--warmup", "1",
            "--profile-steps", "1", "--device", "cpu", "--traces", str(tmp_path / "traces"), "--out", str(out)], timeout=300)
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["name"]: r for r in result["rungs"]}
    assert set(rows) == {"naive", "sdpa"}
    for row in rows.values():
        assert row["status"] == "ok" and row["step_ms_median"] > 0 and row["tokens_per_s"] > 0
        assert row["profile"]["top"] and row["memory"]["state_bytes"] > 0
    md = out.with_suffix(".md").read_text()
    assert "naive" in md and "sdpa" in md
    assert rows["sdpa"]["speedup_vs_previous"] is not None and rows["sdpa"]["compare_to"] == "naive"
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(list((tmp_path / "traces").glob("*sdpa*"))) == 1  # one Chrome trace per rung on request
