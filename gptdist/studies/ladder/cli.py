"""`launch/ladder.py`: read a ladder file, run it, print a short summary, write OUT.json / OUT.md / OUT.png."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from gptdist.studies.throughput import write_outputs
from gptdist.cli import make_parser
from gptdist.config import parse_overrides
from gptdist.errors import ConfigError, GptdistError
from gptdist.studies.ladder.spec import load_ladder
from gptdist.studies.ladder.runner import LadderOptions, run_ladder
from gptdist.studies.ladder.report import to_markdown, plot


# ---------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.epilog = ("Baseline settings for every rung are config fields, as train.py takes them: "
                "--data.batch_size=32 --train.compile=true")
    p.add_argument("--config", default="configs/ladder/default.yaml", help="the ladder file")
    p.add_argument("--only", help="comma-separated rung names to run; the others are reported as not selected")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=5, help="timed steps per rung per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per rung first (compile happens here)")
    p.add_argument("--profile-steps", type=int, default=2, help="steps in each rung's profiler window; 0: none")
    p.add_argument("--top", type=int, default=8, help="ops listed per rung")
    p.add_argument("--traces", nargs="?", const="", default=None, metavar="DIR",
                   help="write a Chrome trace per rung (default folder traces/ladder/<name>)")
    p.add_argument("--sequential", action="store_true",
                   help="one rung alive at a time (less memory) instead of interleaved rounds")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--peak-flops", type=float, help="bf16 peak FLOP/s for MFU where the table has none")
    p.add_argument("--name", help="run name (trace folder); default: the ladder file's name and a timestamp")
    p.add_argument("--out", help="write OUT.json, OUT.md and OUT.png")
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section of OUT.md")
    p.add_argument("--run-dir", default="runs/dist_ladder", help="run folders of a `world:` ladder (not committed)")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)  # a rank of a `world:` ladder's torchrun job
    args, rest = p.parse_known_args(argv)
    args.overrides = rest
    return args


def baseline_overrides(argv: list[str]) -> dict[str, Any]:
    """`--section.key=value` arguments (the config's own syntax) -> {dotted key: value} for every rung."""
    if "--set" in argv or any(a.startswith("--set=") for a in argv):
        raise ConfigError("--set KEY=VALUE is gone: give the setting as a config field, e.g. --data.batch_size=32")
    config_path, overrides = parse_overrides(argv)
    if config_path is not None:
        raise ConfigError("--config is given once (the ladder file)")
    return {key: value.parsed if not isinstance(value.parsed, str) else str(value) for key, value in overrides}


def _main_dist(ladder, args: argparse.Namespace, argv: list[str]) -> int:
    """A ladder with `world: N`: checked here, then one torchrun job of N ranks (this script again). Started
    under torchrun already (e.g. by launch/cluster.py, one agent per node), it is that job itself."""
    import os

    import torch

    from gptdist.studies.ladder import dist as dist_ladder

    unused = [flag for flag, value in (("--only", args.only), ("--traces", args.traces), ("--sequential", args.sequential),
                                       ("--threads", args.threads), ("--peak-flops", args.peak_flops)) if value]
    if unused:  # the rungs are trainer runs, one after the other: these single-device options mean nothing here
        raise ConfigError(f"{', '.join(unused)}: not an option of a `world:` ladder (it takes --steps, --out, --run-dir, --note)")
    device = torch.device("cpu" if args.device == "auto" else args.device)
    opts = dist_ladder.DistLadderOptions(steps=args.steps, device=device.type)
    if not args.out and not args.worker_out:
        raise ConfigError("a `world:` ladder writes its report: give --out")
    under_torchrun = "RANK" in os.environ
    if under_torchrun and int(os.environ.get("WORLD_SIZE", "0")) != ladder.world:
        raise ConfigError(f"the ladder has world: {ladder.world}, but torchrun started {os.environ.get('WORLD_SIZE')} ranks")
    if args.worker_out:  # a rank of the job `launch` below started: the raw result only
        dist_ladder.worker(ladder, opts, Path(args.run_dir), Path(args.worker_out))
        return 0
    if under_torchrun:
        raw = Path(args.out).with_suffix(".json")
        raw.parent.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("GPTDIST_LADDER_COMMAND", "torchrun ... " + shlex.join(["launch/ladder.py", *argv]))
        dist_ladder.worker(ladder, opts, Path(args.run_dir), raw)
        if os.environ["RANK"] != "0":
            return 0
        result = json.loads(raw.read_text())
    else:
        result = dist_ladder.launch(args.config, argv, ladder.world, Path(args.out), Path(args.run_dir))
    _write_dist_report(result, args)
    return 0


def _write_dist_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    from gptdist.studies.ladder.report import dist_plot, dist_to_markdown

    result["notes"] = args.note
    result["provenance"]["command"] = result["command"]  # the user's command, not the torchrun worker's
    markdown = dist_to_markdown(result, args.note)
    out = write_outputs(Path(args.out), result, markdown)
    dist_plot(result, out.with_suffix(".png"))
    print(markdown)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        ladder = load_ladder(args.config, baseline_overrides(args.overrides))
        if ladder.world is not None:
            return _main_dist(ladder, args, argv if argv is not None else sys.argv[1:])
        name = args.name or f"{Path(args.config).stem}_{dt.datetime.now():%Y%m%d_%H%M%S}"
        traces = None if args.traces is None else (args.traces or str(Path("traces") / "ladder" / name))
        opts = LadderOptions(
            device=args.device, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
            profile_steps=args.profile_steps, top=args.top, traces_dir=traces, threads=args.threads,
            peak_flops=args.peak_flops, sequential=args.sequential,
            only=[s.strip() for s in args.only.split(",") if s.strip()] if args.only else None,
        )
        result = run_ladder(ladder, opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except GptdistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["notes"] = args.note
    markdown = to_markdown(result, args.note)
    if not args.out:  # no file to hold it: the whole report on the console
        print(markdown)
        return 0
    out = write_outputs(Path(args.out), result, markdown)
    plot(result, out.with_suffix(".png"))
    # The console gets the table only (the report runs to hundreds of lines with the profiles).
    print(markdown.split("\n## ")[0].strip())
    print(f"\nfull report: {out.with_suffix('.md')} (raw: .json, chart: .png)")
    return 0
