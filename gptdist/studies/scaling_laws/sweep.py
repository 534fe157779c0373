"""Run a sweep plan: every run is an ordinary `launch/train.py` process (torchrun when world_size > 1)
with its own run folder under <out>/runs/<name>.

Resumable: a run whose summary.json says it reached its planned steps is skipped; any other run is
launched with `--checkpoint.resume=auto`, so an interrupted one continues from its last checkpoint.
`jobs` runs train at once (each job slot its own GPUs when asked). One tqdm bar counts FLOPs (done runs count at once; a running run advances as its metrics.jsonl grows),
so its ETA weighs big runs properly. A failed run is reported by name and the sweep goes on.

<out>/plan.json       the plan (what each run is)
<out>/results.json    one record per planned run: status, final losses, wall time
<out>/sweep_log.jsonl one line per launch (start, end, return code)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from gptdist.data.loader import load_manifest
from gptdist.errors import DataError
from gptdist.jsonl import read_jsonl
from gptdist.studies.scaling_laws.plan import PlannedRun, SweepError, SweepSpec, plan_runs, train_args

REPO = Path(__file__).resolve().parents[3]
TRAIN_SCRIPT = REPO / "launch" / "train.py"


def train_tokens(spec: SweepSpec) -> int:
    try:
        manifest = load_manifest(spec.data_dir)
    except DataError as e:
        raise SweepError(str(e)) from None
    vocab = manifest.get("tokenizer", {}).get("vocab_size")
    if vocab is not None and vocab > spec.vocab_size:
        raise SweepError(f"the data in {spec.data_dir} has a {vocab}-token vocabulary but vocab_size is {spec.vocab_size}")
    return split_tokens(manifest)


def split_tokens(manifest: dict, split: str = "train") -> int:
    """Tokens in one split of a prepared data set's manifest."""
    return sum(int(e["tokens"]) for e in manifest["shards"] if e.get("split") == split)


def checked_plan(spec: SweepSpec) -> tuple[list[PlannedRun], list[str]]:
    """The plan, with every check (including the data set's size) done: call before anything runs."""
    return plan_runs(spec, train_tokens(spec))


def run_dir(out_dir: Path, run: PlannedRun) -> Path:
    return Path(out_dir) / "runs" / run.name


def read_run(folder: Path) -> dict[str, Any]:
    """What a run folder says: steps done, last train loss, final val loss, summed step time."""
    out: dict[str, Any] = {"steps": 0, "train_loss": None, "val_loss": None, "train_ms": 0.0}
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        for _, rec in read_jsonl(metrics):
            if rec.get("kind") == "train":
                out["steps"] = rec["step"]
                out["train_loss"] = rec.get("loss")
                out["train_ms"] += rec.get("step_ms", 0.0)
            elif rec.get("kind") == "val":
                out["val_loss"] = rec.get("loss")
                out["val_step"] = rec["step"]
    summary = folder / "summary.json"
    out["finished"] = summary.is_file() and json.loads(summary.read_text()).get("steps") is not None
    if out["finished"]:
        out["finished_steps"] = json.loads(summary.read_text())["steps"]
    return out


def is_done(out_dir: Path, run: PlannedRun) -> bool:
    state = read_run(run_dir(out_dir, run))
    return bool(state["finished"]) and state.get("finished_steps") == run.steps and state.get("val_step") == run.steps


def command(spec: SweepSpec, run: PlannedRun, out_dir: Path) -> list[str]:
    args = [str(TRAIN_SCRIPT), *train_args(spec, run, out_dir)]
    if spec.world_size > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec.world_size}", *args]
    return [sys.executable, *args]


