"""The training loop on one process (backend none): run folder, metrics, checkpoints, exact resume."""

import json
import time
from pathlib import Path

import pytest
import torch

from gptdist import checkpoint as ckpt
from gptdist.config import build_config
from gptdist.dist import init_distributed
from gptdist.errors import CheckpointError, ConfigError
from gptdist.trainer import Trainer, train
from synthetic import make_token_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_token_dataset(tmp_path_factory.mktemp("data"))


def tiny(data_dir: Path, out_dir: Path, **overrides):
    base = {
        "model.preset": "test", "data.dir": str(data_dir), "data.batch_size": 4, "data.seq_len": 32,
        "train.max_steps": 6, "train.global_batch_tokens": 4 * 32 * 2, "train.warmup_steps": 2, "train.lr": 3e-3,
        "eval.val_every": 3, "eval.val_batches": 2, "log.out_dir": str(out_dir), "log.run_name": "run",
    }
    base.update(overrides)
    return build_config(None, base)


def read_metrics(run_dir: Path, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == kind]


def test_run_writes_folder_metrics_and_checkpoint(data_dir, tmp_path):
    started = time.time()
    summary = train(tiny(data_dir, tmp_path), init_distributed("cpu"))
    ended = time.time()
    run = tmp_path / "run"
    steps = read_metrics(run, "train")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    # Wall clock at each step's end: inside the run, and consecutive rows at least the later step's own time apart.
    wall = [r["unix_s"] for r in steps]
    assert started <= wall[0] and wall[-1] <= ended
    assert all(b - a >= r["step_ms"] / 1e3 - 1e-3 for a, b, r in zip(wall, wall[1:], steps[1:]))
    for key in ("loss", "lr", "grad_norm", "step_ms", "tokens_per_s", "mfu", "data_ms"):
        assert key in steps[0]
    assert steps[0]["mfu"] is None  # no peak FLOP/s is defined for a CPU
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert [r["step"] for r in read_metrics(run, "val")] == [3, 6]
    assert summary["losses"] == [r["loss"] for r in steps]
    assert (run / "config.yaml").is_file() and (run / "logs" / "rank0.log").is_file()
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step_000006"


def test_lr_schedule_warms_up_then_decays(data_dir, tmp_path):
    train(tiny(data_dir, tmp_path, **{"train.max_steps": 10, "train.warmup_steps": 3, "eval.val_every": 0}), init_distributed("cpu"))
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run", "train")]
    assert lrs[:3] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 3e-4  # cosine towards the 10% floor


@pytest.mark.parametrize("fmt", ["sharded", "full"])
def test_resume_equals_uninterrupted_run(data_dir, tmp_path, fmt):
    """6 steps straight vs. the same run resumed from its step-3 checkpoint: bitwise-equal losses."""
    common = {"checkpoint.every": 3, "checkpoint.format": fmt, "checkpoint.keep_last": 5}
    full = train(tiny(data_dir, tmp_path, **common), init_distributed("cpu"))
    step3 = tmp_path / "run" / "checkpoints" / "step_000003"
    resumed = train(
        tiny(data_dir, tmp_path, **common, **{"log.run_name": "resumed", "checkpoint.resume": str(step3)}),
        init_distributed("cpu"),
    )
    assert resumed["losses"] == full["losses"][3:]  # exact: same data position, optimizer state, schedule
    a = ckpt.load_model(tmp_path / "run")
    b = ckpt.load_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_resume_auto_continues_the_run_folder(data_dir, tmp_path):
    first = train(tiny(data_dir, tmp_path, **{"train.max_steps": 6, "checkpoint.every": 3}), init_distributed("cpu"))
    # The same run, "killed" after its step-3 checkpoint: drop the later checkpoint and resume with auto.
    run = tmp_path / "run"
    again = train(tiny(data_dir, tmp_path / "other", **{"checkpoint.every": 3}), init_distributed("cpu"))
    assert again["losses"] == first["losses"]  # determinism across runs
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000006")
    (run / "checkpoints" / "latest").write_text("step_000003\n")
    resumed = train(tiny(data_dir, tmp_path, **{"checkpoint.resume": "auto", "checkpoint.every": 3}), init_distributed("cpu"))
    assert resumed["losses"] == first["losses"][3:]


def test_existing_run_folder_is_refused_and_kept(data_dir, tmp_path):
    train(tiny(data_dir, tmp_path, **{"train.max_steps": 1}), init_distributed("cpu"))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ConfigError, match="already exists; pass --checkpoint.resume=auto"):
        Trainer(tiny(data_dir, tmp_path, **{"train.max_steps": 1}), init_distributed("cpu"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_checkpoint_from_another_model_shape_is_refused(data_dir, tmp_path):
    train(tiny(data_dir, tmp_path, **{"train.max_steps": 1}), init_distributed("cpu"))
    cfg = tiny(data_dir, tmp_path, **{"model.n_embd": 64, "log.run_name": "b", "checkpoint.resume": str(tmp_path / "run")})
    with pytest.raises(CheckpointError, match=r"another model shape: n_embd=32 \(checkpoint\) vs 64 \(config\)"):
        Trainer(cfg, init_distributed("cpu"))


def test_gpt2_vocab_run_logs_hellaswag_and_samples(data_dir, tmp_path):
    """With GPT-2's vocabulary the loop also scores HellaSwag (a few items) and writes text samples."""
    cfg = tiny(data_dir, tmp_path, **{
        "model.vocab_size": 50304, "train.max_steps": 2, "eval.val_every": 0,
        "eval.hellaswag_every": 2, "eval.hellaswag_limit": 8, "eval.sample_tokens": 5, "eval.sample_prompt": "ROMEO:",
    })
    train(cfg, init_distributed("cpu"))
    run = tmp_path / "run"
    (hs,) = read_metrics(run, "eval")
    # Exactly the 8 items were scored: each accuracy is a count of them over 8.
    assert hs["step"] == 2
    assert (hs["hellaswag_acc"] * 8).is_integer() and (hs["hellaswag_acc_norm"] * 8).is_integer()
    (sample,) = read_metrics(run, "sample")
    assert sample["text"][0].startswith("ROMEO:")
    assert "=== step 2 sample 0\nROMEO:" in (run / "samples.txt").read_text()


@pytest.mark.slow
def test_compile_gives_the_eager_losses(data_dir, tmp_path):
    """train.compile compiles each block (inductor on CPU, ~20 s cold); the numbers stay the eager ones."""
    eager = train(tiny(data_dir, tmp_path, **{"train.max_steps": 3, "eval.val_every": 0}), init_distributed("cpu"))
    compiled = train(
        tiny(data_dir, tmp_path, **{"train.max_steps": 3, "eval.val_every": 0, "train.compile": True, "log.run_name": "c"}),
        init_distributed("cpu"),
    )
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-4)
