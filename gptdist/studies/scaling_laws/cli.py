"""Command line of launch/scaling_laws.py: vocab / plan / run / fit / report. Errors are one line, exit 2."""

from __future__ import annotations

import argparse
from typing import Optional

from gptdist.errors import GptdistError


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise GptdistError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineErrorParser(prog="launch/scaling_laws.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_OneLineErrorParser)
    v = sub.add_parser("vocab", help="cut a prepared GPT-2-token data set to its K most frequent ids")
    v.add_argument("--data", required=True, help="folder written by launch/prepare_data.py")
    v.add_argument("--out", required=True)
    v.add_argument("--keep", type=int, required=True, help="K: ids kept (the last one stands for every other id)")
    v.add_argument("--overwrite", action="store_true")
    for name, text in (("plan", "print the runs a spec makes, check everything, run nothing"),
                       ("run", "run the sweep (resumable), then fit and report unless --no-report")):
        s = sub.add_parser(name, help=text)
        s.add_argument("spec", help="sweep YAML, e.g. configs/scaling_laws/cpu_fineweb.yaml")
        s.add_argument("--out", required=True, help="sweep folder (run folders, results.json)")
        if name == "plan":
            s.add_argument("--skip-data-check", action="store_true", help="plan without the data set (e.g. for a GPU recipe)")
        if name == "run":
            s.add_argument("--jobs", type=int, default=1,
                           help="runs trained at once (default 1): e.g. 2 on a 2-core CPU, 8 on 8 GPUs with --gpus-per-job 1")
            s.add_argument("--gpus-per-job", type=int, default=None,
                           help="give job slot i CUDA_VISIBLE_DEVICES i*K..i*K+K-1 (default: every job sees every GPU)")
            s.add_argument("--no-progress", action="store_true", help="no progress bar")
            s.add_argument("--no-report", action="store_true", help="train only; fit and report later with `report`")
    r = sub.add_parser("report", help="fit results.json and write plots, fits.json and report.md")
    r.add_argument("--out", required=True, help="sweep folder holding results.json")
    r.add_argument("--to", default=None, help="where the report goes (default: the sweep folder)")
    r.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the confidence intervals")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "vocab":
        from gptdist.studies.scaling_laws.vocab import truncate_vocabulary

        m = truncate_vocabulary(args.data, args.out, args.keep, args.overwrite)
        rare = {}  # per split, weighted by shard size (a split may have many shards)
        for split in sorted({e["split"] for e in m["shards"]}):
            shards = [e for e in m["shards"] if e["split"] == split]
            rare[split] = round(sum(e["rare_fraction"] * e["tokens"] for e in shards) / sum(e["tokens"] for e in shards), 4)
        print(f"wrote {args.out}: vocabulary {args.keep}, share of tokens mapped to the rare id: {rare}")
        return
    if args.command in ("plan", "run"):
        from gptdist.studies.scaling_laws.plan import load_spec, plan_runs
        from gptdist.studies.scaling_laws.sweep import checked_plan, run_sweep

        spec = load_spec(args.spec)
        runs, notes = plan_runs(spec) if getattr(args, "skip_data_check", False) else checked_plan(spec)
        if args.command == "plan":
            for r in runs:
                print(f"{r.name:28s} N={r.params:>10,} F/token={r.flops_per_token:>10,} steps={r.steps:>6} "
                      f"D={r.tokens:>11,} C={r.flops:.3e}")
            for n in notes:
                print(n)
            print(f"{len(runs)} runs, {sum(r.flops for r in runs):.3e} FLOPs in all"
                  + (" (data set not checked)" if getattr(args, "skip_data_check", False) else ""))
            return
        records = run_sweep(spec, args.out, progress=not args.no_progress, jobs=args.jobs, gpus_per_job=args.gpus_per_job)
        failed = [r["name"] for r in records if r["status"] != "done"]
        print(f"{len(records) - len(failed)} of {len(records)} runs done" + (f"; failed: {', '.join(failed)}" if failed else ""))
        if args.no_report:
            return
        args.to, args.bootstrap = None, 200
    from gptdist.studies.scaling_laws.report import write_report

    path = write_report(args.out, args.to, args.bootstrap)
    print(f"wrote {path}")