def _launch(cmd: list[str], folder: Path, on_steps: Callable[[int], None],
            visible_devices: Optional[str] = None) -> tuple[int, str]:
    """Run one training process; call on_steps(steps done) while it runs. Returns (code, last stderr lines)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    if visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices
    folder.parent.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / f"{folder.name}.stderr"
    with open(log_path, "w") as err, open(os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)  # this cwd: relative paths in the spec hold
        while True:
            try:
                code = proc.wait(timeout=2.0)
                break
            except subprocess.TimeoutExpired:
                on_steps(read_run(folder)["steps"])
        on_steps(read_run(folder)["steps"])
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def slot_devices(slot: int, gpus_per_job: Optional[int]) -> Optional[str]:
    """CUDA_VISIBLE_DEVICES of job slot `slot` (0-based): its own gpus_per_job devices; None: inherit."""
    if gpus_per_job is None:
        return None
    return ",".join(str(slot * gpus_per_job + i) for i in range(gpus_per_job))


def record(out_dir: Path, run: PlannedRun, status: str, error: str = "") -> dict[str, Any]:
    state = read_run(run_dir(out_dir, run))
    return {**run.to_dict(), "status": status, "error": error, "val_loss": state["val_loss"],
            "train_loss": state["train_loss"], "train_s": state["train_ms"] / 1e3}


def launch_walls(out_dir: Path) -> dict[str, float]:
    """{run: its launches' wall seconds summed}, from sweep_log.jsonl (a run resumed over launches sums them)."""
    walls: dict[str, float] = {}
    log_path = Path(out_dir) / "sweep_log.jsonl"
    if log_path.is_file():
        for _, rec in read_jsonl(log_path):
            walls[rec["run"]] = walls.get(rec["run"], 0.0) + rec["wall_s"]
    return walls


def run_sweep(spec: SweepSpec, out_dir: str | Path, progress: bool = True,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
              jobs: int = 1, gpus_per_job: Optional[int] = None) -> list[dict[str, Any]]:
    """Run every planned run not yet done, `jobs` of them at once; return one record per run (done/failed).

    jobs > 1 suits hardware with room for several runs (2 CPU cores and 1-thread runs; 8 GPUs and 1-GPU runs,
    with gpus_per_job=1 giving each job slot its own CUDA_VISIBLE_DEVICES)."""
    from tqdm import tqdm

    if jobs < 1:
        raise SweepError(f"jobs must be at least 1, got {jobs}")
    if gpus_per_job is not None and gpus_per_job < 1:
        raise SweepError(f"gpus_per_job must be at least 1, got {gpus_per_job}")
    out_dir = Path(out_dir)
    runs, notes = checked_plan(spec)  # raises before anything runs
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(json.dumps({"runs": [r.to_dict() for r in runs], "left_out": notes}, indent=1))
    for note in notes:
        log(note)
    results_path = out_dir / "results.json"
    previous = json.loads(results_path.read_text())["runs"] if results_path.is_file() else []
    records = {rec["name"]: rec for rec in previous}
    logged_wall = launch_walls(out_dir)
    total = sum(r.flops for r in runs)
    bar = tqdm(total=total, unit="FLOP", unit_scale=True, disable=not progress, desc=spec.name, dynamic_ncols=True)
    lock = threading.Lock()  # guards bar, records and the files below: job threads finish in any order
    running: set[str] = set()

    def write_results() -> None:
        results_path.write_text(json.dumps({"spec": spec.name, "runs": [records[r.name] for r in runs if r.name in records]},
                                           indent=1))

    def train(run: PlannedRun, slot: int) -> None:
        per_step = run.flops / run.steps
        counted = [0]

        def on_steps(steps: int) -> None:
            steps = min(steps, run.steps)
            with lock:
                bar.update((steps - counted[0]) * per_step)
                counted[0] = steps

        with lock:
            running.add(run.name)
            bar.set_postfix_str(", ".join(sorted(running)))
        t0 = time.time()
        code, last_line = _launch(command(spec, run, out_dir), run_dir(out_dir, run), on_steps,
                                  slot_devices(slot, gpus_per_job))
        wall = time.time() - t0
        done = code == 0 and is_done(out_dir, run)
        with lock:
            running.discard(run.name)
            with open(out_dir / "sweep_log.jsonl", "a") as f:
                f.write(json.dumps({"run": run.name, "start": t0, "wall_s": wall, "returncode": code}) + "\n")
            if not done:
                log(f"run {run.name} failed (exit {code}): {last_line}")
                bar.update(run.flops - counted[0] * per_step)  # the bar still reaches the end
            prior_wall = records.get(run.name, {}).get("wall_s") or 0.0
            records[run.name] = {**record(out_dir, run, "done" if done else "failed", "" if done else last_line),
                                 "wall_s": prior_wall + wall}
            write_results()

    todo = []
    for run in runs:
        if is_done(out_dir, run):
            bar.update(run.flops)
            wall = records.get(run.name, {}).get("wall_s") or logged_wall.get(run.name)  # the log: run by another process
            records[run.name] = {**record(out_dir, run, "done"), "wall_s": wall}
        else:
            todo.append(run)
    if jobs > 1:  # longest first (FLOPs, then steps), so the last run to start is a short one
        todo.sort(key=lambda r: (r.flops, r.steps), reverse=True)
    queue = list(reversed(todo))  # pop() takes them in that order

    def job_slot(slot: int) -> None:
        while True:
            with lock:
                if not queue:
                    return
                run = queue.pop()
            train(run, slot)

    try:
        threads = [threading.Thread(target=job_slot, args=(slot,), daemon=True) for slot in range(min(jobs, len(todo)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        bar.close()
    ordered = [records[r.name] for r in runs]
    results_path.write_text(json.dumps({"spec": spec.name, "runs": ordered}, indent=1))
    return ordered
