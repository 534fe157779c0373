"""Third-version validation of the scaling simulator on CPU/gloo, from the interleaved rounds of remeasure.sh.

    bash launch/reproduce/simulator_cpu_gloo_shared_remeasure.sh 3 runs/sim2
    python launch/reproduce/simulator_cpu_gloo_shared_validate_rounds.py runs/sim2 --out docs/results/simulator_cpu_gloo

Per round, every model input comes from that round's independent runs (never from the 2- and 4-rank runs
it is checked against): the 1-rank timelines at b=8 and b=2, the comm_bench α–β fit, the core count, and
the measured contention (K concurrent 1-rank copies, no communication). Model versions:
  v1  compute × 1/N,            contention N·t/C,        free overlap   (first version)
  v2  compute affine in batch,  contention N·t/C,        free overlap   (second version)
  v3a v2 + cpu_overlap(N, t, C)  (compute pauses while a gloo collective runs when ranks fill the cores)
  v3b v2 + measured contention
  v3  v2 + both                                                         (third version)
Measured step: the study's definition (per step the slowest rank's step_ms, median over steps) and the
period (per step the mean over ranks of step_ms, median over steps). In a synchronous loop every rank
does one step per period; the ranks' step boundaries shift from step to step (whoever was scheduled late
waits less in the next all-reduce), so the slowest rank's step_ms in each step is longer than the period.
"""

import argparse
import datetime
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gptdist.studies import scaling, simulator  # noqa: E402

WARMUP = 3
CORES, THREADS = 2, 1


