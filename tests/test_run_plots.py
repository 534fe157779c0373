"""launch/plot_runs.py: curves read from metrics.jsonl (a resumed run's repeated steps), axes, files, errors."""

from __future__ import annotations

import json

import numpy as np
import yaml

from launchers import python
from synthetic import make_token_dataset

from gptdist.studies.run_plots import load_run, smooth


def fake_run(folder, data_dir, records):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"backend": "none", "model": {"n_layer": 2, "n_embd": 32},
                                                        "data": {"dir": str(data_dir), "batch_size": 2, "seq_len": 8},
                                                        "train": {"lr": 1e-3}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_resumed_run_keeps_the_later_record_and_axes_are_right(tmp_path):
    data = make_token_dataset(tmp_path / "data", train_tokens=160, vocab=64)  # 160 train tokens = 1 epoch
    # 16 tokens per step. Steps 1-3, then a resume from the step-2 checkpoint repeats step 3 and goes on to 4.
    records = [{"kind": "train", "step": s, "loss": l, "tokens": 16 * s, "step_ms": 100.0} for s, l in ((1, 5.0), (2, 4.0), (3, 9.9))]
    records += [{"kind": "train", "step": 3, "loss": 3.0, "tokens": 48, "step_ms": 200.0},
                {"kind": "train", "step": 4, "loss": 2.0, "tokens": 64, "step_ms": 100.0},
                {"kind": "val", "step": 4, "loss": 2.5}]
    run = load_run(fake_run(tmp_path / "run", data, records))
    assert run.train["loss"].tolist() == [5.0, 4.0, 3.0, 2.0]
    assert run.train["tokens"].tolist() == [16, 32, 48, 64]
    assert np.allclose(run.train["epochs"], [0.1, 0.2, 0.3, 0.4])
    assert np.allclose(run.train["time"], [0.1, 0.2, 0.4, 0.5])  # the kept step 3 took 200 ms
    assert run.val["tokens"].tolist() == [64] and np.allclose(run.val["time"], [0.5])
    assert "L2 d32" in run.label


def test_smoothing_is_a_bias_corrected_ema():
    # weight 0.5: avg1 = 0.5*2 = 1 -> 1/(1-0.5) = 2; avg2 = 0.5*1 + 0.5*4 = 2.5 -> 2.5/(1-0.25) = 3.333...
    assert np.allclose(smooth(np.array([2.0, 4.0]), 0.5), [2.0, 10 / 3])


def test_plot_runs_writes_png_and_svg_and_refuses_a_non_run(tmp_path):
    data = make_token_dataset(tmp_path / "data", vocab=64)
    records = [{"kind": "train", "step": s, "loss": 5.0 / s, "tokens": 16 * s, "step_ms": 10.0} for s in range(1, 6)]
    a = fake_run(tmp_path / "a", data, records + [{"kind": "val", "step": 5, "loss": 1.5}])
    b = fake_run(tmp_path / "b", data, records)
    out = tmp_path / "fig" / "curves"
    proc = python(["launch/plot_runs.py", str(a), str(b), "--out", str(out), "--smooth", "0.5", "--logx", "--logy"])
    assert (out.with_suffix(".png")).stat().st_size > 1000 and (out.with_suffix(".svg")).read_text().startswith("<?xml")
    assert "wrote" in proc.stdout
    proc = python(["launch/plot_runs.py", str(tmp_path / "data"), "--out", str(tmp_path / "x")], check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no metrics.jsonl" in proc.stderr
