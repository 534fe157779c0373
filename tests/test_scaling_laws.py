"""Scaling-law study: planner, vocabulary cut, fitters (against known synthetic laws), resumable sweep, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from launchers import python
from synthetic import make_token_dataset

from gptdist.studies.scaling_laws import fits
from gptdist.studies.scaling_laws.plan import SweepError, plan_runs, spec_from_dict, train_args
from gptdist.studies.scaling_laws.sweep import checked_plan, run_sweep
from gptdist.studies.scaling_laws.vocab import frequency_mapping

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def spec_dict(data_dir, **changes) -> dict:
    spec = {
        "name": "t", "data_dir": str(data_dir), "vocab_size": 64, "seq_len": 16, "batch_size": 4,
        "budgets": [1e9], "min_steps": 5, "lr": 1e-3,
        "shapes": [{"name": "small", "n_layer": 2, "n_embd": 32, "n_head": 2}],
        "overrides": ["--instrument.enabled=false", "--train.device=cpu"],
    }
    spec.update(changes)
    return spec


# ---------------------------------------------------------------------------------------------------
# Planner


def test_planner_tokens_from_budget_by_hand(tmp_path):
    # L=2, d=32, V=64, T=16, bias. N without the position table, wte counted once:
    #   wte 64*32 = 2048; per block: 2 LayerNorms 2*(32+32) = 128, c_attn 32*96+96 = 3168, attn c_proj
    #   32*32+32 = 1056, c_fc 32*128+128 = 4224, mlp c_proj 128*32+32 = 4128 -> 12704; two blocks 25408;
    #   ln_f 64. N = 2048 + 25408 + 64 = 27520.
    # FLOPs/token = 6N + 12*L*d*T = 165120 + 12*2*32*16 = 177408. A step is 4*16 = 64 tokens, so 1e9 FLOPs
    # buy floor(1e9 / (177408*64)) = floor(88.07) = 88 steps = 5632 tokens.
    runs, notes = plan_runs(spec_from_dict(spec_dict(tmp_path)))
    (run,) = runs
    assert (run.params, run.flops_per_token, run.steps, run.tokens) == (27520, 177408, 88, 5632)
    assert run.flops == 5632 * 177408 and notes == []


def test_planner_leaves_out_a_shape_with_too_few_steps(tmp_path):
    big = {"name": "big", "n_layer": 4, "n_embd": 64, "n_head": 4}
    runs, notes = plan_runs(spec_from_dict(spec_dict(tmp_path, shapes=spec_dict(tmp_path)["shapes"] + [big], min_steps=50)))
    assert [r.shape.name for r in runs] == ["small"] and len(notes) == 1 and "big" in notes[0]


def test_a_shape_with_its_own_lr_trains_at_it_and_the_others_at_the_spec_lr(tmp_path):
    tuned = {"name": "tuned", "n_layer": 1, "n_embd": 16, "n_head": 2, "lr": 7e-3}
    spec = spec_from_dict(spec_dict(tmp_path, shapes=spec_dict(tmp_path)["shapes"] + [tuned]))
    runs, _ = plan_runs(spec)
    lrs = {r.shape.name: [a for a in train_args(spec, r, tmp_path) if a.startswith("--train.lr=")] for r in runs}
    assert lrs == {"small": ["--train.lr=0.001"], "tuned": ["--train.lr=0.007"]}


@pytest.mark.parametrize("changes, message", [
    ({"budgets": []}, "non-empty"),
    ({"budgets": [2e9, 1e9]}, "strictly increasing"),
    ({"budgets": [1e9, 1e9]}, "strictly increasing"),
    ({"budgets": [1e6]}, "too small for the smallest model small"),
    ({"shapes": [{"name": "odd", "n_layer": 2, "n_embd": 30, "n_head": 4}]}, "does not divide into 4 heads"),
    ({"shapes": [{"name": "neg", "n_layer": 2, "n_embd": 32, "n_head": 2, "lr": -1e-3}]}, "neg: lr must be positive"),
    ({"shapes": [{"name": "typo", "n_layer": 2, "n_embd": 32, "n_head": 2, "learning_rate": 1e-3}]}, "unknown key.*learning_rate"),
])
def test_bad_specs_are_refused(tmp_path, changes, message):
    with pytest.raises(SweepError, match=message):
        plan_runs(spec_from_dict(spec_dict(tmp_path, **changes)))


def test_data_smaller_than_largest_run_needs_allow_repeat(tmp_path):
    data = make_token_dataset(tmp_path / "data", train_tokens=5000, vocab=64)  # the run needs 5632
    with pytest.raises(SweepError, match="needs 5,632 training tokens but the data set has 5,000.*allow_repeat"):
        checked_plan(spec_from_dict(spec_dict(data)))
    runs, _ = checked_plan(spec_from_dict(spec_dict(data, allow_repeat=True)))
    assert runs[0].tokens == 5632


def test_launcher_bad_input_is_one_line_and_runs_nothing(tmp_path):
    spec = tmp_path / "spec.yaml"
    data = make_token_dataset(tmp_path / "data", vocab=64)
    spec.write_text(json.dumps(spec_dict(data, budgets=[3e9, 2e9])))  # JSON is YAML
    proc = python(["launch/scaling_laws.py", "run", str(spec), "--out", str(tmp_path / "sweep")], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "strictly increasing" in proc.stderr
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------------------------
# Vocabulary cut


def test_frequency_mapping_keeps_the_most_frequent_ids():
    # counts: id 5 x3, id 2 x2, id 7 x1, id 1 x1 (tie with 7: the smaller id wins). keep=3 -> 5:0, 2:1, rest: 2.
    mapping = frequency_mapping([np.array([5, 7, 5, 2, 1, 2, 5])], keep=3, source_vocab=9)
    assert mapping.tolist() == [2, 2, 1, 2, 2, 0, 2, 2, 2]
    mapping = frequency_mapping([np.array([5, 7, 5, 2, 1, 2, 5])], keep=4, source_vocab=9)
    assert mapping[1] == 2 and mapping[7] == 3


# ---------------------------------------------------------------------------------------------------
# Fits against known laws


def test_parametric_fit_recovers_chinchilla_from_noisy_losses():
    rng = np.random.default_rng(1)
    points = []
    for c in np.geomspace(1e18, 1e21, 4):
        for n in np.geomspace(2e7, 2e9, 7):
            d = c / (6 * n)
            loss = fits.parametric_loss(CHINCHILLA, n, d) * math.exp(rng.normal(0, 0.002))  # 0.2% noise
            points.append(fits.Point(n, d, c, loss, c))
    result = fits.fit_parametric(points, bootstrap=10, best_of=4)
    p = result["params"]
    assert abs(p["alpha"] - 0.34) < 0.01 and abs(p["beta"] - 0.28) < 0.01 and abs(p["E"] - 1.69) < 0.03
    assert 0.9 < p["A"] / 406.4 < 1.1 and 0.9 < p["B"] / 410.7 < 1.1
    # Compute-optimal exponent from the true law: beta/(alpha+beta) = 0.28/0.62 = 0.4516.
    assert abs(p["a"] - 0.4516) < 0.01
    ci = result["bootstrap"]["ci95"]
    assert ci["alpha"][0] < 0.34 < ci["alpha"][1] and ci["beta"][0] < 0.28 < ci["beta"][1]


def test_isoflop_fit_recovers_a_known_optimum():
    # Each budget's losses are a parabola in ln N with its vertex at N_opt = 0.1*C^0.5 (so D_opt = C/(6 N_opt)
    # grows as C^0.5 too), plus noise of 1e-4.
    rng = np.random.default_rng(0)
    points = []
    budgets = np.geomspace(1e15, 1e18, 4)
    for c in budgets:
        n_opt = 0.1 * c**0.5
        for n in n_opt * np.geomspace(0.1, 10, 7):
            loss = 3.0 - 0.1 * math.log10(c) + 0.05 * math.log(n / n_opt) ** 2 + rng.normal(0, 1e-4)
            points.append(fits.Point(n, c / (6 * n), c, loss, c))
    result = fits.fit_isoflop(points, bootstrap=50)
    laws = result["power_laws"]
    assert abs(laws["a"] - 0.5) < 0.01 and abs(laws["b"] - 0.5) < 0.01
    for parabola, c in zip(result["parabolas"], budgets):
        assert abs(parabola["n_opt"] / (0.1 * c**0.5) - 1) < 0.02
    lo, hi = result["bootstrap"]["ci95"]["a"]
    assert lo < 0.5 < hi


def test_isoflop_names_a_budget_without_minimum_and_missing_runs():
    records = [
        {"name": f"r{i}", "status": "done", "val_loss": loss, "params": n, "tokens": 1e6 / n, "flops": 1e6, "budget": 1e6}
        for i, (n, loss) in enumerate([(10, 3.0), (20, 2.0), (40, 1.0)])  # falling: no vertex
    ] + [{"name": "broken", "status": "failed", "val_loss": None, "params": 5, "tokens": 1, "flops": 1e6, "budget": 1e6}]
    result = fits.fit_all(records, bootstrap=0)
    assert result["runs_missing"] == ["broken"]
    assert result["isoflop"]["budgets_without_minimum"] == [1e6] and result["isoflop"]["power_laws"] is None


# ---------------------------------------------------------------------------------------------------
# Sweep: real tiny runs


def _fingerprint(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resumed_sweep_retrains_nothing(tmp_path):
    data = make_token_dataset(tmp_path / "data", vocab=64)
    out = tmp_path / "sweep"
    first = spec_from_dict(spec_dict(data, budgets=[2e8]))  # 17 steps
    records = run_sweep(first, out, progress=False)
    assert [r["status"] for r in records] == ["done"]
    done_before = _fingerprint(out / "runs" / records[0]["name"])

    # The same sweep with a second budget: the finished run is skipped, only the new one trains.
    second = spec_from_dict(spec_dict(data, budgets=[2e8, 4e8]))
    records = run_sweep(second, out, progress=False)
    assert [r["status"] for r in records] == ["done", "done"]
    assert _fingerprint(out / "runs" / records[0]["name"]) == done_before
    launches = [json.loads(line)["run"] for line in (out / "sweep_log.jsonl").read_text().splitlines()]
    assert launches == [records[0]["name"], records[1]["name"]]
    assert records[1]["steps"] == 35 and records[1]["val_loss"] is not None

    # Without results.json (the sweep's budgets run by two processes into one folder), a rerun trains nothing
    # and takes each run's wall time from its launch in sweep_log.jsonl.
    (out / "results.json").unlink()
    records = run_sweep(second, out, progress=False)
    logged = [json.loads(line) for line in (out / "sweep_log.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and [r["wall_s"] for r in records] == [line["wall_s"] for line in logged]

    # Two job slots: both runs train at once (each launched before the other ended) and end exactly where the
    # one-at-a-time sweep above ended (same seeds, 1 thread each).
    together = run_sweep(second, tmp_path / "sweep2", progress=False, jobs=2)
    assert [r["val_loss"] for r in together] == [r["val_loss"] for r in records]
    launched = [json.loads(line) for line in (tmp_path / "sweep2" / "sweep_log.jsonl").read_text().splitlines()]
    assert len(launched) == 2 and all(a["start"] < b["start"] + b["wall_s"] for a in launched for b in launched)


def test_job_slots_get_their_own_gpus_and_bad_job_counts_are_refused(tmp_path):
    from gptdist.studies.scaling_laws.sweep import slot_devices

    assert slot_devices(0, None) is None  # every job sees every device
    assert [slot_devices(s, 1) for s in range(3)] == ["0", "1", "2"]
    assert [slot_devices(s, 4) for s in range(2)] == ["0,1,2,3", "4,5,6,7"]
    data = make_token_dataset(tmp_path / "data", vocab=64)
    for kwargs, message in (({"jobs": 0}, "jobs must be at least 1"), ({"gpus_per_job": 0}, "gpus_per_job")):
        with pytest.raises(SweepError, match=message):
            run_sweep(spec_from_dict(spec_dict(data)), tmp_path / "never", progress=False, **kwargs)
    assert not (tmp_path / "never").exists()


def _tiny_dataset(folder: Path, train: list[int], val: list[int], vocab: int) -> Path:
    from gptdist.data.shards import write_shard

    folder.mkdir(parents=True)
    entries = [{"file": f"{s}_000000.bin", "split": s, "tokens": len(t), "sha256": write_shard(folder / f"{s}_000000.bin", t)}
               for s, t in (("val", val), ("train", train))]
    (folder / "manifest.json").write_text(json.dumps({"shards": entries, "tokenizer": {"name": "t", "vocab_size": vocab}}))
    return folder


def test_truncate_vocabulary_and_unigram_yardstick(tmp_path):
    from gptdist.data.loader import TokenLoader
    from gptdist.studies.scaling_laws.vocab import truncate_vocabulary, unigram_loss

    source = _tiny_dataset(tmp_path / "src", train=[4, 4, 4, 6, 6, 1] * 10, val=[6, 4, 2, 1], vocab=8)
    manifest = truncate_vocabulary(source, tmp_path / "cut", keep=3)
    # Ranked on train: 4 (30) -> 0, 6 (20) -> 1, everything else -> the rare id 2.
    val = np.fromfile(tmp_path / "cut" / "val_000000.bin", dtype="<u2", offset=1024)
    assert val.tolist() == [1, 0, 2, 2] and manifest["tokenizer"]["vocab_size"] == 3
    assert manifest["tokenizer"]["kept_source_ids"] == [4, 6]
    TokenLoader(tmp_path / "cut", "train", 1, 4, vocab_size=3)  # the loader accepts it at the cut vocabulary
    # Unigram loss with add-one counts: train (3 ids) is [0]*30 + [1]*20 + [2]*10 -> p = 31/63, 21/63, 11/63;
    # val [1, 0, 2, 2] -> -(ln 21/63 + ln 31/63 + 2 ln 11/63) / 4.
    expected = -(math.log(21 / 63) + math.log(31 / 63) + 2 * math.log(11 / 63)) / 4
    assert unigram_loss(tmp_path / "cut") == pytest.approx(expected, rel=1e-12)


def test_report_gives_each_run_its_epochs_of_the_train_split():
    from gptdist.studies.scaling_laws.report import markdown

    run = {"name": "C8e11-L1-d8", "params": 9080, "tokens": 11_981_312, "flops": 8.0e11, "steps": 23401,
           "val_loss": 3.5, "train_loss": 3.4, "status": "done"}
    nothing = {"runs_used": 1, "runs_missing": [], "parametric": {"reason": "one run"},
               "isoflop": {"parabolas": [], "budgets_without_minimum": [], "power_laws": None}}
    # 11,981,312 / 4,264,780 train tokens = 2.809... epochs
    assert "| 9,080 | 11,981,312 | 2.81 | 8.000e+11 |" in markdown("t", [run], nothing, [], None, 4_264_780)
    assert "| 9,080 | 11,981,312 | - | 8.000e+11 |" in markdown("t", [run], nothing, [], None, None)
