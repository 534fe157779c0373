"""Efficiency vs link rate: the scaling study run at several link rates of the emulated cluster (one
results.json per rate and setting, e.g. sweep/250mbit_overlap_true/), gathered into one table and plot,
measured and, where a simulator validation.json sits beside it, predicted."""

from __future__ import annotations

import json
from pathlib import Path

from gptdist.cluster.netns import parse_rate


def sweep_points(studies: dict[str, Path], layout: str, backend: str = "manual") -> list[dict]:
    """label "RATE_SETTING" (e.g. "250mbit_overlap_true") -> that study's results.json; one point per study:
    the strong-scaling row of `layout` for `backend` (rate in Gbit/s, setting, step ms, efficiency)."""
    points = []
    for label, path in studies.items():
        rate, _, setting = label.partition("_")
        rows = json.loads(Path(path).read_text())["rows"]
        row = next((r for r in rows if r["layout"] == layout and r["backend"] == backend and r["mode"] == "strong"), None)
        if row is None:
            continue
        points.append({"label": label, "rate_gbit": parse_rate(rate) / 1e9, "setting": setting,
                       "step_ms": row["step_ms"], "efficiency": row["efficiency"],
                       "exposed_ms": row["parts"]["exposed"] + row["parts"]["wait"], "comm_ms": row["comm_ms"]})
    return sorted(points, key=lambda p: (p["setting"], p["rate_gbit"]))


def markdown(points: list[dict]) -> str:
    lines = ["| link | setting | step ms | efficiency | exposed comm + wait ms | comm ms |", "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['rate_gbit']:g} Gbit/s | {p['setting']} | {p['step_ms']:.1f} | {100 * p['efficiency']:.0f}% | "
                     f"{p['exposed_ms']:.1f} | {p['comm_ms']:.1f} |")
    return "\n".join(lines)


def plot(points: list[dict], out: Path, title: str, predicted: list[dict] = ()) -> Path:
    """Efficiency vs link rate (log x), one line per setting; predicted points (same keys) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, pts, style in (("measured", points, "-o"), ("predicted", predicted, "--x")):
        for setting in sorted({p["setting"] for p in pts}):
            sel = [p for p in pts if p["setting"] == setting]
            ax.plot([p["rate_gbit"] for p in sel], [100 * p["efficiency"] for p in sel], style, label=f"{setting}, {kind}")
    ax.set_xscale("log")
    rates = sorted({p["rate_gbit"] for p in points})
    ax.minorticks_off()
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_xlabel("link rate per node (Gbit/s, tc tbf)")
    ax.set_ylabel("strong-scaling efficiency (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "efficiency_vs_link_rate.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
