"""The ladder's report: a markdown table and notes, and a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from gptdist.provenance import readme_header


def _mib(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _change_text(row: dict) -> str:
    if row["change"] is None:
        return "baseline"
    if row.get("sweep"):
        return f"`{row['change']['key']}={row['change']['value']}` (best of {len(row['sweep']['points'])}, swept)"
    return f"`{row['change']['key']}={row['change']['value']}`"


def _row_head(i: int, r: dict) -> str:
    """The first three cells of a rung's table row: index, name (side rungs say where from), change."""
    name = r["name"] + (f" (side, from {r['parent']})" if r["side"] else "")
    return f"| {i} | {name} | {_change_text(r)} |"


def _x(s: Optional[dict]) -> str:
    return "" if s is None else f"{s['tokens_per_s_ratio']:.2f}x"


def to_markdown(result: dict[str, Any], notes: list[str] = ()) -> str:
    hw, o = result["hardware"], result["options"]
    lines = [
        "# Optimisation ladder",
        "",
        readme_header(result["provenance"]).rstrip("\n"),
        f"- ladder: `{result['ladder_file']}`; device {hw.get('device')}, CPUs usable {hw['cpus_usable']} of "
        f"{hw['cpu_count']}, torch threads {hw['torch_threads']}",
        f"- timing: {o['warmup']} warm-up steps per rung, then {o['rounds']} round(s) x {o['steps']} timed steps, "
        + ("one rung at a time" if o["sequential"] else "rungs interleaved round by round (order flipped each round)"),
        f"- MFU: {result['mfu_definition']}"
        + ("" if result["peak_flops_bf16"] else " (no peak known for this device: n/a)"),
        f"- speed-up: {result['speedup_definition']}",
        f"- memory: {result['memory_definition']}",
        "",
        "| # | rung | change | B | median ms | p10-p90 ms | tokens/s | MFU | peak mem | vs previous | vs baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["rungs"]):
        if r["status"] != "ok":
            lines.append(f"{_row_head(i, r)} | {r['status']}: {r['reason']} | | | | | | |")
            continue
        m = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        prev = _x(r["speedup_vs_previous"])
        if r["speedup_vs_previous"] and r["speedup_vs_previous"]["vs"] != r["parent"]:
            prev += f" (vs {r['speedup_vs_previous']['vs']})"
        lines.append(
            f"{_row_head(i, r)} {r['batch_size']} | {r['step_ms_median']:.1f} | "
            f"{r['step_ms_p10']:.1f}-{r['step_ms_p90']:.1f} | {r['tokens_per_s']:,.0f} | {m} | "
            f"{_mib(r['memory'].get('peak_bytes'))} | {prev} | {_x(r['speedup_vs_baseline'])} |"
        )
    methods = {r["memory"].get("method") for r in result["rungs"] if r["status"] == "ok"}
    lines += ["", "Memory method: " + "; ".join(sorted(m for m in methods if m)) + "."]

    trade = [r for r in result["rungs"] if r["side"] and r["status"] == "ok" and r["speedup_vs_previous"]]
    if trade:
        lines += ["", "## Side rungs: what they trade", ""]
        for r in trade:
            prev = next(x for x in result["rungs"] if x["name"] == r["speedup_vs_previous"]["vs"])
            ratio = r["speedup_vs_previous"]["tokens_per_s_ratio"]
            dmem = r["memory"].get("peak_change_vs_previous_bytes")
            mem_text = "memory n/a" if dmem is None else (
                f"peak memory {_mib(prev['memory']['peak_bytes'])} -> {_mib(r['memory']['peak_bytes'])} "
                f"({'saves' if dmem < 0 else 'costs'} {_mib(abs(dmem))}, {100 * dmem / prev['memory']['peak_bytes']:+.0f} %)")
            step_text = (f"step {prev['step_ms_median']:.1f} -> {r['step_ms_median']:.1f} ms at B {prev['batch_size']} -> "
                         f"{r['batch_size']}")
            lines.append(f"- **{r['name']}** vs {prev['name']}: {mem_text}; {step_text}; throughput x{ratio:.2f} "
                         f"({100 * (ratio - 1):+.0f} %, per round {r['speedup_vs_previous']['per_round_min']:.2f}"
                         f"-{r['speedup_vs_previous']['per_round_max']:.2f}).")

    profiled = [r for r in result["rungs"] if r.get("profile")]
    if profiled:
        lines += ["", "## Profiles: where each rung's step goes, and what changed", ""]
        for r in profiled:
            p = r["profile"]
            busy = f"; GPU busy {100 * p['gpu_busy_fraction']:.0f} % of the wall time" if "gpu_busy_fraction" in p else ""
            lines += [f"### {r['name']}", "",
                      f"{p['kind']}, {p['steps']} profiled steps ({p['step_ms_under_profiler']:.1f} ms per step "
                      f"under the profiler{busy})" + (f"; trace `{p['trace']}`" if p["trace"] else "") + ".", "",
                      "| op | ms/step | share |", "|---|---:|---:|"]
            lines += [f"| `{_clip(op['name'])}` | {op['ms_per_step']:.2f} | {100 * op['share']:.1f} % |" for op in p["top"]]
            if "vs_previous" in p:
                d = p["vs_previous"]
                fmt = lambda rows: ", ".join(f"`{_clip(x['name'], 60)}` {x['before_ms']:.2f} -> {x['after_ms']:.2f}"
                                             for x in rows) or "none"
                lines += ["", f"vs {r['compare_to']}: faster or gone: {fmt(d['faster'])}.",
                          f"Slower or new: {fmt(d['slower'])}."]
            lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _clip(text: str, n: int = 80) -> str:
    text = text.replace("|", "/").replace("`", "'")
    return text if len(text) <= n else text[: n - 3] + "..."


def plot(result: dict[str, Any], path: Path) -> None:
    """Bar chart: median step ms per rung with p10-p90 whiskers, labelled with the speed-up over the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rungs"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.8))
    top = max([r["step_ms_p90"] for r in rows if r["status"] == "ok"] or [1.0])
    for i, r in enumerate(rows):
        if r["status"] != "ok":
            ax.text(i, top * 0.02, f"{r['status']}\n{'needs CUDA' if r['needs'] == 'cuda' and r['status'] == 'skipped' else ''}",
                    ha="center", va="bottom", fontsize=8, color="grey", rotation=90)
            continue
        med = r["step_ms_median"]
        ax.bar(i, med, color="#d9822b" if r["side"] else "#2b6cb0", hatch="//" if r["side"] else None,
               yerr=[[med - r["step_ms_p10"]], [r["step_ms_p90"] - med]], capsize=4, ecolor="black")
        s = r["speedup_vs_baseline"]
        label = f"{s['tokens_per_s_ratio']:.2f}x" if s else "1.00x"
        ax.text(i, r["step_ms_p90"] + top * 0.02, label + (f"\nB={r['batch_size']}" if r["side"] else ""),
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median step time, ms (whiskers p10-p90)")
    ax.set_ylim(0, top * 1.25)
    hw = result["hardware"]
    where = hw.get("gpu_model") or f"{hw['cpu_model']} ({hw['torch_threads']} threads)"
    ax.set_title(f"Optimisation ladder on {where}\nlabels: throughput (tokens/s) over the baseline; "
                 "hatched: side rungs", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# The distributed ladder (`world: N`, gptdist/studies/ladder/dist.py)


def _bytes_text(per_op: dict[str, float]) -> str:
    return ", ".join(f"{op} {b / 1024:,.1f}" for op, b in sorted(per_op.items())) or "none"


def dist_to_markdown(result: dict[str, Any], notes: list[str] = ()) -> str:
    lines = [
        f"# Distributed ladder at {result['world_size']} ranks",
        "",
        readme_header(result["provenance"]).rstrip("\n"),
        f"- ladder: `{result['ladder_file']}`; {result['options']['steps']} timed steps per rung (after the "
        "instrument's skipped first steps), one rung after the other in one torchrun job",
        f"- bytes (KiB per rank per step): {result['bytes_definition']}",
        f"- memory: {result['memory_definition']}",
        f"- speed-up: {result['speedup_definition']}",
        "",
        "| # | rung | change | step ms median (p95) | exposed comm ms | recorder KiB/step | analytic KiB/step "
        "| storage KiB rank 0 | loss after K | vs previous | memory saved vs previous |",
        "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["rungs"]):
        if r["status"] != "ok":
            lines.append(f"{_row_head(i, r)} {r['status']}: {r['reason']} | | | | | | | |")
            continue
        s, e = r["step_ms"], r["exposed_ms"]
        prev = f"{r['speedup_vs_previous']:.2f}x" if "speedup_vs_previous" in r else ""
        if prev and r["compare_to"] != r["parent"]:
            prev += f" (vs {r['compare_to']})"
        saved = f"{r['memory_saving_vs_previous_bytes'] / 1024:,.1f} KiB" if "memory_saving_vs_previous_bytes" in r else ""
        lines.append(
            f"{_row_head(i, r)} {s['median']:.1f} ({s['p95']:.1f}) | {e['median']:.1f} | "
            f"{_bytes_text(r['bytes_per_step'])} | {_bytes_text(r['analytic_bytes_per_step'])} | "
            f"{r['memory'][0]['total'] / 1024:,.1f} | {r['final_loss']:.4f} | {prev} | {saved} |")
    for r in result["rungs"]:
        if r.get("sweep"):
            lines += ["", *_sweep_lines(r)]
    lines += _comm_dtype_lines(result["rungs"])
    lines += _zero2_vs_fsdp_lines(result["rungs"])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _sweep_lines(r: dict[str, Any]) -> list[str]:
    sw = r["sweep"]
    also = f" (also `{'`, `'.join(sw['also'])}`)" if sw["also"] else ""
    lines = [f"## Sweep: {r['name']}", "",
             f"`{sw['key']}`{also} over {', '.join(str(p['value']) for p in sw['points'])}; kept: **{sw['chosen']}** "
             f"({sw['rule']}), carried into every later rung. The kept median is the lowest of "
             f"{len(sw['points'])} noisy ones, so it flatters the rung a little.", "",
             "| value | step ms median (p95) | exposed comm ms | recorder KiB/step | loss after K | kept |",
             "|---:|---:|---:|---|---:|---|"]
    for p in sw["points"]:
        lines.append(f"| {p['value']} | {p['step_ms']['median']:.1f} ({p['step_ms']['p95']:.1f}) | "
                     f"{p['exposed_ms']['median']:.1f} | {_bytes_text(p['bytes_per_step'])} | {p['final_loss']:.4f} | "
                     f"{'yes' if p['value'] == sw['chosen'] else ''} |")
    return lines


def _comm_dtype_lines(rows: list[dict[str, Any]]) -> list[str]:
    """For a rung that changes the gradient communication dtype: its loss after K steps against the previous
    rung's (the same run with the other dtype) and the gradient bytes, recorder and analytic, side by side."""
    by_name = {r["name"]: r for r in rows}
    lines = []
    for r in rows:
        prev = by_name.get(r.get("compare_to") or "")
        if (r["status"] != "ok" or not prev or prev["status"] != "ok" or not r["change"]
                or not r["change"]["key"].endswith(".reduce_dtype")):
            continue
        lines += ["", f"## Gradient communication in {r['change']['value']}: {r['name']} vs {prev['name']}", "",
                  f"Loss after {len(r['losses'])} steps: {r['final_loss']:.6f} vs {prev['final_loss']:.6f} "
                  f"(difference {r['final_loss'] - prev['final_loss']:+.2e}).", "",
                  "| collective | recorder KiB/step | was | ratio | analytic KiB/step | was |", "|---|---:|---:|---:|---:|---:|"]
        for op in sorted(set(r["bytes_per_step"]) | set(prev["bytes_per_step"])):
            now, was = r["bytes_per_step"].get(op, 0.0), prev["bytes_per_step"].get(op, 0.0)
            if max(now, was) < 1024:  # the loss and the gradient norm: bytes, not KiB
                continue
            ratio = f"{now / was:.3f}" if was else ""
            lines.append(f"| {op} | {now / 1024:,.1f} | {was / 1024:,.1f} | {ratio} | "
                         f"{r['analytic_bytes_per_step'].get(op, 0.0) / 1024:,.1f} | "
                         f"{prev['analytic_bytes_per_step'].get(op, 0.0) / 1024:,.1f} |")
    return lines


def _zero2_vs_fsdp_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The handwritten ZeRO-2 beside FSDP2 without reshard: the same model, batch, steps, data and fp32
    communication (the issue's comparison at equal settings), whichever rungs they are in the ladder."""
    def find(backend: str, key: str, value: Any, default: Any) -> Optional[dict[str, Any]]:
        return next((r for r in rows if r["status"] == "ok" and r["settings"].get("backend") == backend
                     and r["settings"].get(key, default) == value
                     and r["settings"].get(f"parallel.{backend}.reduce_dtype", "fp32") == "fp32"), None)

    zero2 = find("zero", "parallel.zero.stage", 2, default=2)  # the config's defaults where a ladder sets none
    fsdp = find("fsdp", "parallel.fsdp.reshard_after_forward", False, default=True)
    if not zero2 or not fsdp:
        return []
    lines = ["", f"## Handwritten ZeRO-2 ({zero2['name']}) vs FSDP2 without reshard ({fsdp['name']})", "",
             "Same model, batch, steps, data and fp32 gradient communication; the backend is the difference.", "",
             "| | step ms median (p95) | exposed comm ms | recorder KiB/step | storage KiB rank 0 | loss after K |",
             "|---|---:|---:|---|---:|---:|"]
    for r in (zero2, fsdp):
        lines.append(f"| {r['name']} | {r['step_ms']['median']:.1f} ({r['step_ms']['p95']:.1f}) | "
                     f"{r['exposed_ms']['median']:.1f} | {_bytes_text(r['bytes_per_step'])} | "
                     f"{r['memory'][0]['total'] / 1024:,.1f} | {r['final_loss']:.4f} |")
    lines.append("")
    lines.append(f"ZeRO-2 / FSDP2 step time: {zero2['step_ms']['median'] / fsdp['step_ms']['median']:.2f}.")
    return lines


def dist_plot(result: dict[str, Any], path: Path) -> None:
    """Two panels per rung: median step ms (exposed communication hatched) and storage MiB on rank 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rungs"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(rows) + 3), 4.8))
    for i, r in enumerate(rows):
        if r["status"] != "ok":
            for ax in (ax_t, ax_m):
                ax.text(i, 0, r["status"], ha="center", va="bottom", fontsize=8, color="grey", rotation=90)
            continue
        step, exposed = r["step_ms"]["median"], min(r["exposed_ms"]["median"], r["step_ms"]["median"])
        ax_t.bar(i, step - exposed, color="#2b6cb0")
        ax_t.bar(i, exposed, bottom=step - exposed, color="#d9822b", hatch="//")
        ax_m.bar(i, r["memory"][0]["total"] / 2**20, color="#2f855a")
    for ax, label in ((ax_t, "median step ms (hatched: exposed comm)"), (ax_m, "storage per rank, MiB (rank 0)")):
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
    fig.suptitle(f"Distributed ladder, {result['world_size']} ranks ({result['hardware'].get('cpu_model', '')})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
