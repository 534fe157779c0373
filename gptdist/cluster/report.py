"""Intra- vs inter-node comm_bench sweeps in one plot, each shaped link's rate drawn as a line, and a table
of how close the large-message bus bandwidth and the α–β fit's β come to that rate."""

from __future__ import annotations

import json
from pathlib import Path

from gptdist.studies import alphabeta
from gptdist.cluster.netns import parse_rate
from gptdist.errors import ConfigError


def parse_series(spec: str) -> tuple[str, Path, int | None]:
    """'LABEL=RESULTS[@RATE]' -> (label, results.json path, link rate in bit/s or None)."""
    if "=" not in spec:
        raise ConfigError(f"{spec!r}: write LABEL=RESULTS_DIR[@RATE], e.g. 'inter-node=runs/cb/inter@1gbit'")
    label, rest = spec.split("=", 1)
    path, rate = (rest.rsplit("@", 1) + [None])[:2] if "@" in rest else (rest, None)
    results = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
    if not results.is_file():
        raise ConfigError(f"no results.json at {path}")
    return label, results, parse_rate(rate) if rate else None


def link_summary(op: str, label: str, results: Path, rate_bit: int | None) -> dict:
    rows = [r for r in json.loads(results.read_text())["results"] if r["op"] == op]
    if not rows:
        raise ConfigError(f"{results} has no {op} rows")
    n = rows[0]["world_size"]
    big = max(rows, key=lambda r: r["size_bytes"])
    # The fit over the bandwidth-bound half of the sweep (sizes >= 1 MiB): the small sizes ride the tbf
    # bucket (they leave faster than the rate) and would bend β.
    large = [r for r in rows if r["size_bytes"] >= 1 << 20] or rows
    fit = alphabeta.fit_op(op, n, [r["size_bytes"] for r in large], [r["time_us"] for r in large])
    out = {"label": label, "results": str(results), "op": op, "world_size": n, "nodes": rows[0].get("nodes", 1),
           "largest_bytes": big["size_bytes"], "busbw_gbps_largest": big["busbw_gbps"],
           "fit_min_bytes": fit.min_bytes, "fit_alpha_us": fit.alpha_us, "fit_busbw_gbps": fit.busbw_gbps}
    if rate_bit:
        link_gbps = rate_bit / 8e9  # GB/s, as comm_bench reports
        out.update(link_rate_bit=rate_bit, link_gbps=link_gbps, busbw_over_rate=big["busbw_gbps"] / link_gbps,
                   fit_busbw_over_rate=fit.busbw_gbps / link_gbps)
    return out


def plot(series: list[tuple[str, Path, int | None]], out: Path, op: str = "all_reduce", title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, results, rate_bit in series:
        rows = sorted((r for r in json.loads(results.read_text())["results"] if r["op"] == op), key=lambda r: r["size_bytes"])
        (line,) = ax.plot([r["size_bytes"] for r in rows], [r["busbw_gbps"] for r in rows], marker="o", markersize=3,
                          label=f"{label} (n={rows[0]['world_size']}, {rows[0].get('nodes', 1)} node(s))")
        if rate_bit:
            ax.axhline(rate_bit / 8e9, color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"link rate {rate_bit / 1e9:g} Gbit/s = {rate_bit / 8e9:.3f} GB/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(title or f"{op}: intra-node vs inter-node (tc tbf-shaped link, no added latency)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{op}_intra_vs_inter.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
