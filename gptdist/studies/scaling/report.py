"""The T/N study's report: markdown table, the answer in words, figures, results files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

from gptdist.provenance import readme_header
from gptdist.studies.scaling.analysis import PART_TITLES, RunResult
from gptdist.studies.plotting import plot_report


# ----------------------------------------------------------------------------------------------
# Report


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ms(x: Optional[float]) -> str:
    return f"{x:.1f}" if x else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | backend | N | step ms (p25–p75) | slowest rank ms | speed-up | efficiency | gap ms | extra compute "
            "| exposed comm | straggler wait | data | other | comm ms | overlap | tokens/s | peak mem MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        g = r["gap"]
        lines.append(
            f"| {r['mode']} | {r['backend']} | {r['layout']} | {r['step_ms']:.1f} ({r['step_p25']:.1f}–{r['step_p75']:.1f}) "
            f"| {_ms(r.get('slowest_step_ms'))} | {r['speedup']:.2f} | {_pct(r['efficiency'])} | {r['gap_ms']:+.1f} | {g['compute']:+.1f} | {g['exposed']:+.1f} "
            f"| {g['wait']:+.1f} | {g['data']:+.1f} | {g['other']:+.1f} | {r['comm_ms']:.1f} | {_pct(r['overlap'])} "
            f"| {r['tokens_per_s']:,.0f} | {r['mem_peak_mb']:.0f} |")
    return "\n".join(lines)


def comm_split_table(rows: list[dict[str, Any]]) -> str:
    """The measured split of collective time (arrival wait vs transfer) beside the inferred straggler-wait
    part; empty when no run has a collectives_split.jsonl."""
    measured = [r for r in rows if r.get("transfer_ms") is not None]
    if not measured:
        return ""
    head = "| mode | backend | N | comm ms | arrival wait ms | transfer ms | straggler wait (gap part) |"
    lines = [head, "|" + "---|" * 7]
    lines += [f"| {r['mode']} | {r['backend']} | {r['layout']} | {r['comm_ms']:.1f} | {r['arrival_wait_ms']:.1f} "
              f"| {r['transfer_ms']:.1f} | {r['gap']['wait']:+.1f} |" for r in measured]
    return "\n".join(lines)


def answer_in_words(rows: list[dict[str, Any]]) -> str:
    """One sentence per (mode, backend, N > 1): how far from ideal, and the largest cause."""
    out = []
    for r in rows:
        if r["world"] == 1:
            continue
        gap = r["gap"]
        biggest = max(gap, key=lambda p: gap[p])
        ideal = "T/N" if r["mode"] == "strong" else "T"
        out.append(
            f"- {r['mode']}, {r['backend']}, N={r['layout']}: {r['step_ms']:.0f} ms against an ideal {ideal} of "
            f"{r['ideal_ms']:.0f} ms (efficiency {_pct(r['efficiency'])}); of the {r['gap_ms']:+.0f} ms gap, "
            f"{PART_TITLES[biggest]} is the largest part ({gap[biggest]:+.0f} ms; exposed comm {gap['exposed']:+.0f}, "
            f"extra compute {gap['compute']:+.0f}, straggler wait {gap['wait']:+.0f}).")
    return "\n".join(out)


def write_report(out_dir: Path, rows: list[dict[str, Any]], results: list[RunResult], meta: dict[str, Any],
                 notes: Sequence[str] = ()) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {"provenance": meta["provenance"], "meta": meta, "rows": rows, "runs": [asdict(r) for r in results]}
    (out_dir / "results.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    plots = plot_report(rows, out_dir)
    md = [f"# Scaling study: {', '.join(meta.get('backends', []))} at N = {meta.get('world_sizes', '')}", "",
          readme_header(meta["provenance"]), "",
          f"Config: `{meta.get('config')}`; {meta.get('steps')} steps per run, the first {meta.get('warmup')} left out; "
          f"{meta.get('threads_per_rank')} thread(s) per rank (OMP_NUM_THREADS). Strong scaling: global batch "
          f"{meta.get('global_batch')} sequences of {meta.get('seq_len')} tokens split over the ranks; weak scaling: "
          f"{meta.get('per_rank_batch')} sequences per rank.", ""]
    md += [f"- {n}" for n in notes]
    md += ["", "## Results (medians over steps)", "", markdown_table(rows), "",
           "Step = the step period (time between two steps' ends, mean over ranks; what tokens/s sees); slowest rank = "
           "median of the longest rank's own step (start to end), larger when the ranks' step boundaries drift apart. "
           "Gap = step − ideal (strong: T1/N, weak: T1); its parts (extra compute, exposed comm, straggler wait, data, "
           "other) add up to it. Definitions: docs/scaling.md.", ""]
    split = comm_split_table(rows)
    if split:
        md += ["## Collective time: arrival wait vs transfer (measured)", "", split, "",
               "Per step, summed over the step's collectives, mean over ranks (collectives_split.jsonl): arrival wait = "
               "time a rank sat in a collective before the last rank issued it; transfer = the rest. The wait counts "
               "whether or not compute ran meanwhile, so it is not a part of the gap; see docs/scaling.md.", ""]
    md += ["## The answer", "", answer_in_words(rows), "",
           "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + ["", "Raw: `results.json`.", ""]
    (out_dir / "report.md").write_text("\n".join(md))
