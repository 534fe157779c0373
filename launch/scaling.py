"""The scaling study: one config, each backend at each world size, strong and weak; report + plots.

    python launch/scaling.py --config configs/scaling_cpu.yaml --backends manual,ddp,fsdp \
        --world-sizes 1,2,4,2x2 --steps 30 --warmup 5 --out docs/results/scaling_cpu_gloo
    python launch/scaling.py ... --world-sizes 1,2,4,8,2x8      # a GPU box (2x8: 2 nodes, rehearsed on one host)

Extra train.py overrides after `--`. `--report-only` rebuilds the report from the run folders of an earlier
run (e.g. with another --warmup or --out). See gptdist/studies/scaling/ and docs/scaling.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard, make_parser  # noqa: E402


def main(argv: list[str]) -> None:
    from gptdist.studies import scaling
    from gptdist.config import build_config, parse_overrides
    from gptdist.errors import ConfigError

    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = make_parser(__doc__, first_paragraph_only=False)
    p.add_argument("--config", required=True, help="the training config every run starts from (YAML)")
    p.add_argument("--backends", default="manual,ddp,fsdp", help="comma-separated backends to compare")
    p.add_argument("--world-sizes", default="1,2,4", help="comma-separated N, or NODESxPER_NODE (2x2)")
    p.add_argument("--modes", default="strong,weak", help="strong (same global batch), weak (same per-rank batch), or both")
    p.add_argument("--per-rank-batch", type=int, default=0, help="b (default: the config's data.batch_size)")
    p.add_argument("--steps", type=int, default=14, help="training steps per run")
    p.add_argument("--warmup", type=int, default=4, help="steps left out of the medians")
    p.add_argument("--threads-per-rank", type=int, default=1, help="OMP_NUM_THREADS of every rank")
    p.add_argument("--runs-dir", default="runs/scaling", help="where the run folders go")
    p.add_argument("--out", required=True, help="report folder (report.md, results.json, plots)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    p.add_argument("--cluster", default="",
                   help="an emulated cluster that is up (launch/cluster.py up --name NAME): 1-node layouts run in node 0, "
                        "AxB on nodes 0..A-1 across its shaped link (docs/cluster.md)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the report from the run folders already in --runs-dir (same plan)")
    p.add_argument("--only", default="",
                   help="run only these runs of the plan (comma-separated run names, e.g. manual-n2x1-b4) and write no "
                        "report: a study run in pieces with other work between them; then --report-only")
    args = p.parse_args(argv)
    if args.warmup >= args.steps:
        raise ConfigError("--warmup must be below --steps")

    extra_config, overrides = parse_overrides(extra)  # the same reading train.py gives them
    if extra_config is not None:
        raise ConfigError("give the config as --config before `--`, not among the train overrides")
    cfg = build_config(args.config, overrides)
    b = args.per_rank_batch or cfg.data.batch_size
    layouts = scaling.parse_world_sizes(args.world_sizes)
    modes = [m.strip() for m in args.modes.split(",")]
    backends = [x.strip() for x in args.backends.split(",")]
    specs = scaling.plan_runs(backends, layouts, modes, b, cfg.data.seq_len)
    if args.only:
        if args.report_only:
            raise ConfigError("--only runs part of the plan, --report-only runs nothing: give one of them")
        names = [x.strip() for x in args.only.split(",")]
        unknown = sorted(set(names) - {spec.name for spec in specs})
        if unknown:
            raise ConfigError(f"--only: {', '.join(unknown)} not in the plan (its runs: {', '.join(s.name for s in specs)})")
        specs = [spec for spec in specs if spec.name in names]
    runs_dir = Path(args.runs_dir)
    cluster = None
    if args.cluster and not args.report_only:
        from gptdist.cluster import netns, state
        from gptdist.studies.scaling import on_cluster

        netns.require_host()
        cluster = state.require(state.check_name(args.cluster))
        on_cluster.check_layouts(cluster, specs)
    results, hosts = [], {}
    for spec in specs:
        if args.report_only:
            run_dir = runs_dir / spec.name
            if not (run_dir / "ranks").is_dir():
                raise ConfigError(f"--report-only: {run_dir} has no ranks/ folder (run the study without it first)")
        elif cluster is not None:
            run_dir = on_cluster.run_spec_on_cluster(cluster, spec, args.config, runs_dir, args.steps, args.threads_per_rank,
                                                     args.timeout, extra)
        else:
            run_dir = scaling.run_spec(spec, args.config, runs_dir, args.steps, args.threads_per_rank, args.timeout, extra)
        if args.cluster:
            from gptdist.studies.scaling.on_cluster import rank_hosts
            hosts[spec.name] = rank_hosts(run_dir)
        results.append(scaling.collect_run(run_dir, spec, args.warmup))
    if args.only:
        print(f"ran {', '.join(spec.name for spec in specs)} into {runs_dir}; the report: the same command with "
              f"--report-only instead of --only")
        return
    rows = scaling.analyse(results, modes)
    from gptdist.provenance import provenance

    meta = {"command": "python launch/scaling.py " + " ".join(sys.argv[1:]), "config": args.config,
            "backends": backends, "world_sizes": args.world_sizes, "modes": modes, "steps": args.steps,
            "warmup": args.warmup, "threads_per_rank": args.threads_per_rank, "per_rank_batch": b,
            "global_batch": b * max(l.world for l in layouts), "seq_len": cfg.data.seq_len, "extra": extra,
            "cluster": ({"name": cluster.name, "rate_bit": cluster.rate_bit, "nodes": [n.addr for n in cluster.nodes]}
                        if cluster is not None else args.cluster or None),
            "rank_hosts": hosts,
            "provenance": provenance(command="python launch/scaling.py " + " ".join(sys.argv[1:]), config=args.config)}
    out = Path(args.out)
    scaling.write_report(out, rows, results, meta, args.note)
    print(scaling.markdown_table(rows))
    print(scaling.answer_in_words(rows))
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