def measured(run: Path) -> dict:
    rows = scaling.read_rank_rows(run)
    values = scaling.per_step_values(rows, WARMUP)
    step, parts, comm, overlap, *_ = scaling.summarize_steps(values)
    # per step the mean over ranks of step_ms (the ranks' step boundaries shift, their mean does not), median over steps
    by_step: dict[int, list[float]] = {}
    for rs in rows.values():
        for r in rs:
            if r["step"] > WARMUP:
                by_step.setdefault(r["step"], []).append(r["step_ms"])
    period = statistics.median(statistics.fmean(v) for v in by_step.values() if len(v) == len(rows))
    # wall clock per step from rank 0's log lines (a mean: it carries every slow step the medians leave out)
    stamps = {}
    for line in (run / "logs" / "rank0.log").read_text().splitlines():
        hit = re.match(r"(\S+ \S+),(\d+) rank0 step\s+(\d+)/", line)
        if hit:
            t = datetime.datetime.strptime(hit.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(hit.group(2)) / 1e3
            stamps[int(hit.group(3))] = t
    last = max(stamps)
    wall = (stamps[last] - stamps[WARMUP]) / (last - WARMUP) * 1e3
    return {"step_ms": step.median, "wall_mean_ms": wall, "other_cores": background(run, stamps[WARMUP], stamps[last]), "p25": step.p25, "p75": step.p75, "period_ms": period,
            "compute_ms": parts["compute"], "exposed_wait_ms": parts["exposed"] + parts["wait"], "other_ms": parts["other"]}


def background(run: Path, t0: float, t1: float) -> float:
    """Mean cores used by other people's processes between t0 and t1 (background_load.py's samples in the
    runs folder; NaN when it was not running). Recorded, not used by the model."""
    samples = run.parent.parent / "background.jsonl"
    if not samples.is_file():
        return float("nan")
    xs = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    inside = [x["other_cores"] for x in xs if t0 <= x["t"] <= t1]
    return statistics.fmean(inside) if inside else float("nan")


def solo_work(big: simulator.Timeline, small: simulator.Timeline, tokens: float) -> float:
    """1-rank compute (pre + backward + post) at `tokens` per step, affine in the batch through two runs."""
    scale = simulator.batch_compute_scale(big, small, tokens)
    return (big.pre_ms + big.backward_ms) * scale + sum(big.post_ms.values())


def one_round(rdir: Path, comm) -> list[dict]:
    t8 = simulator.timeline_from_run(rdir / "manual-n1-b8", WARMUP)
    t2 = simulator.timeline_from_run(rdir / "manual-n1-b2", WARMUP)
    out = []
    for n, b in ((2, 4), (4, 2)):
        dirs = [d for d in sorted(rdir.glob(f"solo-k{n}-b{b}-*")) if d.is_dir()]
        copies = [simulator.timeline_from_run(d, WARMUP) for d in dirs]
        copies_background = measured(dirs[0])["other_cores"]
        work = lambda t: t.pre_ms + t.backward_ms + sum(t.post_ms.values())  # noqa: E731
        measured_contention = statistics.fmean(work(t) for t in copies) / solo_work(t8, t2, b * 64)
        affine = simulator.batch_compute_scale(t8, t2, t8.tokens_per_step / n)
        formula = simulator.cpu_contention(n, THREADS, CORES)
        ov = simulator.cpu_overlap(n, THREADS, CORES)
        versions = {"v1": (1 / n, formula, 1.0), "v2": (affine, formula, 1.0), "v3a": (affine, formula, ov),
                    "v3b": (affine, measured_contention, 1.0), "v3": (affine, measured_contention, ov)}
        m = measured(rdir / f"manual-n{n}-b{b}")
        row = {"round": rdir.name, "world": n, "measured": m, "measured_contention": measured_contention,
               "formula_contention": formula, "cpu_overlap": ov, "predicted": {},
               "other_cores": {"run": m["other_cores"], "concurrent_copies": copies_background,
                               "n1_b8": measured(rdir / "manual-n1-b8")["other_cores"]}}
        for name, (scale, cont, overlap) in versions.items():
            p = simulator.simulate(t8, comm, n, "manual", scale, cont, cpu_overlap=overlap)
            row["predicted"][name] = {"step_ms": p.step_ms, "compute_ms": p.compute_ms, "exposed_ms": p.exposed_ms,
                                      "error_vs_step": p.step_ms / m["step_ms"] - 1,
                                      "error_vs_period": p.step_ms / m["period_ms"] - 1}
        row["n1_step_ms"] = t8.step_ms
        out.append(row)
    return out


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--fit", default="docs/results/comm_bench_cpu_gloo/fit.json")
    ap.add_argument("--out")
    ap.add_argument("--study-runs", action="store_true",
                    help="RUNS is a scaling study's runs folder: print the step, the period and the parts of its "
                         "manual strong runs (n1-b8, n2-b4, n4-b2) next to the third-version prediction")
    args = ap.parse_args(argv)
    comm = simulator.comm_from_fit(args.fit)
    if args.study_runs:
        t8 = simulator.load_timeline("docs/results/simulator_cpu_gloo/timeline_manual_n1.json")
        t2 = simulator.load_timeline("docs/results/simulator_cpu_gloo/timeline_manual_n1_b2.json")
        print("| run | step ms (max over ranks, median) | period ms (mean over ranks, median) | wall ms/step (log, mean) "
              "| compute | exposed+wait | other | v1 predicted | v2 predicted | v3 predicted | v3 vs step | v3 vs period |")
        print("|" + "---|" * 12)
        for name, n in (("manual-n1-b8", 1), ("manual-n2-b4", 2), ("manual-n4-b2", 4)):
            m = measured(Path(args.runs) / name)
            scale = simulator.batch_compute_scale(t8, t2, t8.tokens_per_step / n)
            cont = simulator.cpu_contention(n, THREADS, CORES)
            v2 = simulator.simulate(t8, comm, n, "manual", scale, cont).step_ms
            v3 = simulator.simulate(t8, comm, n, "manual", scale, cont,
                                    cpu_overlap=simulator.cpu_overlap(n, THREADS, CORES)).step_ms
            v1 = simulator.simulate(t8, comm, n, "manual", 1 / n, cont).step_ms
            print(f"| {name} | {m['step_ms']:.1f} | {m['period_ms']:.1f} | {m['wall_mean_ms']:.1f} | {m['compute_ms']:.1f} | "
                  f"{m['exposed_wait_ms']:.1f} | {m['other_ms']:.1f} | {v1:.1f} | {v2:.1f} | {v3:.1f} | "
                  f"{100 * (v3 / m['step_ms'] - 1):+.1f}% | {100 * (v3 / m['period_ms'] - 1):+.1f}% |")
        print("\nPer phase (median over ranks and kept steps) vs the model's (v3: affine compute, N·t/C contention):")
        print("| run | forward meas/pred | backward meas/pred | post (grad_sync wait excluded) meas/pred | "
              "overlapped comm meas |")
        print("|---|---|---|---|---|")
        for name, n in (("manual-n2-b4", 2), ("manual-n4-b2", 4)):
            rows = [r for rs in scaling.read_rank_rows(Path(args.runs) / name).values() for r in rs if r["step"] > WARMUP]
            med = lambda k: statistics.median(r.get(k) or 0.0 for r in rows)  # noqa: E731
            scale = simulator.batch_compute_scale(t8, t2, t8.tokens_per_step / n)
            cont = simulator.cpu_contention(n, THREADS, CORES)
            post_meas = med("time/clip_ms") + med("time/optimizer_ms") + med("time/zero_grad_ms")
            post_pred = (t8.post_ms["clip"] + t8.post_ms["optimizer"] + t8.post_ms["zero_grad"]) * cont
            print(f"| {name} | {med('time/data_ms') + med('time/forward_ms'):.1f} / {t8.pre_ms * scale * cont:.1f} | "
                  f"{med('time/backward_ms'):.1f} / {t8.backward_ms * scale * cont:.1f} | {post_meas:.1f} / {post_pred:.1f} | "
                  f"{med('comm/overlapped_ms'):.1f} |")
        print("\nBucket all-reduces (collectives.jsonl, clocks synced at start): how far apart the ranks launch "
              "them, and how long each takes from the LAST rank's launch to its end, vs the comm_bench fit:")
        print("| run | bucket | bytes | launch spread ms (median) | last launch -> end ms (median) | fit ms |")
        print("|---|---|---|---|---|---|")
        for name, n in (("manual-n2-b4", 2), ("manual-n4-b2", 4)):
            by = {}
            for d in sorted((Path(args.runs) / name / "ranks").glob("rank*")):
                for line in (d / "collectives.jsonl").read_text().splitlines():
                    c = json.loads(line)
                    if c["op"] == "all_reduce" and c["step"] > WARMUP and c["label"].startswith("bucket="):
                        by.setdefault((c["label"], c["step"]), []).append(c)
            for label in sorted({k[0] for k in by}):
                spreads, tails, nbytes = [], [], 0
                for (lab, _), cs in by.items():
                    if lab != label or len(cs) != n:
                        continue
                    issues = [c["issue_ms"] for c in cs]
                    ends = [c["start_ms"] + c["duration_ms"] for c in cs]
                    spreads.append(max(issues) - min(issues))
                    tails.append(statistics.median(ends) - max(issues))
                    nbytes = cs[0]["bytes"]
                print(f"| {name} | {label} | {nbytes} | {statistics.median(spreads):.1f} | {statistics.median(tails):.1f} | "
                      f"{comm('all_reduce', nbytes, n):.1f} |")
        print("\nmanual vs ddp per phase (median over ranks and kept steps) and the gradient all-reduces of a step:")
        print("| run | forward | backward | grad_sync | clip+optimizer+zero_grad | compute | comm exposed | "
              "all-reduce bytes per step (distinct sizes, steps >= 1) |")
        print("|---|---|---|---|---|---|---|---|")
        for name in ("manual-n1-b8", "ddp-n1-b8", "manual-n2-b4", "ddp-n2-b4", "manual-n4-b2", "ddp-n4-b2"):
            run = Path(args.runs) / name
            if not run.is_dir():
                continue
            rows = [r for rs in scaling.read_rank_rows(run).values() for r in rs if r["step"] > WARMUP]
            med = lambda k: statistics.median(r.get(k) or 0.0 for r in rows)  # noqa: E731
            sizes = set()
            for line in (run / "ranks" / "rank0" / "collectives.jsonl").read_text().splitlines():
                c = json.loads(line)
                if c["op"] == "all_reduce" and c["label"].startswith("bucket=") and c["step"] >= 1:
                    sizes.add((c["label"], c["bytes"]))
            post = med("time/clip_ms") + med("time/optimizer_ms") + med("time/zero_grad_ms")
            print(f"| {name} | {med('time/forward_ms'):.1f} | {med('time/backward_ms'):.1f} | {med('time/grad_sync_ms'):.1f} | "
                  f"{post:.1f} | {med('time/compute_ms'):.1f} | {med('comm/exposed_ms'):.1f} | "
                  f"{', '.join(f'{lab}: {b}' for lab, b in sorted(sizes))} |")
        return
    rows = []
    for rdir in sorted(Path(args.runs).glob("r*")):
        rows += one_round(rdir, comm)
    lines = ["| round | N | other jobs' cores (n1 / copies / N) | measured step ms (p25–p75) | period ms | contention meas. / N·t/C | "
             "v1 | v2 | v3a (cpu_overlap) | v3b (meas. contention) | v3 (both) | v3a vs period |", "|" + "---|" * 12]
    for r in rows:
        m, p = r["measured"], r["predicted"]
        cell = lambda v: f"{p[v]['step_ms']:.0f} ({100 * p[v]['error_vs_step']:+.1f}%)"  # noqa: E731
        bg = r["other_cores"]
        lines.append(f"| {r['round']} | {r['world']} | {bg['n1_b8']:.2f} / {bg['concurrent_copies']:.2f} / {bg['run']:.2f} | {m['step_ms']:.1f} ({m['p25']:.1f}–{m['p75']:.1f}) | "
                     f"{m['period_ms']:.1f} | {r['measured_contention']:.2f} / {r['formula_contention']:.2f} | "
                     + " | ".join(cell(v) for v in ("v1", "v2", "v3a", "v3b", "v3"))
                     + f" | {100 * p['v3a']['error_vs_period']:+.1f}% |")
    lines += ["", "| N | version | error vs step: median (min … max over rounds) | error vs period: median (min … max) |",
              "|---|---|---|---|"]
    summary = {}
    for n in sorted({r["world"] for r in rows}):
        for v in ("v1", "v2", "v3a", "v3b", "v3"):
            es = [r["predicted"][v]["error_vs_step"] for r in rows if r["world"] == n]
            ep = [r["predicted"][v]["error_vs_period"] for r in rows if r["world"] == n]
            summary[f"n{n}/{v}"] = {"error_vs_step": es, "error_vs_period": ep}
            lines.append(f"| {n} | {v} | {100 * statistics.median(es):+.1f}% ({100 * min(es):+.1f} … {100 * max(es):+.1f}) | "
                         f"{100 * statistics.median(ep):+.1f}% ({100 * min(ep):+.1f} … {100 * max(ep):+.1f}) |")
    text = "\n".join(lines)
    print(text)
    # compute and communication, measured vs v3, per round
    print("\n| round | N | compute meas / v2 / v3 | exposed+wait meas / v2 / v3 | other (max-over-ranks residual) |")
    print("|---|---|---|---|---|")
    for r in rows:
        m, p = r["measured"], r["predicted"]
        print(f"| {r['round']} | {r['world']} | {m['compute_ms']:.0f} / {p['v2']['compute_ms']:.0f} / {p['v3']['compute_ms']:.0f} | "
              f"{m['exposed_wait_ms']:.0f} / {p['v2']['exposed_ms']:.0f} / {p['v3']['exposed_ms']:.0f} | {m['other_ms']:.0f} |")
    if args.out:
        Path(args.out, "validation_rounds.json").write_text(json.dumps(
            {"command": "python launch/reproduce/simulator_cpu_gloo_shared_validate_rounds.py " + " ".join(argv),
             "rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
