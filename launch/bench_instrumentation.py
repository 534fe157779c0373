"""Cost of instrumentation: step time with `instrument.enabled` on vs off, interleaved.

    OMP_NUM_THREADS=1 python launch/bench_instrumentation.py --out docs/results/instrumentation_overhead_cpu

Runs the same tiny training job (manual backend at 2 ranks under torchrun; backend none at 1 process)
with instrumentation on and off, alternating on/off `--pairs` times, each run `--steps` steps. Per run
it takes the median step_ms over the steps after `--skip` (warm-up), and reports per setting the median
of the per-pair ratios on/off with their quartiles (a ratio within a pair is less noisy than comparing
two medians: both runs of a pair see about the same machine load). Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

from gptdist.cli import main_guard, make_parser  # noqa: E402
from synthetic import make_token_dataset  # noqa: E402

COMMON = {"model.preset": "gpt2-tiny", "model.vocab_size": 96, "data.batch_size": 8, "data.seq_len": 64,
          "train.device": "cpu", "eval.val_every": 0, "checkpoint.at_end": False, "eval.sample_every": 0,
          "log.console_every": 1000}


def run_once(setting: str, enabled: bool, steps: int, data: Path, out: Path, name: str) -> list[float]:
    args = {**COMMON, "data.dir": str(data), "train.max_steps": steps, "log.out_dir": str(out), "log.run_name": name,
            "instrument.enabled": enabled}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    argv = [f"--{k}={v}" for k, v in args.items()]
    if setting == "manual-2":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", "127.0.0.1:0", "launch/train.py", "--backend=manual", *argv]
    else:
        cmd = [sys.executable, "launch/train.py", "--backend=none", *argv]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r["step_ms"] for r in rows if r["kind"] == "train"]


def quartiles(xs: list[float]) -> list[float]:
    return statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3


def main(argv: list[str]) -> None:
    p = make_parser(__doc__)
    p.add_argument("--out", required=True, help="output path without extension")
    p.add_argument("--pairs", type=int, default=6, help="on/off pairs of runs per setting (interleaved)")
    p.add_argument("--steps", type=int, default=40, help="training steps per run")
    p.add_argument("--skip", type=int, default=5, help="first steps of each run left out (warm-up)")
    p.add_argument("--settings", default="manual-2,none-1", help="comma-separated BACKEND-WORLDSIZE settings to measure")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_instr_"))
    data = make_token_dataset(tmp / "data", train_tokens=200_000, val_tokens=4_000)
    result = {"date": "2026-11-21", "command": "python launch/bench_instrumentation.py " + " ".join(sys.argv[1:]),
              "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
              "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name")), platform.processor()),
              "cpu_count": os.cpu_count(), "config": COMMON, "pairs": args.pairs, "steps": args.steps,
              "skip": args.skip, "settings": {}}
    for setting in args.settings.split(","):
        runs = {"on": [], "off": []}
        for i in range(args.pairs):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")  # alternate who goes first
            for which in order:
                times = run_once(setting, which == "on", args.steps, data, tmp / "runs", f"{setting}_{which}_{i}")
                runs[which].append(statistics.median(times[args.skip:]))
                print(f"{setting} pair {i} {which}: median step {runs[which][-1]:.2f} ms", flush=True)
        ratios = [a / b for a, b in zip(runs["on"], runs["off"])]
        result["settings"][setting] = {
            "median_step_ms_on": runs["on"], "median_step_ms_off": runs["off"], "ratio_on_off": ratios,
            "ratio_median": statistics.median(ratios), "ratio_quartiles": quartiles(ratios),
            "on_median_ms": statistics.median(runs["on"]), "off_median_ms": statistics.median(runs["off"]),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Instrumentation overhead (CPU, gloo)", "",
        f"Date {result['date']}; torch {result['torch']}; Python {result['python']}; CPU {result['cpu']} "
        f"({result['cpu_count']} logical cores, shared with other jobs: expect noise).", "",
        f"Command: `{result['command']}`", "",
        f"Config: {json.dumps(COMMON)}; {args.steps} steps per run, first {args.skip} left out; "
        f"{args.pairs} on/off pairs per setting, alternating which runs first.", "",
        "| setting | median step on (ms) | median step off (ms) | ratio on/off, median of pairs | quartiles |",
        "|---|---|---|---|---|",
    ]
    for setting, s in result["settings"].items():
        q = s["ratio_quartiles"]
        lines.append(f"| {setting} | {s['on_median_ms']:.2f} | {s['off_median_ms']:.2f} | {s['ratio_median']:.3f} | "
                     f"{q[0]:.3f} – {q[2]:.3f} |")
    lines += ["", f"Raw numbers: `{out.with_suffix('.json').name}`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
