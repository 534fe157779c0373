"""The device check: confirm the GPU measurement path on one GPU in a few minutes (launch/gpu_check.py).

Each leg runs the real CLIs in subprocesses (its own timeout), checks its result against a reference,
and writes its raw numbers; the run ends with a pass/fail table and <out>/gpu_check.json.

Legs (CUDA; the CPU rehearsal runs the same legs on gloo/CPU with tiny shapes, in the test suite):
  train_manual / train_ddp   1-rank group (NCCL on CUDA) through launch/train.py, profiler on (manual);
                             losses must match the single-process reference (backend none)
  train_fsdp                 fsdp with compile + bf16 + activation checkpointing on CUDA; DCP save at
                             step 2, then a resumed run must give the uninterrupted run's losses
  queued_collectives         4 queued async all-reduces (1 GiB on CUDA): the recorder's durations vs
                             NCCL's own `Work._get_duration()`, and their starts chained in issue order
  comm_bench                 comm_bench/run_all.py, all five ops at one size (1 GiB on CUDA), #wrong = 0
  two_ranks_one_device       2 ranks (gloo with CUDA tensors on CUDA: NCCL refuses two ranks per GPU),
                             manual backend: losses vs the single-process run with the same global batch
  recipe_memory_mfu          (CUDA only) GPT-2 124M at configs/gpt2_fineweb.yaml's per-GPU batch (32x1024),
                             bf16 + compile, a few steps: peak memory and per-device MFU

Status: ready and untried on a GPU (written without one); the CPU rehearsal passes in CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    out: Path
    cuda: bool
    timeout_s: float
    data: Path = field(init=False)
    results: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        from gptdist.data.synthetic import make_token_dataset

        self.data = make_token_dataset(self.out / "data", train_tokens=200_000 if self.cuda else 20_000)

    # --- running things --------------------------------------------------------------------------
    def run(self, args: list[str], nproc: Optional[int] = None, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
        """A CLI as a user runs it: python <script> or torchrun --nproc-per-node N <script>."""
        if nproc is None:
            cmd = [sys.executable, *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
        full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=self.timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-8:]
            raise AssertionError(f"exit {proc.returncode}: {' '.join(cmd[-6:])}\n" + "\n".join(tail))
        return proc

    def train(self, name: str, backend: str, nproc: Optional[int] = 1, env=None, **overrides) -> Path:
        args = {
            "model.preset": "test", "data.dir": str(self.data), "data.batch_size": 8 if self.cuda else 4,
            "data.seq_len": 64 if self.cuda else 32, "train.max_steps": 4, "train.warmup_steps": 2,
            "eval.val_every": 0, "checkpoint.at_end": False, "log.out_dir": str(self.out / "runs"),
            "log.run_name": name, "backend": backend, "train.device": "cuda" if self.cuda else "cpu",
            "train.dtype": "fp32", "train.seed": 0,
        }
        args["train.global_batch_tokens"] = args["data.batch_size"] * args["data.seq_len"] * 2  # 2 micro-steps at 1 rank
        args.update(overrides)
        self.run(["launch/train.py", *[f"--{k}={v}" for k, v in args.items()]], nproc=nproc, env=env)
        return self.out / "runs" / name

    def leg(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            details, status = fn(), "pass"
        except AssertionError as e:
            details, status = {"error": str(e)}, "FAIL"
        except subprocess.TimeoutExpired:
            details, status = {"error": f"timed out after {self.timeout_s:g} s"}, "FAIL"
        except Exception as e:  # a leg's crash is that leg's failure, not the whole check's
            details, status = {"error": f"{type(e).__name__}: {e}"}, "FAIL"
        row = {"leg": name, "status": status, "seconds": round(time.perf_counter() - t0, 1), **details}
        self.results.append(row)
        print(f"{status:4s}  {name:22s} {row['seconds']:6.1f} s  {_short(details)}", flush=True)


def _short(details: dict[str, Any]) -> str:
    text = "; ".join(f"{k}={v}" for k, v in details.items() if k != "losses")
    return text.splitlines()[0][:140] if text else ""


def _train_rows(run: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") == "train"]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _train_rows(run)]


def _close(a: list[float], b: list[float], tol: float) -> bool:
    return len(a) == len(b) and all(math.isfinite(x) and abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b))


# --- the legs ------------------------------------------------------------------------------------------------

def leg_train(check: Check, backend: str, reference: list[float], **extra) -> dict[str, Any]:
    run = check.train(f"train_{backend}", backend, **extra)
    losses, rows = _losses(run), _train_rows(run)
    assert _close(losses, reference, 1e-4), f"losses {losses} differ from the single-process {reference}"
    assert all(r.get("comm/count", 0) > 0 for r in rows), "a step recorded no collective"
    return {"losses": losses, "step_ms": [round(r["step_ms"], 2) for r in rows], "comm_total_ms": [round(r["comm/total_ms"], 3) for r in rows]}


def leg_fsdp_resume(check: Check, reference: list[float]) -> dict[str, Any]:
    gpu = {"train.compile": True, "train.dtype": "bf16", "model.activation_checkpointing": True} if check.cuda else {}
    whole = check.train("fsdp_whole", "fsdp", **gpu)
    first = check.train("fsdp_resume", "fsdp", **gpu, **{"train.max_steps": 2, "checkpoint.at_end": True, "checkpoint.format": "sharded"})
    check.train("fsdp_resume", "fsdp", **gpu, **{"checkpoint.resume": "auto", "checkpoint.format": "sharded"})
    resumed = _losses(first)  # metrics.jsonl appends: steps 1-2, then 3-4 of the resumed run
    tol = 2e-2 if check.cuda else 1e-4  # bf16 + compile vs fp32 reference: close, not equal
    assert _close(_losses(whole), reference, tol), f"fsdp losses {_losses(whole)} vs single-process {reference}"
    assert _close(resumed, _losses(whole), 1e-3 if check.cuda else 1e-6), f"resumed {resumed} vs uninterrupted {_losses(whole)}"
    return {"losses": _losses(whole), "resumed": resumed}


QUEUED_SCRIPT = r"""
import json, sys, torch, torch.distributed as dist
from gptdist.dist import distributed
from gptdist.instrument.recorder import CollectiveRecorder
from gptdist.instrument.device_clock import reference
nbytes, out = int(sys.argv[1]), sys.argv[2]
with distributed("auto", 120, need_group=True) as ctx:
    rec = CollectiveRecorder(ctx.device, 0, 1)
    xs = [torch.ones(nbytes // 4, device=ctx.device) for _ in range(4)]
    works = [dist.all_reduce(x, async_op=True) for x in xs[:1]]  # warm-up
    works[0].wait()
    if ctx.device.type == "cuda": torch.cuda.synchronize()
    works = []
    for i, x in enumerate(xs):
        works.append(rec.track("all_reduce", x, f"q{i}", dist.all_reduce(x, async_op=True)))
    for w in works: w.wait()
    own = []
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
        own = [w._get_duration() for w in works]
        records = rec.collect(reference(rec.clock))
    else:
        records = rec.collect()
    json.dump({"recorded_ms": [r.duration_s * 1e3 for r in records], "start_ms": [r.start_s * 1e3 for r in records],
               "end_ms": [r.end_s * 1e3 for r in records], "nccl_ms": own}, open(out, "w"))
"""


def leg_queued(check: Check) -> dict[str, Any]:
    script, out = check.out / "queued.py", check.out / "queued.json"
    script.write_text(QUEUED_SCRIPT)
    check.run([str(script), str(2**30 if check.cuda else 2**20), str(out)], nproc=1)
    r = json.loads(out.read_text())
    for prev_end, start in zip(r["end_ms"], r["start_ms"][1:]):
        assert start >= prev_end - 1e-6, f"queued collectives overlap: {r}"
    if check.cuda:
        assert all(d > 0 for d in r["recorded_ms"]), f"a queued collective has no duration: {r}"
    else:  # gloo's two worker threads may finish one collective inside another's interval (0 added time)
        assert sum(r["recorded_ms"]) > 0, f"the queued collectives have no duration: {r}"
    if check.cuda:
        assert _close(r["recorded_ms"], r["nccl_ms"], 1e-6), f"recorder {r['recorded_ms']} vs NCCL {r['nccl_ms']}"
    return r


def leg_comm_bench(check: Check) -> dict[str, Any]:
    size = "1G" if check.cuda else "64K"
    out = check.out / "comm_bench"
    # One GPU: a 1-rank NCCL group (correctness and the path; bus bandwidth is 0 by definition at 1 rank).
    # CPU rehearsal: 2 gloo ranks.
    check.run(["comm_bench/run_all.py", "-b", size, "-e", size, "-w", "2", "-n", "5", "--out", str(out), "--no-fit",
               "--overwrite", "--device", "cuda" if check.cuda else "cpu", *(["--allow-one-rank"] if check.cuda else [])],
              nproc=1 if check.cuda else 2)
    rows = json.loads((out / "results.json").read_text())["results"]
    ops = sorted({r["op"] for r in rows})
    assert len(ops) == 5 and all(r["wrong"] == 0 for r in rows), f"ops {ops}, wrong {[r['wrong'] for r in rows]}"
    return {"time_us": {r["op"]: round(r["time_us"], 1) for r in rows}}


def leg_two_ranks(check: Check, reference: list[float]) -> dict[str, Any]:
    """2 ranks x 1 micro-step = the reference's 1 rank x 2 micro-steps (same global batch, same tokens)."""
    b, t = (8, 64) if check.cuda else (4, 32)
    run = check.train("two_ranks", "manual", nproc=2, env={"GPTDIST_GLOO_ON_CUDA": "1"} if check.cuda else None,
                      **{"train.global_batch_tokens": b * t * 2})
    losses = _losses(run)
    assert _close(losses, reference, 1e-4), f"2-rank losses {losses} vs single-process {reference}"
    return {"losses": losses}


def leg_recipe(check: Check) -> dict[str, Any]:
    from gptdist.config import build_config

    recipe = build_config(str(REPO / "configs" / "gpt2_fineweb.yaml"), {})
    run = check.train("recipe", "none", nproc=None, **{
        "model.preset": "gpt2", "model.vocab_size": 50304, "data.batch_size": recipe.data.batch_size,
        "data.seq_len": recipe.data.seq_len, "train.global_batch_tokens": 0, "train.max_steps": 8,
        "train.dtype": "bf16", "train.compile": True, "model.attention": "sdpa"})
    rows = _train_rows(run)[3:]  # after compile and warm-up
    peak_gb = max(r["mem/peak_mb"] for r in rows) / 1024
    mfus = sorted(r["mfu"] for r in rows if r.get("mfu") is not None)  # None: a GPU without a listed peak
    mfu = mfus[len(mfus) // 2] if mfus else None
    assert peak_gb < 80, f"peak memory {peak_gb:.1f} GB does not fit an 80 GB H100"
    return {"peak_memory_gb": round(peak_gb, 2), "mfu_median": mfu, "batch": f"{recipe.data.batch_size}x{recipe.data.seq_len}"}


def run_check(out: Path, cuda: bool, timeout_s: float = 240.0, legs: Optional[list[str]] = None) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, cuda, timeout_s)
    print(f"gptdist device check: {'CUDA' if cuda else 'CPU rehearsal'}, output in {out}", flush=True)
    reference: list[float] = []

    def single_process():
        reference.extend(_losses(check.train("reference", "none", nproc=None)))
        return {"losses": reference}

    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("reference", single_process),
        ("train_manual", lambda: leg_train(check, "manual", reference, **{"profile.enabled": True, "profile.wait": 1,
                                                                           "profile.warmup": 1, "profile.active": 1,
                                                                           "profile.dir": str(out / "traces")})),
        ("train_ddp", lambda: leg_train(check, "ddp", reference)),
        ("train_fsdp", lambda: leg_fsdp_resume(check, reference)),
        ("queued_collectives", lambda: leg_queued(check)),
        ("comm_bench", lambda: leg_comm_bench(check)),
        ("two_ranks_one_device", lambda: leg_two_ranks(check, reference)),
    ]
    if cuda:
        plan.append(("recipe_memory_mfu", lambda: leg_recipe(check)))
    for name, fn in plan:
        if legs is None or name in legs or name == "reference":
            check.leg(name, fn)
    failed = [r["leg"] for r in check.results if r["status"] != "pass"]
    (out / "gpu_check.json").write_text(json.dumps({"cuda": cuda, "results": check.results}, indent=2) + "\n")
    print(f"\n{len(check.results) - len(failed)}/{len(check.results)} legs passed"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; raw results in {out / 'gpu_check.json'}")
    return check.results
