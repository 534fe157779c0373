"""The zero backend (ZeRO-1/2) through the real training loop, with real processes (torchrun, gloo):
losses and weights against the single-process run at 2 and 4 ranks (2 ranks with gradient accumulation),
exact resume, and checkpoints that cross backends and world sizes both ways with the full optimizer state.
Few launches on purpose (each costs a torchrun start): one run checks several properties.
(Tensor-level checks of every stage and option: tests/test_backends.py, variants zero*; recorder records:
tests/test_instrument_dist.py; bad input: tests/test_config.py.)"""

import json
import re

import pytest

from launchers import torchrun
from test_parallel_training import STEPS, assert_matches_reference, data_dir, reference, run_backend  # noqa: F401

pytestmark = pytest.mark.slow

SMALL_BUCKETS = {"parallel.zero.bucket_cap_mb": 0.01, "parallel.zero.first_bucket_mb": 0.002}
HALFWAY = STEPS // 2


def ckpt_eval(backend, world, paths, data_dir) -> list[dict]:
    """Each checkpoint of `paths` loaded into `backend` at `world` ranks (one launch): its RESULT, in order."""
    proc = torchrun(["tests/dist_scripts/ckpt_eval.py", backend, str(data_dir), *map(str, paths)], nproc=world, timeout=300)
    results = [json.loads(m) for m in re.findall(r"RESULT (.*)", proc.stdout)]
    assert len(results) == len(paths), proc.stdout
    return results


def test_zero2_two_ranks_matches_single_process_and_resumes_exactly(data_dir, tmp_path, reference):
    """Stage 2 on 2 ranks (accumulation 2 per step): per-step losses and final weights equal the single
    process; resumed from the halfway checkpoint it gives bitwise the same later losses (Adam's moments and
    the gradient shards restored exactly; lost or misplaced moments would change them far beyond noise)."""
    extra = {"checkpoint.every": HALFWAY, "checkpoint.keep_last": 5}
    straight, run_dir = run_backend(data_dir, tmp_path, "zero", 2, "straight", **extra)
    assert len(straight) == STEPS
    assert_matches_reference(reference, straight, run_dir)
    halfway = run_dir / "checkpoints" / f"step_{HALFWAY:06d}"
    resumed, _ = run_backend(data_dir, tmp_path, "zero", 2, "resumed", **extra, **{"checkpoint.resume": str(halfway)})
    assert resumed == straight[HALFWAY:]


def test_zero1_four_ranks_matches_and_checkpoints_cross_backends_both_ways(data_dir, tmp_path, reference):
    """Stage 1 on 4 ranks with small buckets (slices cut parameters between ranks): losses and weights equal
    the single process. Its checkpoint loads into zero on 2 ranks with the same validation loss and the same
    optimizer moments (per-parameter form) as a single process loading it; and back: the single process's
    checkpoint loads into zero on 2 ranks with that checkpoint's moments."""
    got, zero4 = run_backend(data_dir, tmp_path, "zero", 4, "zero4", **{"parallel.zero.stage": 1}, **SMALL_BUCKETS)
    assert_matches_reference(reference, got, zero4)
    paths = [zero4, reference[2]]
    alone_all, zero2_all = ckpt_eval("none", 1, paths, data_dir), ckpt_eval("zero", 2, paths, data_dir)
    for path, saved_world, alone, zero2 in zip(paths, (4, 1), alone_all, zero2_all):
        assert zero2["step"] == alone["step"] == STEPS and zero2["saved_world"] == saved_world
        assert zero2["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-6), (path, alone, zero2)
        assert zero2["optim_abs_sum"] == pytest.approx(alone["optim_abs_sum"], rel=1e-6), (path, alone, zero2)
        assert zero2["optim_tensors"] == alone["optim_tensors"] > 0
