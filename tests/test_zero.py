"""The zero backend (ZeRO-1/2) through the real training loop, with real processes (torchrun, gloo):
losses and weights against the single-process run, exact resume, and checkpoints that cross backends and
world sizes with the full optimizer state. (Tensor-level checks: tests/test_backends.py, variants zero*.)"""

import json
import re

import pytest

from launchers import torchrun
from test_parallel_training import STEPS, assert_matches_reference, data_dir, reference, run_backend  # noqa: F401

pytestmark = pytest.mark.slow

SMALL_BUCKETS = {"parallel.zero.bucket_cap_mb": 0.01, "parallel.zero.first_bucket_mb": 0.002}


@pytest.mark.parametrize(
    "world, extra",
    [
        (2, {"parallel.zero.stage": 1}),
        (2, {}),
        (2, {"parallel.zero.overlap": False, "parallel.zero.overlap_param_gather": False, "checkpoint.format": "full"}),
        (4, {"parallel.zero.stage": 1, **SMALL_BUCKETS}),
        (4, SMALL_BUCKETS),
        (2, {"train.compile": True}),  # the gather-wait pre-hooks sit on modules inside compiled blocks
    ],
    ids=["zero1-2", "zero2-2", "zero2-2-no-overlap-full-ckpt", "zero1-4-small-buckets", "zero2-4-small-buckets",
         "zero2-2-compile"],
)
def test_zero_losses_and_weights_equal_single_process(data_dir, tmp_path, reference, world, extra):
    got, run_dir = run_backend(data_dir, tmp_path, "zero", world, "run", **extra)
    assert len(got) == STEPS
    assert_matches_reference(reference, got, run_dir)


RESUME = {"checkpoint.every": 3, "checkpoint.keep_last": 5, "train.max_steps": 6}


@pytest.mark.parametrize("stage, fmt", [(1, "sharded"), (2, "sharded"), (2, "full")])
def test_zero_resume_is_exact(data_dir, tmp_path, stage, fmt):
    """2 ranks: 6 steps straight vs. resumed from the step-3 checkpoint: bitwise-equal losses."""
    extra = {**RESUME, "checkpoint.format": fmt, "parallel.zero.stage": stage}
    straight, run_dir = run_backend(data_dir, tmp_path, "zero", 2, "straight", **extra)
    step3 = run_dir / "checkpoints" / "step_000003"
    resumed, _ = run_backend(data_dir, tmp_path, "zero", 2, "resumed", **extra, **{"checkpoint.resume": str(step3)})
    assert resumed == straight[3:]


def test_zero_checkpoint_resumes_in_manual_and_back(data_dir, tmp_path):
    """Same world size (2), so the data stream continues: zero's step-3 checkpoint resumed by manual gives
    zero's own steps 4-6, and manual's checkpoint resumed by zero gives manual's. Adam's moments matter at
    every step: had they been lost or misplaced, steps 4-6 would differ far beyond float noise (the moments
themselves are compared across backends and world sizes in the next test)."""
    zero, zero_dir = run_backend(data_dir, tmp_path, "zero", 2, "zero", **RESUME)
    manual, manual_dir = run_backend(data_dir, tmp_path, "manual", 2, "manual", **RESUME)
    step3 = "checkpoints/step_000003"
    into_manual, _ = run_backend(data_dir, tmp_path, "manual", 2, "z2m", **RESUME, **{"checkpoint.resume": str(zero_dir / step3)})
    into_zero, _ = run_backend(data_dir, tmp_path, "zero", 2, "m2z", **RESUME, **{"checkpoint.resume": str(manual_dir / step3)})
    assert into_manual == pytest.approx(zero[3:], rel=1e-5)
    assert into_zero == pytest.approx(manual[3:], rel=1e-5)


def ckpt_eval(backend, world, path, data_dir, *extra):
    proc = torchrun(["tests/dist_scripts/ckpt_eval.py", backend, str(path), str(data_dir), *extra], nproc=world, timeout=300)
    return json.loads(re.search(r"RESULT (.*)", proc.stdout).group(1))


def test_zero_checkpoint_crosses_world_sizes_and_backends(data_dir, tmp_path):
    """zero on 4 ranks saves; a single process, manual and fsdp on 2 and zero on 2 load it: the same
    validation loss and the same optimizer moments (summed in per-parameter form). And back: fsdp's 4-rank
    checkpoint loads into zero on 2 with fsdp's moments."""
    _, zero4 = run_backend(data_dir, tmp_path, "zero", 4, "zero4", **SMALL_BUCKETS)
    _, fsdp4 = run_backend(data_dir, tmp_path, "fsdp", 4, "fsdp4")
    loaded = {(b, w): ckpt_eval(b, w, zero4, data_dir) for b, w in [("none", 1), ("manual", 2), ("fsdp", 2), ("zero", 2)]}
    for result in loaded.values():
        assert result["step"] == STEPS and result["saved_world"] == 4
        assert result["val_loss"] == pytest.approx(loaded[("none", 1)]["val_loss"], rel=1e-6), loaded
        assert result["optim_abs_sum"] == pytest.approx(loaded[("none", 1)]["optim_abs_sum"], rel=1e-6), loaded
        assert result["optim_tensors"] == loaded[("none", 1)]["optim_tensors"] > 0
    from_fsdp = {b: ckpt_eval(b, w, fsdp4, data_dir) for b, w in [("none", 1), ("zero", 2)]}
    assert from_fsdp["zero"]["optim_abs_sum"] == pytest.approx(from_fsdp["none"]["optim_abs_sum"], rel=1e-6)
    assert from_fsdp["zero"]["val_loss"] == pytest.approx(from_fsdp["none"]["val_loss"], rel=1e-6)
