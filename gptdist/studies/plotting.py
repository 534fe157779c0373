"""Figures of the studies, and the small helpers they share (a headless pyplot, per-backend panel rows)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any


def _wrapped(title: str, fig, points: float) -> str:
    """The title broken into lines that fit the figure's width (about 0.55 em per character)."""
    return textwrap.fill(title, max(20, int(fig.get_figwidth() * 72 / (0.55 * points))))


def _save(fig, path: Path) -> Path:
    """Save with the canvas grown to whatever sticks out (a long title, a legend below the panels)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def _log_ticks(ax) -> None:
    """Label a log y axis at 1-2-5 steps (every integer step when that gives fewer than three), so a narrow
    range still shows several labelled ticks rather than one or two powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    low, high = ax.get_ylim()
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for steps in ((1, 2, 5), range(1, 10)):
        ticks = [m * 10.0 ** e for e in decades for m in steps if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 3:
            break
    ax.set_ylim(low, high)  # the ticks are for these limits
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _save_backend_panels(fig, axes, title: str, path: Path) -> Path:
    """Finish a row of per-backend panels (ms per step on the y axis): shared legend below, title, save."""
    axes[0][0].set_ylabel("ms per step (median)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4 if len(axes[0]) > 1 else 2, fontsize=8)
    fig.suptitle(_wrapped(title, fig, 12))
    fig.tight_layout(rect=(0, 0.07 if len(axes[0]) > 1 else 0.12, 1, 1))
    return _save(fig, path)


def plot_report(rows: list[dict[str, Any]], out_dir: Path, predicted: bool = False, title_note: str = "") -> list[Path]:
    """efficiency_<mode>.png, breakdown_<mode>.png, throughput_<mode>.png (marked PREDICTED when simulated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = "PREDICTED " if predicted else ""
    paths = []
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        backends = sorted({r["backend"] for r in mine})
        # One x position per layout, ordered by world size: "4" and "2x2" are both 4 ranks but separate points.
        layouts = sorted({(r["world"], r["layout"]) for r in mine}, key=lambda wl: (wl[0], "x" in wl[1], wl[1]))
        x_of = {name: i for i, (_, name) in enumerate(layouts)}
        xs, names = list(range(len(layouts))), [name for _, name in layouts]

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [1.0] * len(xs), "k--", label="ideal")
        for b in backends:
            pts = sorted((x_of[r["layout"]], r["efficiency"]) for r in mine if r["backend"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=b)
        ax.set_xticks(xs, names)
        ax.set_ylim(0, max(1.1, max(r["efficiency"] for r in mine) * 1.1))
        ax.set_xlabel("ranks N")
        ax.set_ylabel("efficiency")
        ax.set_title(_wrapped(f"{tag}{mode} scaling efficiency{title_note}", fig, 9), fontsize=9)
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"efficiency_{mode}.png"))

        fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 4), sharey=True, squeeze=False)
        for ax, b in zip(axes[0], backends):
            rs = sorted((r for r in mine if r["backend"] == b), key=lambda r: x_of[r["layout"]])
            x = range(len(rs))
            compute = [r["parts"]["compute"] for r in rs]
            exposed = [r["parts"]["exposed"] + r["parts"]["wait"] for r in rs]
            other = [r["parts"]["data"] + r["parts"]["other"] for r in rs]
            ax.bar(x, compute, label="compute")
            ax.bar(x, exposed, bottom=compute, label="exposed comm + wait")
            ax.bar(x, other, bottom=[c + e for c, e in zip(compute, exposed)], label="data + other")
            ax.plot(x, [r["ideal_ms"] for r in rs], "k_", markersize=30, markeredgewidth=2, label="ideal step")
            ax.set_xticks(list(x), [r["layout"] for r in rs])
            ax.set_xlabel("ranks N")
            ax.set_title(b)
        # The stack's top, not the autoscale, sets the height: a negative `other` drawn down from the top of
        # the stack would otherwise let the bar above it run off the axis.
        tops = [r["parts"]["compute"] + r["parts"]["exposed"] + r["parts"]["wait"]
                + max(0.0, r["parts"]["data"] + r["parts"]["other"]) for r in mine] + [r["ideal_ms"] for r in mine]
        axes[0][0].set_ylim(0, 1.08 * max(tops))
        paths.append(_save_backend_panels(fig, axes, f"{tag}{mode} scaling: where a step's time goes{title_note}",
                                          out_dir / f"breakdown_{mode}.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        for b in backends:
            rs = sorted((r for r in mine if r["backend"] == b), key=lambda r: x_of[r["layout"]])
            base = rs[0]["tokens_per_s"] if rs and rs[0]["world"] == 1 else None
            line, = ax.plot([x_of[r["layout"]] for r in rs], [r["tokens_per_s"] for r in rs], "o-", label=b)
            if base:
                ideal = [base * r["world"] for r in rs]  # N ranks: N times the tokens/s, in either mode
                ax.plot([x_of[r["layout"]] for r in rs], ideal, ":", color=line.get_color(), label=f"{b} ideal")
        ax.set_yscale("log")
        _log_ticks(ax)
        ax.set_xticks(xs, names)
        ax.set_xlabel("ranks N")
        ax.set_ylabel("tokens / s (all ranks)")
        ax.set_title(_wrapped(f"{tag}{mode} scaling: throughput{title_note}", fig, 9), fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"throughput_{mode}.png"))
    return paths


def _backend_panels_per_mode(rows: list[dict[str, Any]]):
    """For each mode of `rows`: (mode, its rows, fig, axes, [(ax, backend, that backend's rows), ...]), one
    panel per backend in a row, sharing the y axis (the predicted-vs-measured figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        backends = sorted({r["backend"] for r in mine})
        fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 4), sharey=True, squeeze=False)
        panels = [(ax, b, [r for r in mine if r["backend"] == b]) for ax, b in zip(axes[0], backends)]
        yield mode, mine, fig, axes, panels


def plot_predicted_vs_measured(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """validation_<mode>.png: per backend, the measured step (bar, p25–p75 whisker) and the predicted one
    (marker, error in % above it) at each layout. rows: `launch/simulate.py validate`'s rows."""
    paths = []
    for mode, mine, fig, axes, panels in _backend_panels_per_mode(rows):
        for ax, b, rs in panels:  # rs in the study's order (by world size)
            x = list(range(len(rs)))
            measured = [r["measured_ms"] for r in rs]
            spread = [[m - r["measured_p25"] for m, r in zip(measured, rs)], [r["measured_p75"] - m for m, r in zip(measured, rs)]]
            ax.bar(x, measured, color="#9ecae1", yerr=spread, capsize=3, label="measured (p25–p75)")
            ax.plot(x, [r["predicted_ms"] for r in rs], "kD", label="predicted")
            for xi, r in zip(x, rs):
                ax.annotate(f"{100 * r['error']:+.1f}%", (xi, max(r["predicted_ms"], r["measured_p75"])),
                            textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
            ax.set_xticks(x, [r["layout"] for r in rs])
            ax.set_xlabel("ranks N")
            ax.set_title(b)
        # room above the tallest whisker or marker for its error label
        axes[0][0].set_ylim(0, 1.12 * max(max(r["predicted_ms"], r["measured_p75"]) for r in mine))
        paths.append(_save_backend_panels(fig, axes, f"{mode} scaling: predicted vs measured step",
                                          out_dir / f"validation_{mode}.png"))
    return paths


def plot_repeats(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """repeats_<mode>.png: per backend, at each multi-rank layout the measured step of every repeat (bar: the
    mean, whisker: min to max) and each repeat's prediction (markers), the mean error above.
    rows: `simulator.repeats.error_spread`'s rows."""
    paths = []
    for mode, mine, fig, axes, panels in _backend_panels_per_mode(rows):
        for ax, b, rs in panels:
            x = list(range(len(rs)))
            mean = [sum(r["measured_ms"]) / len(r["measured_ms"]) for r in rs]
            spread = [[m - min(r["measured_ms"]) for m, r in zip(mean, rs)], [max(r["measured_ms"]) - m for m, r in zip(mean, rs)]]
            ax.bar(x, mean, color="#9ecae1", yerr=spread, capsize=3, label="measured (mean, min–max over repeats)")
            for xi, r in zip(x, rs):
                ax.plot([xi] * len(r["predicted_ms"]), r["predicted_ms"], "kD", markersize=4,
                        label="predicted (each repeat)" if xi == 0 else None)
                top = max(max(r["predicted_ms"]), max(r["measured_ms"]))
                ax.annotate(f"{100 * r['mean']:+.1f}%", (xi, top), textcoords="offset points", xytext=(0, 5),
                            ha="center", fontsize=8)
            ax.set_xticks(x, [r["layout"] for r in rs])
            ax.set_xlabel("layout (N, or nodes x ranks per node)")
            ax.set_title(b)
        axes[0][0].set_ylim(0, 1.12 * max(max(max(r["predicted_ms"]), max(r["measured_ms"])) for r in mine))
        n = max(len(r["errors"]) for r in mine)
        paths.append(_save_backend_panels(fig, axes, f"{mode} scaling: predicted vs measured step, {n} repeat(s)",
                                          out_dir / f"repeats_{mode}.png"))
    return paths


def replot_results(folder: Path, title_note: str = "") -> tuple[list[Path], list[str]]:
    """Draw a results folder's figures again from its raw JSON, in place: a scaling study's results.json,
    a prediction's predicted.json (marked PREDICTED; `title_note` as given to `simulate.py --title`), a
    validation's validation.json. Numbers are not recomputed. Returns (figures written, files skipped and why)."""
    import json

    from gptdist.errors import ConfigError

    folder = Path(folder)
    paths: list[Path] = []
    skipped: list[str] = []
    if (folder / "results.json").is_file():
        paths += plot_report(json.loads((folder / "results.json").read_text())["rows"], folder, title_note=title_note)
    if (folder / "predicted.json").is_file():
        rows = json.loads((folder / "predicted.json").read_text())["rows"]
        paths += plot_report(rows, folder, predicted=True, title_note=title_note)
    if (folder / "validation.json").is_file():
        rows = json.loads((folder / "validation.json").read_text())["rows"]
        if all("layout" in r for r in rows):
            paths += plot_predicted_vs_measured(rows, folder)
        else:
            skipped.append(f"{folder / 'validation.json'}: written before layouts (no `layout` per row)")
    if not paths:
        raise ConfigError(f"{folder}: no results.json, predicted.json or validation.json to plot")
    return paths, skipped
