"""The distributed ladder (`world: 2`): one torchrun job of real gloo processes runs the rungs through the
trainer; the recorder's bytes and the analytic count match a hand-derived parameter count; bad rungs are
one-line errors before anything runs; bf16 communication on gloo is reported skipped with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gptdist.errors import ConfigError
from gptdist.studies.ladder import compose_ladder, plan_ladder
from gptdist.studies.ladder.dist import analytic_bytes
from launchers import python

CPU = torch.device("cpu")

# Tiny GPT: 1 layer, 16 wide, 2 heads, vocab 64, block 8 (biases, LayerNorm with bias, tied lm_head).
# Parameters by hand: wte 64*16 = 1024 (shared with lm_head), wpe 8*16 = 128, ln_1 2*16 = 32,
# attn qkv 16*48 + 48 = 816, attn proj 16*16 + 16 = 272, ln_2 32, mlp fc 16*64 + 64 = 1088,
# mlp proj 64*16 + 16 = 1040, ln_f 32  ->  Ψ = 4464.
PSI = 4464

BASE = {
    "backend": "manual", "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.vocab_size": 64,
    "model.block_size": 8, "data.batch_size": 2, "data.seq_len": 8,
    # one bucket each, so every gradient collective is one call of the whole Ψ (zero pads nothing: Ψ is even)
    "parallel.manual.bucket_cap_mb": 100, "parallel.manual.first_bucket_mb": 100,
    "parallel.zero.bucket_cap_mb": 100, "parallel.zero.first_bucket_mb": 100,
}
RUNGS = [
    {"name": "manual"},
    {"name": "zero2", "set": {"backend": "zero"}},
    {"name": "bf16_comm", "set": {"parallel.zero.reduce_dtype": "bf16"}, "needs": "nccl"},
]


def _spec(rungs=RUNGS, **base):
    return {"world": 2, "base": {**BASE, **base}, "rungs": rungs}


def test_analytic_bytes_hand_derived():
    manual = compose_ladder(_spec()).get("manual").settings
    zero2 = compose_ladder(_spec()).get("zero2").settings
    assert analytic_bytes(manual, PSI) == {"all_reduce": 4 * 4464}
    assert analytic_bytes(zero2, PSI) == {"reduce_scatter": 4 * 4464, "all_gather": 4 * 4464}


def test_bf16_comm_on_gloo_is_skipped_with_reason_and_left_out():
    plan = plan_ladder(compose_ladder(_spec()), CPU)
    assert [p.skip_reason is None for p in plan] == [True, True, False]
    assert "NCCL" in plan[2].skip_reason and "gloo" in plan[2].skip_reason


def test_bad_rungs_are_config_errors():
    with pytest.raises(ConfigError, match="stage must be 1 or 2"):
        compose_ladder(_spec([{"name": "a"}, {"name": "b", "set": {"backend": "zero"}},
                              {"name": "c", "set": {"parallel.zero.stage": 3}}]))
    unmarked = [{"name": "a"}, {"name": "b", "set": {"backend": "zero"}},
                {"name": "c", "set": {"parallel.zero.reduce_dtype": "bf16"}}]
    with pytest.raises(ConfigError, match="gloo on the CPU cannot reduce bf16"):  # unmarked: not a skip
        compose_ladder(_spec(unmarked))
    with pytest.raises(ConfigError, match="parallel.manual.overlap"):  # a backend option needs `world`
        compose_ladder({"base": {"model.n_layer": 1}, "rungs": [{"name": "a"}, {"name": "b", "set": {"parallel.manual.overlap": False}}]})


@pytest.mark.parametrize("rungs,needle", [
    ([{"name": "a"}, {"name": "b", "set": {"backend": "zero"}}, {"name": "c", "set": {"parallel.zero.stage": 3}}],
     "stage must be 1 or 2"),
    ([{"name": "a"}, {"name": "b", "set": {"backend": "zero"}}, {"name": "c", "set": {"parallel.zero.reduce_dtype": "bf16"}}],
     "gloo on the CPU cannot reduce bf16"),
])
def test_cli_bad_rung_one_line_error_before_anything_runs(tmp_path, rungs, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_spec(rungs)))
    proc = python(["launch/ladder.py", "--config", str(config), "--out", str(tmp_path / "out" / "x"),
                   "--run-dir", str(tmp_path / "runs")], check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_cli_single_device_option_on_a_world_ladder_is_refused(tmp_path):
    config = tmp_path / "dist.yaml"
    config.write_text(yaml.safe_dump(_spec()))
    proc = python(["launch/ladder.py", "--config", str(config), "--only", "zero2", "--out", str(tmp_path / "out" / "x")],
                  check=False, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --only") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _recorded(run_dir: Path, rung: str, step: int) -> dict[tuple[str, str], int]:
    out = {}
    for line in (run_dir / rung / "ranks" / "rank0" / "collectives.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] == step:
            out[(rec["op"], rec["label"])] = rec["bytes"]
    return out


def test_two_rung_ladder_end_to_end_at_two_ranks(tmp_path):
    config = tmp_path / "dist.yaml"
    config.write_text(yaml.safe_dump(_spec()))
    out, runs = tmp_path / "out" / "ladder", tmp_path / "runs"
    python(["launch/ladder.py", "--config", str(config), "--steps", "2", "--out", str(out), "--run-dir", str(runs)],
           timeout=180)
    result = json.loads(out.with_suffix(".json").read_text())
    manual, zero2, bf16 = result["rungs"]
    assert result["world_size"] == 2
    assert (manual["status"], zero2["status"], bf16["status"]) == ("ok", "ok", "skipped")
    assert "gloo" in bf16["reason"]

    # The recorder, every rank-0 collective of the last step, against the hand count (fp32: 4 bytes per parameter)
    assert _recorded(runs, "manual", 3) == {("all_reduce", "bucket=0"): 4 * PSI, ("all_reduce", "loss"): 8}
    assert _recorded(runs, "zero2", 3) == {("reduce_scatter", "bucket=0"): 4 * PSI, ("all_gather", "params bucket=0"): 4 * PSI,
                                           ("all_reduce", "grad_norm"): 4, ("all_reduce", "loss"): 8}
    assert manual["analytic_bytes_per_step"] == {"all_reduce": 4 * PSI}
    assert zero2["bytes_per_step"]["reduce_scatter"] == zero2["analytic_bytes_per_step"]["reduce_scatter"] == 4 * PSI

    # Storage per rank, the ZeRO paper's accounting with fp32 Adam at N = 2: DDP-like 16Ψ; ZeRO-2 4Ψ + 4Ψ/2 + 8Ψ/2
    for rank in manual["memory"]:
        assert rank == {"params": 4 * PSI, "grads": 4 * PSI, "optim": 8 * PSI, "total": 16 * PSI}
    for rank in zero2["memory"]:
        assert rank == {"params": 4 * PSI, "grads": 2 * PSI, "optim": 4 * PSI, "total": 10 * PSI}
    assert zero2["memory_saving_vs_previous_bytes"] == 6 * PSI

    # Same data, same seed, same averaged gradients: the loss after K steps agrees across the two backends
    assert len(manual["losses"]) == 3 and zero2["final_loss"] == pytest.approx(manual["final_loss"], rel=1e-5)

    text = out.with_suffix(".md").read_text()
    assert "| 1 | zero2 | `backend=zero` |" in text and "skipped: needs NCCL" in text
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_committed_dist_ladder_is_the_issue_order_one_change_per_rung():
    ladder = compose_ladder(yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "ladder" / "dist_cpu.yaml").read_text()))
    assert ladder.world == 2
    main = [(r.name, r.change) for r in ladder.rungs if not r.side]
    assert main == [
        ("manual_no_overlap", None),
        ("overlap", ("parallel.manual.overlap", True)),
        ("bucket_tuned", ("parallel.manual.bucket_cap_mb", 1.0)),
        ("zero1", ("backend", "zero")),
        ("zero2", ("parallel.zero.stage", 2)),
        ("bf16_comm", ("parallel.zero.reduce_dtype", "bf16")),
        ("fsdp_reshard", ("backend", "fsdp")),
        ("fsdp_no_reshard", ("parallel.fsdp.reshard_after_forward", False)),
        ("ddp", ("backend", "ddp")),
    ]
    plan = {p.rung.name: p for p in plan_ladder(ladder, CPU)}
    assert plan["bf16_comm"].skip_reason and plan["fsdp_reshard"].compare_to == "zero2"
    assert "parallel.zero.reduce_dtype" not in plan["fsdp_reshard"].settings  # the skipped change left out
