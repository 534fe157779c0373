"""Scaling simulator CLI (gptdist/studies/simulator/).

    # 1. a timeline from a measured 1-rank run (manual; ddp: DDP's own bucket layout; fsdp: its own compute)
    python launch/simulate.py extract runs/scaling/manual-n1-b8 --out timeline.json
    # several 1-rank runs of the same job (before and after a study) are pooled: medians over all their steps
    # a rehearsal: one process doing rank 0's work at N ranks (fake collectives): replayed as is at N ranks
    GPTDIST_FAKE_WORLD=2 python launch/train.py --config C --backend fsdp ... --log.run_name fsdp-f2-b2
    python launch/simulate.py extract runs/fsdp-f2-b2 --out t_f2.json    # then --small-timeline fsdp=t_f2.json
    python launch/simulate.py extract runs/before/manual-n1-b8 runs/after/manual-n1-b8 --out timeline.json
    # 2. predicted step times at N ranks, from comm_bench fits or a hardware profile; report + plots
    python launch/simulate.py predict timeline.json --fit docs/results/comm_bench_cpu_gloo/fit.json \
        --world-sizes 1,2,4 --cores 2 --out DIR
    # ... or with comm_bench's measured tables (interpolated; only the measured world sizes)
    python launch/simulate.py predict timeline.json --comm-table docs/results/comm_bench_cpu_gloo/n2,docs/results/comm_bench_cpu_gloo/n4 ...
    python launch/simulate.py predict timeline.json --profile 2x8-h100-ib-400g --world-sizes 1,2,4,8,16 --out ...
    # 3. predicted vs measured, against a scaling study's results.json
    python launch/simulate.py validate timeline.json --fit ... --study docs/results/scaling_cpu_gloo/results.json --cores 2
    # a timeline per backend: BACKEND=PATH,... (every backend predicted must be named)
    python launch/simulate.py validate manual=t_manual.json,ddp=t_ddp.json --backends manual,ddp,fsdp ...
    # a measured contention (--contention K=FACTOR): K copies of the 1-rank job at once vs the job alone
    python launch/simulate.py contention runs/solo-b4 runs/copy0 runs/copy1
    # a contention of K copies held in lock-step (a barrier per step, each its own replica; no gradient exchange)
    torchrun --nproc-per-node 2 launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch 4 --out k2.json --solo solo.json
    python launch/simulate.py lockstep-factor k2.json solo_before.json solo_after.json   # over several solos
    # the exact message sizes those timelines will ask of a comm table, to measure them: comm_bench --sizes
    python launch/simulate.py sizes t_manual.json t_fsdp.json --world-sizes 2,4
    # 4. the error with its spread over repeated sittings (each repeat's own inputs and study)
    python launch/simulate.py repeats DIR/repeat1/validation/validation.json DIR/repeat2/... --out DIR
    # a MODELLED single-GPU timeline (FLOPs at an assumed MFU) when no GPU run exists
    python launch/simulate.py model --preset gpt2 --seq-len 1024 --batch 16 --mfu 0.4 --peak-tflops 989 --out t.json
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import HelpFormatter, main_guard, make_parser  # noqa: E402


def _comm(args):
    from gptdist.studies import simulator
    from gptdist.errors import ConfigError

    if sum(map(bool, (args.fit, args.profile, args.comm_table))) != 1:
        raise ConfigError("give one of --fit FIT.json, --comm-table RESULTS[,RESULTS] or --profile NAME")
    if args.comm_table:
        return simulator.comm_from_table(args.comm_table.split(","))
    return simulator.comm_from_fit(args.fit) if args.fit else simulator.comm_from_profile(args.profile)


def _measured_contention(args, backend: str) -> dict[int, tuple[float, float]]:
    """--contention 2=1.1,4=2.3: measured per world size (simulator.contention_from_runs, lockstep-factor), else
    the formula; 2=1.07:1.30 gives the forward-backward and the clip + optimizer their own factors (an
    interleaved probe's `lockstep-factor --phases`); fsdp@2=... holds for that backend only (a factor measured
    during that backend's part of a study) and wins over a plain N=. -> {N: (forward-backward, update factor)}"""
    from gptdist.errors import ConfigError

    plain, own = {}, {}
    for item in filter(None, (args.contention or "").split(",")):
        try:
            key, f = item.split("=")
            who, _, n = key.rpartition("@")
            factors = [float(x) for x in f.split(":")]
            if len(factors) not in (1, 2) or min(factors) <= 0:
                raise ValueError
            (own if who == backend else plain if not who else {})[int(n)] = (factors[0], factors[-1])
        except ValueError:
            raise ConfigError(f"--contention takes [BACKEND@]N=FACTOR or [BACKEND@]N=FORWARD_BACKWARD:UPDATE,... "
                              f"(e.g. 2=1.1,4=2.3 or fsdp@2=1.07:1.3), each factor > 0, not {item!r}") from None
    return {**plain, **own}


def _timeline_paths(text: str, what: str) -> dict[str, str]:
    """"PATH" -> {"": PATH}; "manual=A,ddp=B" -> {"manual": A, "ddp": B}."""
    from gptdist.errors import ConfigError
    from gptdist.parallel import BACKENDS
    from gptdist.studies.simulator import SCHEDULE_OF

    if "=" not in text:
        return {"": text}
    modelled = [b for b in BACKENDS if b in SCHEDULE_OF]
    out = {}
    for item in text.split(","):
        backend, sep, path = item.partition("=")
        if not sep or backend.strip() not in modelled or not path:
            raise ConfigError(f"{what}: expected PATH or BACKEND=PATH,... with backends {', '.join(modelled)}; got {item!r}")
        out[backend.strip()] = path
    return out


def _timeline_for(paths: dict[str, str], backend: str, what: str = "timeline"):
    """The backend's own timeline (BACKEND=PATH), or the one PATH given for every backend."""
    from gptdist.studies import simulator
    from gptdist.errors import ConfigError

    if "" in paths:
        return simulator.load_timeline(paths[""])
    if backend not in paths:
        raise ConfigError(f"{what}: no {backend}=PATH given (named: {', '.join(paths)})")
    return simulator.load_timeline(paths[backend])


def _predict_rows(args, timeline, worlds, mode, backend, tokens_per_rank=None):
    """Predicted rows for each layout. tokens_per_rank (one per layout): the per-rank batch to predict for
    (validate passes the study's); default: the timeline's batch split over N (strong) or kept (weak)."""
    from gptdist.studies import scaling, simulator
    from gptdist.errors import ConfigError

    comm = _comm(args)
    inter = simulator.inter_tables(getattr(args, "inter_table", "") or "")  # per-layout tables across nodes
    measured = [timeline]  # 1-rank timelines of this backend at every batch measured
    for text in args.small_timeline or []:
        small = _timeline_for(_timeline_paths(text, "--small-timeline"), backend, "--small-timeline")
        if small.backend and timeline.backend and small.backend != timeline.backend:
            raise ConfigError(f"--small-timeline for {backend} comes from a {small.backend} run, the timeline from a "
                              f"{timeline.backend} run: give both from the same backend (BACKEND=PATH,...)")
        measured.append(small)
    rows, preds = [], []
    base = None
    measured_contention = _measured_contention(args, backend)  # {N: (forward-backward, update)}
    for i, layout in enumerate(worlds):
        n = layout.world
        replayed, share = timeline, (1.0 / n if mode == "strong" else 1.0)
        if tokens_per_rank is not None:
            if not timeline.tokens_per_step:
                raise ConfigError(f"{timeline.source or 'the timeline'} has no tokens_per_step (extract it from a run folder)")
            # a rehearsal of this world at this rank's batch, else the 1-rank timeline measured at this batch, else
            # the nearest one scaled (simulator.timeline_for_tokens)
            replayed, share = simulator.timeline_for_tokens(measured, tokens_per_rank[i], n)
        elif len(measured) > 1:
            replayed, share = simulator.timeline_for_tokens(measured, timeline.tokens_per_step * share, n)
        contention = simulator.cpu_contention(n, args.threads_per_rank, args.cores) if args.cores else 1.0
        contention, update_contention = measured_contention.get(n, (contention, contention))
        # on a CPU gloo's collectives use the cores the ranks compute on (1 on GPUs)
        cpu_overlap = simulator.cpu_overlap(n, args.threads_per_rank, args.cores) if args.cores else 1.0
        layout_comm = simulator.comm_for_layout(comm, inter, layout) if inter else comm
        p = simulator.simulate(replayed, layout_comm, n, backend, share, contention, overlap=not args.no_overlap,
                               prefetch=not args.no_prefetch, cpu_overlap=cpu_overlap,
                               update_contention=update_contention)
        base = p if n == 1 else base
        preds.append(p)
        parts = {"compute": p.compute_ms, "exposed": p.exposed_ms, "wait": p.wait_ms, "data": p.data_ms, "other": p.other_ms}
        e = scaling.efficiency(mode, base.step_ms, p.step_ms, n)
        base_parts = {"compute": base.compute_ms, "exposed": base.exposed_ms, "wait": 0.0, "data": base.data_ms,
                      "other": base.other_ms}
        if tokens_per_rank is not None:
            tokens = tokens_per_rank[i] * n
        else:
            tokens = timeline.tokens_per_step * (1 if mode == "strong" else n) if timeline.tokens_per_step else 0
        rows.append({"mode": mode, "backend": backend, "world": n, "layout": layout.name, "run": "predicted",
                     "step_ms": p.step_ms, "step_p25": p.step_ms, "step_p75": p.step_ms, **e,
                     "gap_ms": p.step_ms - e["ideal_ms"], "gap": scaling.attribute_gap(mode, base_parts, parts, n),
                     "parts": parts, "comm_ms": p.comm_ms, "overlap": p.overlap,
                     "tokens_per_s": tokens / (p.step_ms / 1e3) if tokens else 0.0, "mem_peak_mb": 0.0,
                     "batch_size": 0, "contention": contention, "update_contention": update_contention,
                     "cpu_overlap": cpu_overlap, "timeline": replayed.source})
    return rows, preds


def _read_studies(paths: list[str]) -> dict:
    """One study of the rows of several results.json (a study run in parts); the parts must share the
    sequence length and not measure the same run twice."""
    from gptdist.errors import ConfigError

    rows, meta, seen = [], None, {}
    for path in paths:
        try:
            part = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--study {path}: not a readable results.json ({e})") from None
        meta = part.get("meta", {}) if meta is None else meta
        if part.get("meta", {}).get("seq_len") != meta.get("seq_len"):
            raise ConfigError(f"--study {path}: seq_len {part.get('meta', {}).get('seq_len')} differs from the first "
                              f"study's {meta.get('seq_len')}")
        for r in part["rows"]:
            key = (r["mode"], r["backend"], r["layout"])
            if seen.setdefault(key, path) != path:
                raise ConfigError(f"--study: {'/'.join(key)} is measured in both {seen[key]} and {path}")
            rows.append(r)
    return {"meta": meta, "rows": rows}


def _read_probe(path: str) -> dict:
    """A lockstep probe's JSON (`simulate.py lockstep --out`); a missing or broken file is one line."""
    from gptdist.errors import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable lockstep JSON ({e})") from None


def _lockstep(args) -> None:
    """simulate.py lockstep: each torchrun process trains its own replica, a barrier before each step."""
    from gptdist.config import build_config
    from gptdist.dist import distributed, launched_by_torchrun
    from gptdist.errors import ConfigError
    from gptdist.studies.simulator import lockstep

    if args.free and (args.align_phases or args.interleave):
        raise ConfigError(f"--free and {'--interleave' if args.interleave else '--align-phases'} contradict each "
                          "other: free copies have no barrier")
    if not launched_by_torchrun():
        raise ConfigError("lockstep runs under torchrun, one process per copy: "
                          "torchrun --nproc-per-node K launch/simulate.py lockstep ...")
    copies = int(os.environ["WORLD_SIZE"])
    if args.interleave and copies < 2:
        raise ConfigError("--interleave needs at least 2 copies (torchrun --nproc-per-node K, K >= 2)")
    if args.interleave and args.steps - args.skip < 2 * copies:
        raise ConfigError(f"--interleave with {copies} copies needs --steps >= --skip + {2 * copies} (every copy one "
                          "step alone after the warm-up)")
    if args.batch < 1 or args.steps <= args.skip:
        raise ConfigError(f"--batch must be >= 1 and --steps > --skip, got {args.batch}, {args.steps}, {args.skip}")
    cfg = build_config(args.config, {"backend": "none", "train.device": "cpu"})
    # read before any work: a bad path fails fast
    solos = [_read_probe(f) for f in args.solo.split(",")] if args.solo else None
    with distributed("cpu", need_group=True) as ctx:
        result = lockstep.measure(cfg, ctx, args.batch, args.steps, args.skip, not args.free, Path(args.out),
                                  align_phases=args.align_phases or args.interleave, interleave=args.interleave)
    if result is not None:
        print(json.dumps({k: v for k, v in result.items() if k != "step_times_per_copy"}))
        if solos is not None or args.interleave:
            print(f"{lockstep.contention_factor(result, solos or []):.4f}")


def _ms_or_dash(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str]) -> None:
    from gptdist.studies import scaling, simulator
    from gptdist.provenance import provenance
    from gptdist.errors import ConfigError

    p = make_parser(__doc__, first_paragraph_only=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", formatter_class=HelpFormatter, help="timeline.json from a 1-rank run folder (manual, ddp or fsdp)")
    e.add_argument("run", nargs="+", help="a 1-rank instrumented run folder, or a GPTDIST_FAKE_WORLD=N rehearsal (one "
                   "process doing rank 0's work at N ranks); several runs of the same job (e.g. measured before and "
                   "after a study) are pooled: the medians are over all their kept steps")
    e.add_argument("--skip", type=int, default=3, help="warm-up steps left out")
    e.add_argument("--out", required=True, help="timeline JSON to write")
    ct = sub.add_parser("contention", formatter_class=HelpFormatter,
                        help="measured CPU contention: K copies of a 1-rank job run at once vs that job alone")
    ct.add_argument("solo", help="the 1-rank run folder, run alone")
    ct.add_argument("copies", nargs="+", help="the run folders of the K copies run at the same time")
    ct.add_argument("--skip", type=int, default=3, help="warm-up steps left out")
    ls = sub.add_parser("lockstep", formatter_class=HelpFormatter,
                        help="CPU contention of K copies of the 1-rank job held in lock-step (run under torchrun -n K)")
    ls.add_argument("--config", required=True, help="the training config (YAML) whose job the copies run")
    ls.add_argument("--batch", type=int, required=True, help="sequences per copy (the layout's per-rank batch)")
    ls.add_argument("--steps", type=int, default=14, help="steps per copy")
    ls.add_argument("--skip", type=int, default=4, help="warm-up steps left out of the medians")
    ls.add_argument("--free", action="store_true", help="no barrier: the copies run free, as `contention` measures")
    ls.add_argument("--align-phases", action="store_true",
                    help="also a barrier before clip + optimizer, where a data-parallel job's all-reduce aligns its "
                         "ranks (the step is timed without that wait; per-phase medians in the JSON)")
    ls.add_argument("--interleave", action="store_true",
                    help="every other step one copy runs alone (the copies take turns) while the others wait: the "
                         "factor against steps alone a second apart, no separate solo run (implies --align-phases; "
                         "per-phase factors: lockstep-factor --phases)")
    ls.add_argument("--solo", help="the same probe's JSON at one copy (F or F,F,...: their mean, e.g. measured before "
                    "and after the K copies): print the contention factor against it")
    ls.add_argument("--out", required=True, help="JSON to write (rank 0)")
    lf = sub.add_parser("lockstep-factor", formatter_class=HelpFormatter,
                        help="the contention factor of a lockstep JSON of K copies over one or more of one copy "
                             "(e.g. measured just before and just after the K copies)")
    lf.add_argument("copies", help="the lockstep JSON of the K copies")
    lf.add_argument("solo", nargs="*", help="lockstep JSONs of one copy at the same batch (their mean); none for "
                    "an interleaved probe")
    lf.add_argument("--phases", action="store_true",
                    help="interleaved probes (several: their mean): print FORWARD_BACKWARD:CLIP_OPTIMIZER factors, "
                         "the form --contention N=F1:F2 takes")
    rp = sub.add_parser("repeats", formatter_class=HelpFormatter,
                        help="the error per run with its spread over repeated validations (one validation.json each)")
    rp.add_argument("validations", nargs="+", help="validation.json files, one per repeat (or a repeat validated in "
                    "parts: its files comma-separated)")
    rp.add_argument("--out", required=True, help="folder for repeats.json, repeats.md and repeats_<mode>.png")
    sz = sub.add_parser("sizes", formatter_class=HelpFormatter,
                        help="the message sizes the simulator will ask of the comm tables (for comm_bench --sizes)")
    sz.add_argument("timelines", nargs="+", help="timeline.json files (each replayed with its own backend)")
    sz.add_argument("--world-sizes", default="2", help="comma-separated N (or cluster layouts: 2,2x1,2x2)")
    m = sub.add_parser("model", formatter_class=HelpFormatter, help="a MODELLED single-GPU timeline from FLOPs at an assumed MFU")
    m.add_argument("--preset", default="gpt2", help="model preset (gptdist.model.PRESETS)")
    m.add_argument("--vocab-size", type=int, default=50304, help="vocabulary size")
    m.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence")
    m.add_argument("--batch", type=int, default=16, help="sequences per rank")
    m.add_argument("--peak-tflops", type=float, default=989.0, help="device peak TFLOP/s (assumed)")
    m.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    m.add_argument("--optimizer-ms", type=float, default=0.0, help="assumed optimizer step time (ms)")
    m.add_argument("--out", required=True, help="timeline JSON to write")
    for name in ("predict", "validate"):
        q = sub.add_parser(name, formatter_class=HelpFormatter)
        q.add_argument("timeline", help="timeline.json, or BACKEND=PATH,... (one per backend)")
        q.add_argument("--fit", help="a comm_bench fit.json as the comm model")
        q.add_argument("--profile", choices=sorted(simulator.PROFILES), help="a named hardware profile as the comm model")
        q.add_argument("--comm-table", help="comm_bench results.json files or folders, comma-separated (measured "
                       "times, interpolated; only the measured world sizes; on a cluster: one node's)")
        q.add_argument("--inter-table", help="a cluster's tables measured across nodes, LAYOUT=RESULTS,... (e.g. "
                       "2x1=DIR,2x2=DIR): each multi-node layout uses its own, else all_reduce hierarchically "
                       "over the Ax1 table (simulator.comm_for_layout)")
        q.add_argument("--backends", default="manual", help="comma-separated backends to predict")
        q.add_argument("--modes", default="strong", help="strong, weak, or both")
        q.add_argument("--cores", type=int, default=0, help="CPU cores (0 = each rank has its own device)")
        q.add_argument("--threads-per-rank", type=int, default=1, help="threads per rank (CPU contention model)")
        q.add_argument("--contention", help="measured contention per world size, N=FACTOR,... (default N·t/C); "
                       "N=F1:F2 slows the forward-backward by F1 and clip + optimizer by F2 (lockstep-factor --phases); "
                       "BACKEND@N=...: for that backend only")
        q.add_argument("--small-timeline", action="append", help="another 1-rank timeline at a smaller batch, or a "
                       "rehearsal's (PATH or BACKEND=PATH,...; repeat it for more): a layout of N ranks replays the "
                       "rehearsal of N ranks at its batch where given, else the 1-rank one at its batch, else the "
                       "nearest one with compute(batch) affine between two")
        q.add_argument("--no-overlap", action="store_true", help="all-reduces after backward (manual/ddp)")
        q.add_argument("--no-prefetch", action="store_true", help="fsdp: no all-gather prefetch")
        q.add_argument("--out", help="report folder")
        if name == "predict":
            q.add_argument("--world-sizes", default="1,2,4,8", help="comma-separated N to predict")
            q.add_argument("--title", default="", help="a note for the figures' titles")
        else:
            q.add_argument("--study", required=True, action="append",
                           help="a scaling study's results.json; repeat it for a study run in parts (e.g. one per "
                                "backend, each between its own inputs): their rows are taken together")
            q.add_argument("--runs", default="", help="write only the rows of these runs of the study (comma-separated "
                           "run names, e.g. manual-n2x1-b4): one validate per run, each from the inputs measured "
                           "around that run; `repeats` takes the parts of a repeat together")
    args = p.parse_args(argv)

    if args.cmd == "extract":
        t = simulator.timeline_from_run(args.run[0], args.skip, more_runs=args.run[1:])
        t.save(args.out)
        print(json.dumps(t.to_json(), indent=2))
        return
    if args.cmd == "contention":  # prints the factor for --contention K=FACTOR
        solo = simulator.timeline_from_run(args.solo, args.skip)
        copies = [simulator.timeline_from_run(run, args.skip) for run in args.copies]
        print(f"{simulator.contention_from_runs(solo, copies):.4f}")
        return
    if args.cmd == "lockstep":
        _lockstep(args)
        return
    if args.cmd == "lockstep-factor":
        from gptdist.studies.simulator.lockstep import contention_factor, pooled_phase_factors

        if args.phases:  # several interleaved probes: copies and solo are all probes to pool
            f = pooled_phase_factors([_read_probe(p) for p in [args.copies, *args.solo]])
            print(f"{f['forward_backward']:.4f}:{f['clip_optimizer']:.4f}")
        else:
            print(f"{contention_factor(_read_probe(args.copies), [_read_probe(p) for p in args.solo]):.4f}")
        return
    if args.cmd == "repeats":
        from gptdist.studies.plotting import plot_repeats
        from gptdist.studies.simulator.repeats import error_spread, markdown

        spread = error_spread([[Path(part) for part in v.split(",")] for v in args.validations])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "repeats.json").write_text(json.dumps(spread, indent=2) + "\n")
        (out / "repeats.md").write_text(markdown(spread) + "\n")
        print(markdown(spread))
        plot_repeats(spread["rows"], out)
        return
    if args.cmd == "sizes":  # prints e.g. 3162112,51642368 for comm_bench --sizes
        worlds = sorted({layout.world for layout in scaling.parse_world_sizes("1," + args.world_sizes)} - {1})
        timelines = [simulator.load_timeline(path) for path in args.timelines]
        print(",".join(map(str, simulator.collective_sizes(timelines, worlds))))
        return
    if args.cmd == "model":
        from gptdist.model import PRESETS

        g = PRESETS[args.preset]
        model = {"n_layer": g.n_layer, "n_embd": g.n_embd, "n_head": g.n_head, "vocab_size": args.vocab_size,
                 "seq_len": args.seq_len}
        t = simulator.modelled_timeline(model, args.batch * args.seq_len, args.peak_tflops, args.mfu,
                                        optimizer_ms=args.optimizer_ms)
        t.save(args.out)
        print(json.dumps(t.to_json(), indent=2))
        return

    timelines = _timeline_paths(args.timeline, "timeline")
    backends = [b.strip() for b in args.backends.split(",")]
    modes = [x.strip() for x in args.modes.split(",")]
    if args.cmd == "predict":
        worlds = scaling.parse_world_sizes(args.world_sizes)
        rows = []
        for mode in modes:
            for backend in backends:
                rows += _predict_rows(args, _timeline_for(timelines, backend), worlds, mode, backend)[0]
        print(scaling.markdown_table(rows))
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "predicted.json").write_text(json.dumps(
                {"provenance": provenance(command="python launch/simulate.py " + " ".join(argv)),
                 "command": "python launch/simulate.py " + " ".join(argv),
                 "timelines": {b: _timeline_for(timelines, b).to_json() for b in backends}, "rows": rows}, indent=2, default=str) + "\n")
            scaling.plot_report(rows, out, predicted=True, title_note=args.title)
            print(f"wrote {out}/predicted.json and plots")
        return

    # validate: predicted vs measured, per (mode, backend, world) the study has
    study = _read_studies(args.study)
    only_runs = {x.strip() for x in args.runs.split(",") if x.strip()}
    unknown = only_runs - {r.get("run") for r in study["rows"]}
    if unknown:
        raise ConfigError(f"--runs: {', '.join(sorted(unknown))} not in {', '.join(args.study)}")
    lines, out_rows = [], []
    for mode in modes:
        for backend in backends:
            measured = [r for r in study["rows"] if r["mode"] == mode and r["backend"] == backend]
            if not measured:
                raise ConfigError(f"{', '.join(args.study)} has no {mode}/{backend} rows")
            measured = sorted(measured, key=lambda r: r["world"])
            worlds = scaling.parse_world_sizes(",".join(r["layout"] for r in measured))
            timeline = _timeline_for(timelines, backend)
            # predict each run at its own per-rank batch (weak: b; strong: G/N), not the timeline's
            seq_len = study.get("meta", {}).get("seq_len")
            if not seq_len or any("batch_size" not in r for r in measured):
                raise ConfigError(f"{', '.join(args.study)}: no meta.seq_len or per-row batch_size (not a launch/scaling.py results.json?)")
            tokens = [r["batch_size"] * seq_len for r in measured]
            rows, _ = _predict_rows(args, timeline, worlds, mode, backend, tokens)
            for m_row, p_row in zip(measured, rows):
                if only_runs and m_row.get("run") not in only_runs:
                    continue  # predicted all the same: the 1-rank row is every efficiency's base
                err = p_row["step_ms"] / m_row["step_ms"] - 1
                out_rows.append({"mode": mode, "backend": backend, "world": m_row["world"], "layout": m_row["layout"],
                                 "measured_ms": m_row["step_ms"], "measured_p25": m_row["step_p25"],
                                 "measured_p75": m_row["step_p75"], "predicted_ms": p_row["step_ms"], "error": err,
                                 "measured_compute_ms": m_row["parts"]["compute"],
                                 "predicted_compute_ms": p_row["parts"]["compute"],
                                 "measured_exposed_ms": m_row["parts"]["exposed"] + m_row["parts"]["wait"],
                                 "predicted_exposed_ms": p_row["parts"]["exposed"] + p_row["parts"]["wait"],
                                 "contention": p_row["contention"], "update_contention": p_row["update_contention"],
                                 "cpu_overlap": p_row["cpu_overlap"], "timeline": p_row["timeline"],
                                 "measured_slowest_rank_ms": m_row.get("slowest_step_ms"),
                                 "error_vs_slowest_rank": (p_row["step_ms"] / m_row["slowest_step_ms"] - 1
                                                           if m_row.get("slowest_step_ms") else None),
                                 # the model's collectives are transfers (no arrival skew): compare them with the
                                 # measured transfer part, not with comm time that includes waiting for a late rank
                                 "measured_transfer_ms": m_row.get("transfer_ms"),
                                 "predicted_transfer_ms": p_row["comm_ms"],
                                 "transfer_error": (p_row["comm_ms"] / m_row["transfer_ms"] - 1
                                                    if m_row.get("transfer_ms") else None)})
    if only_runs and not out_rows:
        raise ConfigError(f"--runs: {', '.join(sorted(only_runs))} has no row of --backends {args.backends} and "
                          f"--modes {args.modes}")
    head = ("| mode | backend | N | measured step ms (p25–p75) | predicted ms | error | slowest rank ms (error) "
            "| compute meas/pred | exposed+wait meas/pred | transfer meas/pred |")
    lines = [head, "|" + "---|" * 10]
    for r in out_rows:
        slowest = (f"{r['measured_slowest_rank_ms']:.1f} ({100 * r['error_vs_slowest_rank']:+.1f}%)"
                   if r["measured_slowest_rank_ms"] else "-")
        lines.append(f"| {r['mode']} | {r['backend']} | {r['layout']} | {r['measured_ms']:.1f} ({r['measured_p25']:.1f}–"
                     f"{r['measured_p75']:.1f}) | {r['predicted_ms']:.1f} | {100 * r['error']:+.1f}% | {slowest} | "
                     f"{r['measured_compute_ms']:.1f} / {r['predicted_compute_ms']:.1f} | "
                     f"{r['measured_exposed_ms']:.1f} / {r['predicted_exposed_ms']:.1f} | "
                     f"{_ms_or_dash(r['measured_transfer_ms'])} / {r['predicted_transfer_ms']:.1f} |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(
            {"provenance": provenance(command="python launch/simulate.py " + " ".join(argv)),
             "command": "python launch/simulate.py " + " ".join(argv), "rows": out_rows}, indent=2) + "\n")
        (out / "validation.md").write_text("\n".join(lines) + "\n")
        plots = scaling.plot_predicted_vs_measured(out_rows, out)
        print(f"wrote {out}/validation.json, validation.md, " + ", ".join(p.name for p in plots))


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
