"""The distributed ladder (`world: 2`): one torchrun job of real gloo processes runs the rungs through the
trainer; the recorder's bytes and the analytic count match a hand-derived parameter count; bad rungs are
one-line errors before anything runs; a swept rung keeps its fastest value and carries it on; bf16 gradient
communication runs on gloo and is reported against fp32 (loss after K, halved bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gptdist.errors import ConfigError
from gptdist.studies.ladder import compose_ladder, load_ladder, plan_ladder
from gptdist.studies.ladder.dist import analytic_bytes, best_point
from gptdist.studies.ladder.report import _zero2_vs_fsdp_lines as zero2_vs_fsdp_lines
from launchers import python, subprocess_env, torchrun

CPU = torch.device("cpu")
LADDERS = Path(__file__).resolve().parents[1] / "configs" / "ladder"

# Tiny GPT: 1 layer, 16 wide, 2 heads, vocab 64, block 8 (biases, LayerNorm with bias, tied lm_head).
# Parameters by hand: wte 64*16 = 1024 (shared with lm_head), wpe 8*16 = 128, ln_1 2*16 = 32,
# attn qkv 16*48 + 48 = 816, attn proj 16*16 + 16 = 272, ln_2 32, mlp fc 16*64 + 64 = 1088,
# mlp proj 64*16 + 16 = 1040, ln_f 32  ->  Ψ = 4464. The block: 32 + 816 + 272 + 32 + 1088 + 1040 = 3280;
# FSDP2's root group: wte 1024 + wpe 128 + ln_f 32 = 1184.
PSI = 4464
PSI_BLOCKS = 3280

BASE = {
    "backend": "manual", "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.vocab_size": 64,
    "model.block_size": 8, "data.batch_size": 2, "data.seq_len": 8,
    # one bucket each, so every gradient collective is one call of the whole Ψ (zero pads nothing: Ψ is even)
    "parallel.manual.bucket_cap_mb": 100, "parallel.manual.first_bucket_mb": 100,
    "parallel.zero.bucket_cap_mb": 100, "parallel.zero.first_bucket_mb": 100,
}
# The sweep tries a 2 KiB first bucket (several buckets) and the 100 MiB one (one bucket); the kept value is
# carried into zero2 through `also`.
FIRST_BUCKET_SWEEP = {"key": "parallel.manual.first_bucket_mb", "values": [0.002, 100],
                      "also": ["parallel.zero.first_bucket_mb"]}
RUNGS = [
    {"name": "manual"},
    {"name": "first_bucket", "sweep": FIRST_BUCKET_SWEEP},
    {"name": "zero2", "set": {"backend": "zero"}},
    {"name": "bf16_comm", "set": {"parallel.zero.reduce_dtype": "bf16"}},
    {"name": "fsdp_reshard", "set": {"backend": "fsdp"}},
]


def _spec(rungs=RUNGS, **base):
    return {"world": 2, "base": {**BASE, **base}, "rungs": rungs}


def test_analytic_bytes_hand_derived():
    ladder = compose_ladder(_spec())
    assert analytic_bytes(ladder.get("manual").settings, PSI, PSI_BLOCKS) == {"all_reduce": 4 * 4464}
    assert analytic_bytes(ladder.get("zero2").settings, PSI, PSI_BLOCKS) == {"reduce_scatter": 4 * 4464, "all_gather": 4 * 4464}
    assert analytic_bytes(ladder.get("bf16_comm").settings, PSI, PSI_BLOCKS) == {"reduce_scatter": 2 * 4464, "all_gather": 4 * 4464}
    # FSDP2 with reshard: the block gathered in forward and again in backward, the root group once
    assert analytic_bytes(ladder.get("fsdp_reshard").settings, PSI, PSI_BLOCKS) == {
        "all_gather": 4 * (4464 + 3280), "reduce_scatter": 4 * 4464}


def test_needs_nccl_rung_is_skipped_off_cuda_and_its_change_left_out():
    rungs = RUNGS[:3] + [{"name": "nccl_only", "set": {"parallel.zero.overlap": False}, "needs": "nccl"},
                         {"name": "after", "set": {"parallel.zero.stage": 1}}]
    plan = plan_ladder(compose_ladder(_spec(rungs)), CPU)
    assert [p.skip_reason is None for p in plan] == [True, True, True, False, True]
    assert plan[3].skip_reason.startswith("needs NCCL")
    assert plan[4].compare_to == "zero2" and "parallel.zero.overlap" not in plan[4].settings  # left out


def test_sweep_value_is_carried_into_later_rungs_and_side_rungs():
    ladder = compose_ladder({**_spec(), "side_rungs": [{"name": "side", "from": "zero2", "set": {"parallel.zero.stage": 1}}]})
    sweep = ladder.get("first_bucket").sweep
    assert sweep.values == (0.002, 100.0) and sweep.also == ("parallel.zero.first_bucket_mb",)
    for kept in sweep.values:
        plan = {p.rung.name: p for p in plan_ladder(ladder, CPU, chosen={"first_bucket": kept})}
        for name in ("zero2", "bf16_comm", "side"):
            assert plan[name].settings["parallel.manual.first_bucket_mb"] == kept
            assert plan[name].settings["parallel.zero.first_bucket_mb"] == kept
        assert plan["manual"].settings["parallel.manual.first_bucket_mb"] == 100  # before the sweep: the base's


def test_best_point_is_the_lowest_median_step_time():
    points = [{"step_ms": {"median": m}} for m in (30.0, 12.5, 40.0, 12.5)]
    assert best_point(points) == 1  # the lowest; of equals, the first
    assert best_point(points[2:]) == 1


def test_bad_rungs_are_config_errors():
    with pytest.raises(ConfigError, match="stage must be 1 or 2"):
        compose_ladder(_spec([{"name": "a"}, {"name": "b", "set": {"backend": "zero"}},
                              {"name": "c", "set": {"parallel.zero.stage": 3}}]))
    unmarked = [{"name": "a"}, {"name": "b", "set": {"backend": "zero"}},
                {"name": "c", "set": {"parallel.zero.reduce_dtype": "bf16"}}]
    with pytest.raises(ConfigError, match="implemented for stage 2 only"):  # bf16 communication at stage 1
        compose_ladder(_spec(unmarked, **{"parallel.zero.stage": 1}))
    def sweep_rungs(sweep, **extra):
        return [{"name": "a"}, {"name": "b", "sweep": sweep, **extra}]
    for sweep, extra, needle in (
        ({"key": "parallel.manual.bucket_cap_mb", "values": [1]}, {}, "at least 2 `values`"),
        ({"key": "parallel.manual.bucket_cap_mb", "values": [1, 1.0]}, {}, "values repeat"),
        ({"key": "parallel.manual.bucket_cap_mb", "values": [1, -2]}, {}, "bucket"),
        ({"key": "parallel.manual.bucket_cap_mb", "values": [1, 2]}, {"set": {"parallel.manual.overlap": True}}, "not both"),
        ({"values": [1, 2]}, {}, "`sweep` takes"),
    ):
        with pytest.raises(ConfigError, match=needle):
            compose_ladder(_spec(sweep_rungs(sweep, **extra)))
    with pytest.raises(ConfigError, match="distributed ladder"):  # the single-device ladder does not sweep
        compose_ladder({"base": {"model.n_layer": 1}, "rungs": [
            {"name": "a"}, {"name": "b", "sweep": {"key": "data.batch_size", "values": [2, 4]}}]})
    with pytest.raises(ConfigError, match="parallel.manual.overlap"):  # a backend option needs `world`
        compose_ladder({"base": {"model.n_layer": 1}, "rungs": [{"name": "a"}, {"name": "b", "set": {"parallel.manual.overlap": False}}]})


@pytest.mark.parametrize("rungs,needle", [
    ([{"name": "a"}, {"name": "b", "set": {"backend": "zero"}}, {"name": "c", "set": {"parallel.zero.stage": 3}}],
     "stage must be 1 or 2"),
    ([{"name": "a"}, {"name": "b", "sweep": {"key": "parallel.manual.bucket_cap_mb", "values": [1, 0]}}],
     "bucket"),
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


def test_ladder_started_under_torchrun_is_the_job_itself(tmp_path):
    """As launch/cluster.py starts it (one torchrun per node): the ranks are the job, rank 0 writes the
    report; a torchrun of another world size than the file's is a one-line error before anything runs."""
    config = tmp_path / "dist.yaml"
    config.write_text(yaml.safe_dump(_spec([{"name": "manual"}])))  # one rung: the path is under test, not the rungs
    out, runs = tmp_path / "out" / "ladder", tmp_path / "runs"
    args = ["launch/ladder.py", "--config", str(config), "--steps", "1", "--out", str(out), "--run-dir", str(runs)]
    bad = python(args, check=False, timeout=60, env=subprocess_env(RANK="0", WORLD_SIZE="3"))
    assert bad.returncode == 2 and bad.stderr == "error: the ladder has world: 2, but torchrun started 3 ranks\n"
    assert not (tmp_path / "out").exists() and not runs.exists()
    torchrun(args, nproc=2, timeout=180)
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["status"] for r in result["rungs"]] == ["ok"] and result["world_size"] == 2
    assert result["rungs"][0]["bytes_per_step"]["all_reduce"] == 4 * PSI + 8  # the gradients and the loss
    assert "| 0 | manual | baseline |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").exists()


