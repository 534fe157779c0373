"""Step time of a training run against the gradient bucket cap of the manual backend.

Small buckets start communicating early in backward (more overlap) but pay the per-call latency α
many times; large buckets pay it rarely but start late and leave the last all-reduce exposed (the
trade-off of the PyTorch DDP paper, Li et al. 2020, section 5.3). This script measures the curve:

    python comm_bench/bucket_sweep.py --nproc 2 --caps 1,5,25,100 --steps 30 --warmup-steps 10 \\
        --out docs/results/bucket_sweep_cpu -- --data.batch_size=4

For each cap it runs the training entry point under torchrun

    torchrun --standalone --nproc-per-node P launch/train.py --backend manual \\
        --parallel.manual.bucket_cap_mb=CAP --model.preset=PRESET --train.max_steps=STEPS \\
        --log.out_dir=OUT/runs --log.run_name=bucket_CAPmb [extra overrides after --]

reads the per-step `step_ms` from OUT/runs/bucket_CAPmb/metrics.jsonl (one JSON object per line),
drops the first --warmup-steps steps, and reports the median (and the 10th/90th percentiles).
Writes bucket_sweep.json, bucket_sweep.csv and bucket_sweep.png into --out.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file: make gptdist importable

from gptdist.errors import ConfigError  # noqa: E402

DEFAULT_CAPS = "1,2,5,10,25,50,100"


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints the whole usage block
        raise ConfigError(message)


@dataclass
class SweepArgs:
    caps_mb: list[float]
    nproc: int
    steps: int
    warmup_steps: int
    preset: str
    out: Path
    train_script: Path
    extra_overrides: list[str] = field(default_factory=list)


def parse_caps(text: str) -> list[float]:
    try:
        caps = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--caps must be a comma list of sizes in MB, e.g. {DEFAULT_CAPS}; got {text!r}") from None
    if not caps or any(c <= 0 for c in caps):
        raise ConfigError(f"--caps needs at least one bucket cap, each > 0 MB; got {text!r}")
    return sorted(set(caps))


def parse_args(argv: list[str]) -> SweepArgs:
    extra: list[str] = []
    if "--" in argv:  # everything after `--` goes to the training script unchanged
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = _OneLineErrorParser(description="Median training step time vs the manual backend's bucket cap.")
    p.add_argument("--caps", default=DEFAULT_CAPS, help=f"bucket caps in MB, comma list (default {DEFAULT_CAPS})")
    p.add_argument("--nproc", type=int, default=2, help="ranks per run (torchrun --nproc-per-node; default 2)")
    p.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    p.add_argument("--warmup-steps", type=int, default=10, help="first steps left out of the median (default 10)")
    p.add_argument("--preset", default="gpt2-tiny", help="model preset (default gpt2-tiny)")
    p.add_argument("--out", default=None, help="output folder (default runs/bucket_sweep/<timestamp>)")
    p.add_argument("--train-script", default=str(REPO / "launch" / "train.py"), help="training entry point (default launch/train.py)")
    ns = p.parse_args(argv)
    args = SweepArgs(
        caps_mb=parse_caps(ns.caps),
        nproc=ns.nproc,
        steps=ns.steps,
        warmup_steps=ns.warmup_steps,
        preset=ns.preset,
        out=Path(ns.out) if ns.out else Path("runs") / "bucket_sweep" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        train_script=Path(ns.train_script),
        extra_overrides=extra,
    )
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.warmup_steps < 0 or args.steps <= args.warmup_steps:
        raise ConfigError(f"--steps ({args.steps}) must be larger than --warmup-steps ({args.warmup_steps}) so some steps are measured")
    if not args.train_script.is_file():
        raise ConfigError(f"training script not found: {args.train_script} (the sweep needs launch/train.py with the manual backend)")
    return args


def run_name(cap_mb: float) -> str:
    return f"bucket_{cap_mb:g}mb"


def train_command(args: SweepArgs, cap_mb: float) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
        str(args.train_script),
        "--backend", "manual",
        f"--parallel.manual.bucket_cap_mb={cap_mb:g}",
        f"--model.preset={args.preset}",
        f"--train.max_steps={args.steps}",
        f"--log.out_dir={args.out / 'runs'}",
        f"--log.run_name={run_name(cap_mb)}",
        # Only step times matter here: no checkpoints (hundreds of MB per run), no validation, no sample.
        "--checkpoint.at_end=false", "--eval.val_every=0", "--eval.sample_tokens=0",
        *args.extra_overrides,
    ]


def read_step_ms(metrics_path: Path, warmup_steps: int) -> list[float]:
    """step_ms of every training step after the first `warmup_steps`, in step order.

    Lines without step_ms (eval records, run headers) are skipped; so is a truncated last line.
    """
    if not metrics_path.is_file():
        raise ConfigError(f"no metrics file at {metrics_path}: did the training run log to it?")
    steps: dict[int, float] = {}
    for line in metrics_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec and rec.get("step_ms") is not None:
            steps[int(rec["step"])] = float(rec["step_ms"])
    timed = [steps[s] for s in sorted(steps)][warmup_steps:]
    if not timed:
        raise ConfigError(f"{metrics_path}: no step_ms left after skipping {warmup_steps} warm-up steps")
    return timed


def summarize(cap_mb: float, step_ms: list[float]) -> dict:
    qs = statistics.quantiles(step_ms, n=10) if len(step_ms) >= 2 else [step_ms[0]] * 9
    return {"bucket_cap_mb": cap_mb, "median_step_ms": statistics.median(step_ms), "p10_step_ms": qs[0],
            "p90_step_ms": qs[-1], "n_steps": len(step_ms)}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = [r["bucket_cap_mb"] for r in rows]
    med = [r["median_step_ms"] for r in rows]
    err = [[m - r["p10_step_ms"] for m, r in zip(med, rows)], [r["p90_step_ms"] - m for m, r in zip(med, rows)]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(caps, med, yerr=err, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("bucket cap (MB)")
    ax.set_ylabel("median step time (ms), bars p10–p90")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: SweepArgs) -> int:
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"# bucket sweep: {args.nproc} ranks, preset {args.preset}, {args.steps} steps ({args.warmup_steps} warm-up skipped)")
    print(f"# {'cap(MB)':>8s}  {'median(ms)':>10s}  {'p10(ms)':>8s}  {'p90(ms)':>8s}  {'steps':>5s}")
    for cap in args.caps_mb:
        cmd = train_command(args, cap)
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (args.out / f"{run_name(cap)}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ConfigError(f"training run for bucket cap {cap:g} MB failed ({proc.returncode}); see "
                              f"{args.out / (run_name(cap) + '.log')}: {' | '.join(tail)}")
        row = summarize(cap, read_step_ms(args.out / "runs" / run_name(cap) / "metrics.jsonl", args.warmup_steps))
        row["command"] = " ".join(cmd[1:]).replace("-m torch.distributed.run", "torchrun", 1)
        rows.append(row)
        print(f"  {cap:8g}  {row['median_step_ms']:10.1f}  {row['p10_step_ms']:8.1f}  {row['p90_step_ms']:8.1f}  {row['n_steps']:5d}", flush=True)

    meta = {"tool": "comm_bench/bucket_sweep.py", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": args.nproc, "preset": args.preset, "steps": args.steps, "warmup_steps": args.warmup_steps,
            "extra_overrides": args.extra_overrides, "torch_version": torch.__version__, "platform": platform.platform(),
            "argv": sys.argv}
    from gptdist.provenance import provenance

    (args.out / "bucket_sweep.json").write_text(json.dumps({"provenance": provenance(), "metadata": meta, "results": rows},
                                                           indent=2) + "\n")
    with open(args.out / "bucket_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["bucket_cap_mb", "median_step_ms", "p10_step_ms", "p90_step_ms", "n_steps"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "bucket_sweep.png", f"manual backend, {args.preset}, {args.nproc} ranks, torch {torch.__version__}")
    print(f"# wrote {args.out}/bucket_sweep.json, bucket_sweep.csv, bucket_sweep.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
