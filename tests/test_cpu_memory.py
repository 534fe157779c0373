"""On CPU the training step keeps freed memory in the process: after warm-up a step page-faults almost nothing,
where glibc's default re-faults every large tensor each step. The reference is the page count of one tensor the
step allocates and frees (the logits, B·T·V·4 bytes): the default pays at least that per step.

With memory kept, glibc's heap layout still depends on where the kernel put the heap (address-space
randomisation): in some runs, once in tens of steps, one large tensor lands past the heap's top and is faulted in
once (measured on the 2-core machine: at most one such step in 40, ~15,900–16,400 faults, its index varying from
run to run; with `setarch -R` every run is identical). So the test reads eight steps after warm-up and allows one
of them that re-fault; two or more would be a step that keeps paying."""

from __future__ import annotations

import json
import subprocess
import sys

from launchers import REPO, subprocess_env

# logits 8·128·16384·4 B = 64 MiB = 16,384 pages of 4 KiB: above the highest mmap threshold glibc's dynamic
# threshold can reach (32 MiB), so by default every step maps it anew
B, T, V = 8, 128, 16384
LOGITS_PAGES = B * T * V * 4 // 4096
WARMUP, MEASURED = 4, 8

SCRIPT = f"""
WARMUP, MEASURED = {WARMUP}, {MEASURED}
import json, resource, sys, torch
from gptdist.config import build_config
from gptdist.dist import init_distributed
from gptdist.model import GPT
from gptdist.config import resolve_model
from gptdist.train_step import TrainStep
torch.manual_seed(0)
cfg = build_config(None, {{"model.preset": "test", "model.vocab_size": {V}, "model.block_size": {T},
                          "data.batch_size": {B}, "data.seq_len": {T}, "train.device": "cpu"}})
step = TrainStep(GPT(resolve_model(cfg)), cfg, init_distributed("cpu"))
x = torch.randint(0, {V}, ({B}, {T}))
faults = []
for i in range(WARMUP + MEASURED):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step.run(lambda: (x, x), lr=1e-3)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults[WARMUP:]))
"""


def _faults_per_step(keep: str) -> list[int]:
    env = subprocess_env(GPTDIST_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_cpu_step_stops_page_faulting_its_large_tensors():
    default = _faults_per_step("0")  # glibc's default: the logits (and their gradient) come back as new pages
    kept = _faults_per_step("1")
    assert min(default) >= LOGITS_PAGES, default
    assert len(kept) == MEASURED and sorted(kept)[-2] < LOGITS_PAGES // 20, kept  # all steps but at most one