def _recorded(run_dir: Path, rung: str, step: int) -> dict[tuple[str, str], int]:
    out = {}
    for line in (run_dir / rung / "ranks" / "rank0" / "collectives.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] == step:
            out[(rec["op"], rec["label"])] = rec["bytes"]
    return out


def _gathers(run_dir: Path, rung: str, step: int) -> dict[str, list[int]]:
    """label -> the bytes of each all-gather with that label, in order, on rank 0 in one step."""
    out: dict[str, list[int]] = {}
    for line in (run_dir / rung / "ranks" / "rank0" / "collectives.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] == step and rec["op"] == "all_gather":
            out.setdefault(rec["label"], []).append(rec["bytes"])
    return out


def _bucket_labels(run_dir: Path, rung: str, op: str, step: int) -> list[str]:
    return sorted(label for (o, label) in _recorded(run_dir, rung, step) if o == op and label.startswith("bucket="))


def test_ladder_end_to_end_at_two_ranks_sweep_bf16(tmp_path):
    config = tmp_path / "dist.yaml"
    config.write_text(yaml.safe_dump(_spec()))
    out, runs = tmp_path / "out" / "ladder", tmp_path / "runs"
    python(["launch/ladder.py", "--config", str(config), "--steps", "2", "--out", str(out), "--run-dir", str(runs)],
           timeout=240)
    result = json.loads(out.with_suffix(".json").read_text())
    manual, swept, zero2, bf16, fsdp = result["rungs"]
    assert result["world_size"] == 2
    assert [r["status"] for r in result["rungs"]] == ["ok"] * 5

    # The recorder, every rank-0 collective of the last step, against the hand count (fp32: 4 bytes per parameter)
    assert _recorded(runs, "manual", 3) == {("all_reduce", "bucket=0"): 4 * PSI, ("all_reduce", "loss"): 8}
    assert manual["analytic_bytes_per_step"] == {"all_reduce": 4 * PSI}

    # The sweep: both values ran (a 2 KiB first bucket gives several buckets, 100 MiB one); the rung is the
    # point with the lowest recorded median, and zero2 ran with its value: as many reduce-scatters as that
    # point's manual all-reduces (the same bucket plan), not the other point's number.
    points = swept["sweep"]["points"]
    medians = [p["step_ms"]["median"] for p in points]
    kept = points[medians.index(min(medians))]
    assert swept["sweep"]["chosen"] == kept["value"] == swept["change"]["value"]
    assert swept["step_ms"] == kept["step_ms"] and swept["settings"] == kept["settings"]
    counts = {p["value"]: len(_bucket_labels(runs, f"first_bucket_{p['value']}", "all_reduce", 3)) for p in points}
    assert counts[100.0] == 1 and counts[0.002] > 1
    assert len(_bucket_labels(runs, "zero2", "reduce_scatter", 3)) == counts[kept["value"]]
    assert zero2["settings"]["parallel.zero.first_bucket_mb"] == kept["value"]
    assert zero2["bytes_per_step"]["reduce_scatter"] == zero2["analytic_bytes_per_step"]["reduce_scatter"] == 4 * PSI
    assert zero2["bytes_per_step"]["all_gather"] == 4 * PSI  # Ψ and every parameter even: no padding at N = 2

    # bf16 communication on gloo: half the reduce-scatter bytes (2 per parameter), the all-gather unchanged
    assert bf16["bytes_per_step"]["reduce_scatter"] == bf16["analytic_bytes_per_step"]["reduce_scatter"] == 2 * PSI
    assert bf16["bytes_per_step"]["all_gather"] == 4 * PSI

    # FSDP2 with reshard-after-forward: the block's group gathered twice (forward, backward), the root group
    # (wte = lm_head, wpe, ln_f) once: it is not resharded after forward. The recorder equals the analytic count.
    assert _gathers(runs, "fsdp_reshard", 3) == {"module=transformer.h.0": [4 * PSI_BLOCKS] * 2,
                                                 "module=root": [4 * (PSI - PSI_BLOCKS)]}
    assert fsdp["bytes_per_step"]["all_gather"] == fsdp["analytic_bytes_per_step"]["all_gather"] == 4 * (PSI + PSI_BLOCKS)

    # Storage per rank, the ZeRO paper's accounting with fp32 Adam at N = 2: DDP-like 16Ψ; ZeRO-2 4Ψ + 4Ψ/2 + 8Ψ/2
    for rank in manual["memory"]:
        assert rank == {"params": 4 * PSI, "grads": 4 * PSI, "optim": 8 * PSI, "total": 16 * PSI}
    for rank in zero2["memory"] + bf16["memory"]:
        assert rank == {"params": 4 * PSI, "grads": 2 * PSI, "optim": 4 * PSI, "total": 10 * PSI}
    assert zero2["memory_saving_vs_previous_bytes"] == 6 * PSI

    # Same data, same seed, same averaged gradients: the loss after K steps agrees across fp32 backends and
    # bucket plans; bf16 rounding of the gradients moves it by far less than a training step does
    assert len(manual["losses"]) == 3
    for r in (zero2, *points):
        assert r["final_loss"] == pytest.approx(manual["final_loss"], rel=1e-5)
    assert abs(bf16["loss_difference_vs_previous"]) < 1e-2 * abs(manual["losses"][0] - manual["losses"][-1])

    text = out.with_suffix(".md").read_text()
    assert "| 2 | zero2 | `backend=zero` |" in text
    assert f"`parallel.manual.first_bucket_mb={kept['value']}` (best of 2, swept)" in text and "## Sweep: first_bucket" in text
    assert "## Gradient communication in bf16: bf16_comm vs zero2" in text
    assert "| reduce_scatter | 8.7 | 17.4 | 0.500 | 8.7 | 17.4 |" in text  # 2Ψ vs 4Ψ bytes = 8,928 vs 17,856
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_report_compares_zero2_with_fsdp_without_reshard():
    """The report finds the two rungs by their settings and sets them side by side (hand-made rows)."""
    def row(name, backend, **settings):
        return {"name": name, "side": False, "parent": None, "change": None, "status": "ok", "compare_to": None,
                "settings": {"backend": backend, **settings}, "step_ms": {"median": 20.0 if backend == "zero" else 40.0, "p95": 50.0},
                "exposed_ms": {"median": 5.0}, "bytes_per_step": {"all_gather": 4096.0}, "analytic_bytes_per_step": {},
                "memory": [{"total": 10240}], "final_loss": 7.5, "losses": [7.5]}
    rows = [row("z1", "zero", **{"parallel.zero.stage": 1}), row("z2", "zero", **{"parallel.zero.stage": 2}),
            row("fr", "fsdp"), row("fn", "fsdp", **{"parallel.fsdp.reshard_after_forward": False})]
    text = "\n".join(zero2_vs_fsdp_lines(rows))
    assert "## Handwritten ZeRO-2 (z2) vs FSDP2 without reshard (fn)" in text
    assert "ZeRO-2 / FSDP2 step time: 0.50." in text


def test_committed_dist_ladder_is_the_issue_order_one_change_per_rung():
    ladder = load_ladder(LADDERS / "dist_cpu.yaml")
    assert ladder.world == 2
    main = [(r.name, r.change) for r in ladder.rungs if not r.side]
    assert main == [
        ("manual_no_overlap", None),
        ("overlap", ("parallel.manual.overlap", True)),
        ("bucket_tuned", ("parallel.manual.bucket_cap_mb", 0.25)),  # the sweep's first value until one is kept
        ("zero1", ("backend", "zero")),
        ("zero2", ("parallel.zero.stage", 2)),
        ("bf16_comm", ("parallel.zero.reduce_dtype", "bf16")),
        ("fsdp_reshard", ("backend", "fsdp")),
        ("fsdp_no_reshard", ("parallel.fsdp.reshard_after_forward", False)),
        ("ddp", ("backend", "ddp")),
    ]
    assert ladder.get("bucket_tuned").sweep.values == (0.25, 1.0, 4.0, 25.0)
    plan = {p.rung.name: p for p in plan_ladder(ladder, CPU, chosen={"bucket_tuned": 4.0})}
    assert all(p.skip_reason is None for p in plan.values())  # bf16 communication runs on gloo
    assert plan["fsdp_reshard"].compare_to == "bf16_comm"
    assert plan["ddp"].settings["parallel.ddp.bucket_cap_mb"] == plan["zero1"].settings["parallel.zero.bucket_cap_mb"] == 4.0

    # The GPU file (not run here): the same rungs at 8 ranks on GPT-2 124M
    gpu = load_ladder(LADDERS / "dist_gpu.yaml")
    assert gpu.world == 8 and [r.name for r in gpu.rungs] == [r.name for r in ladder.rungs]
    assert gpu.get("ddp").settings["model.n_embd"] == 768
