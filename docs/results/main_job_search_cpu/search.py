"""Which main-job config reaches the lowest validation loss in a ~5-minute, 2-core CPU budget?

Three steps, run from the repository root (data prepared first into data/tinyshakespeare):

  python docs/results/main_job_search_cpu/search.py time  --threads 2 --rounds 3     # -> timing.json
  python docs/results/main_job_search_cpu/search.py train --threads 1 --jobs 2      # -> runs.json
  python docs/results/main_job_search_cpu/search.py plot                              # -> curves.png

`time` runs every candidate for a few steps, interleaved over rounds, at the thread count of the budget.
Load slows every run of a round alike, so each candidate is measured as a ratio to the baseline's run in
the same round (median over rounds), and the baseline by its least-loaded round, the best estimate of the
idle machine. The budget's steps follow: (300 s - fixed start-up/sample cost - modelled validation cost)
/ step time. `train` gives each candidate that many steps (or `--steps NAME=N,...` chosen by hand) and trains
it to the end. Loss depends only on the step count, not on how fast the steps ran, so the training runs may
share the machine at any thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
BUDGET_S = 300.0
VAL_TOKENS = 8192  # every candidate is validated on the same first 8k tokens of the val split
VAL_POINTS = 6
BASELINE = "base_lr1e-3"  # the main job's config before this search

# Same tokenizer (GPT-2 BPE, vocab padded to 50304) for all; shape, batch and learning rate vary.
CANDIDATES = {
    "base_lr1e-3": dict(n_layer=4, n_head=4, n_embd=256, batch_size=8, seq_len=128, lr=1e-3),
    "L4_E256_B8_lr2e-3": dict(n_layer=4, n_head=4, n_embd=256, batch_size=8, seq_len=128, lr=2e-3),
    "L4_E128_B8_lr3e-3": dict(n_layer=4, n_head=4, n_embd=128, batch_size=8, seq_len=128, lr=3e-3),
    "L4_E128_B16_lr3e-3": dict(n_layer=4, n_head=4, n_embd=128, batch_size=16, seq_len=128, lr=3e-3),
    "L2_E128_B8_lr3e-3": dict(n_layer=2, n_head=4, n_embd=128, batch_size=8, seq_len=128, lr=3e-3),
    "L4_E64_B8_lr6e-3": dict(n_layer=4, n_head=4, n_embd=64, batch_size=8, seq_len=128, lr=6e-3),
    # second round, after the first six: the baseline's lr 1e-3 won, so the narrower model at that lr, and the
    # baseline at half the batch (twice the optimizer steps for about the same tokens)
    "L4_E128_B8_lr1e-3": dict(n_layer=4, n_head=4, n_embd=128, batch_size=8, seq_len=128, lr=1e-3),
    "L4_E256_B4_lr1e-3": dict(n_layer=4, n_head=4, n_embd=256, batch_size=4, seq_len=128, lr=1e-3),
}


def val_batches_of(c: dict) -> int:
    return max(1, VAL_TOKENS // (c["batch_size"] * c["seq_len"]))


def overrides(c: dict, steps: int, val_every: int, run_dir: Path, data_dir: str, val_batches: int) -> list[str]:
    return [
        "--config", "configs/shakespeare_cpu.yaml",
        f"--model.n_layer={c['n_layer']}", f"--model.n_head={c['n_head']}", f"--model.n_embd={c['n_embd']}",
        f"--model.block_size={c['seq_len']}",
        f"--data.dir={data_dir}", f"--data.batch_size={c['batch_size']}", f"--data.seq_len={c['seq_len']}",
        f"--train.max_steps={steps}", f"--train.lr={c['lr']}",
        f"--eval.val_every={val_every}", f"--eval.val_batches={val_batches}",
        f"--log.out_dir={run_dir.parent}", f"--log.run_name={run_dir.name}",
        "--checkpoint.at_end=false", "--checkpoint.resume=",
    ]


def run_train(args: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "launch/train.py", *args], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def cmd_time(a) -> None:
    names = [BASELINE] + [n for n in a.only.split(",") if n and n != BASELINE] if a.only else list(CANDIDATES)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            order = list(names)
            random.Random(rnd).shuffle(order)
            for name in order:
                run_dir = Path(tmp) / f"{name}_r{rnd}"
                # one validation batch: the run's fixed cost without the validations, which are modelled below
                wall = run_train(overrides(CANDIDATES[name], a.steps, a.steps, run_dir, a.data, 1), a.threads)
                train = [m for m in read_metrics(run_dir) if m["kind"] == "train"]
                step_ms = [m["step_ms"] for m in train[2:]]  # the first two steps warm up allocators
                rows[name].append({"round": rnd, "wall_s": wall, "median_step_ms": statistics.median(step_ms),
                                   "sum_step_s": sum(m["step_ms"] for m in train) / 1000, "load": os.getloadavg()})
                print(name, rnd, f"{statistics.median(step_ms):.0f} ms/step", f"load {os.getloadavg()[0]:.1f}", flush=True)
    out = {"threads": a.threads, "steps_per_run": a.steps, "rounds": a.rounds, "budget_s": BUDGET_S,
           "cpu_count": os.cpu_count(), "candidates": {}}
    # Load moves every candidate's time within a round alike, so each is measured as a ratio to the baseline
    # of its own round (median over rounds), and the baseline by its least-loaded round.
    base = BASELINE
    base_step_s = min(r["median_step_ms"] for r in rows[base]) / 1000
    earlier = json.loads((HERE / "timing.json").read_text()) if a.only and (HERE / "timing.json").exists() else None
    if earlier:  # later candidates join the first timing: their ratio to this round's baseline, the first base
        base_step_s = earlier["candidates"][base]["step_s_idle_estimate"]
        out["candidates"] = {k: v for k, v in earlier["candidates"].items() if k not in rows or k == base}
    for name, rs in rows.items():
        if earlier and name == base:
            continue  # keeps its first timing: the scale every candidate's budget is set by
        ratio = statistics.median(r["median_step_ms"] / rows[base][i]["median_step_ms"] for i, r in enumerate(rs))
        step_s = base_step_s * ratio
        # Fixed cost of a run: start-up, the final validation and sample (wall minus the steps' own time).
        fixed_s = min(r["wall_s"] - r["sum_step_s"] for r in rs)
        # Each of VAL_POINTS validations costs about val_batches forward passes, ~1/3 of a training step each
        # (modelled, not measured); the last validation is already in fixed_s.
        c = CANDIDATES[name]
        val_s = val_batches_of(c) * step_s / 3 * VAL_POINTS
        steps = int((BUDGET_S - fixed_s - val_s) / step_s)
        out["candidates"][name] = {**c, "rounds": rs, "ratio_to_baseline": ratio, "step_s_idle_estimate": step_s, "fixed_s": fixed_s,
                                   "val_s_modelled": val_s, "budget_steps": steps}
        print(f"{name}: {step_s*1000:.0f} ms/step, fixed {fixed_s:.1f} s -> {steps} steps", flush=True)
    (HERE / "timing.json").write_text(json.dumps(out, indent=1))


def cmd_train(a) -> None:
    if a.steps:  # NAME=STEPS,...: chosen by hand when the machine is too busy for `time`
        budget = {k: int(v) for k, v in (item.split("=") for item in a.steps.split(","))}
    else:
        budget = {k: v["budget_steps"] for k, v in json.loads((HERE / "timing.json").read_text())["candidates"].items()}
    names = a.only.split(",") if a.only else list(budget)
    runs_path = HERE / "runs.json"
    results = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    root = Path(a.run_root)

    def one(name: str) -> tuple[str, dict]:
        c, steps = CANDIDATES[name], budget[name]
        run_dir = root / name
        wall = run_train(overrides(c, steps, max(1, steps // VAL_POINTS), run_dir, a.data, val_batches_of(c))
                         + ["--log.overwrite=true"], a.threads)
        metrics = read_metrics(run_dir)
        sample = (run_dir / "samples.txt").read_text() if (run_dir / "samples.txt").exists() else ""
        val = [(m["step"], m["loss"]) for m in metrics if m["kind"] == "val"]
        train = [(m["step"], m["loss"]) for m in metrics if m["kind"] == "train"]
        step_ms = [m["step_ms"] for m in metrics if m["kind"] == "train"][2:]
        print(f"{name}: {steps} steps, final val {val[-1][1]:.3f}", flush=True)
        return name, {**c, "steps": steps, "threads": a.threads, "wall_s_this_run": wall, "val": val,
                      "median_step_ms_this_run": statistics.median(step_ms),
                      "train": train, "final_val": val[-1][1], "sample": sample}

    with ThreadPoolExecutor(a.jobs) as pool:
        for name, res in pool.map(one, names):
            results[name] = res
            runs_path.write_text(json.dumps(results, indent=1))


def cmd_plot(a) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((HERE / "runs.json").read_text())
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["final_val"]):
        tokens_per_step = r["batch_size"] * r["seq_len"]
        xs = [s * tokens_per_step / 1e3 for s, _ in r["val"]]
        ax.plot(xs, [v for _, v in r["val"]], marker="o", label=f"{name}: {r['steps']} steps, val {r['final_val']:.2f}")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("validation loss (same 8k val tokens)")
    ax.set_title("Main job candidates: validation loss against training tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(HERE / "curves.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time", help="short interleaved runs -> timing.json")
    t.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the budget (default 2)")
    t.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    t.add_argument("--steps", type=int, default=8, help="steps per timing run (default 8)")
    t.add_argument("--only", default="", help="comma-separated candidates timed against the baseline and added to "
                   "timing.json at the first timing's scale (default: time all, replace timing.json)")
    t.add_argument("--data", default="data/tinyshakespeare", help="prepared data folder (default data/tinyshakespeare)")
    r = sub.add_parser("train", help="each candidate for its budget of steps -> runs.json")
    r.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per run (default 1)")
    r.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    r.add_argument("--only", default="", help="comma-separated candidate names (default all)")
    r.add_argument("--steps", default="", help="NAME=STEPS,... instead of timing.json's budget steps")
    r.add_argument("--run-root", default="runs/main_job_search", help="where run folders go (default runs/main_job_search)")
    r.add_argument("--data", default="data/tinyshakespeare", help="prepared data folder (default data/tinyshakespeare)")
    sub.add_parser("plot", help="runs.json -> curves.png")
    a = p.parse_args()
    {"time": cmd_time, "train": cmd_train, "plot": cmd_plot}[a.cmd](a)


if __name__ == "__main__":
    main()
