"""Plots and a markdown report of a finished (or partly finished) sweep: <out>/results.json -> fits.json,
isoflop.png, optimal.png, loss_vs_compute.png, loss_curves.png and report.md (PNG + SVG for each figure)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from gptdist.studies.run_plots import load_run, plot_runs
from gptdist.studies.scaling_laws import fits
from gptdist.studies.scaling_laws.plan import SweepError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, to: Path, name: str) -> str:
    for suffix in (".png", ".svg"):
        fig.savefig(to / f"{name}{suffix}", dpi=120)
    _plt().close(fig)
    return f"{name}.png"


def plot_isoflop(records: list[dict], result: dict, to: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    budgets = sorted({r["budget"] for r in records})
    colors = dict(zip(budgets, plt.cm.plasma(np.linspace(0, 0.85, len(budgets)))))
    parabolas = {p["budget"]: p for p in result["isoflop"]["parabolas"]}
    for budget in budgets:
        done = [r for r in records if r["budget"] == budget and r["status"] == "done" and r["val_loss"] is not None]
        n = np.array([r["params"] for r in done], dtype=float)
        ax.plot(n, [r["val_loss"] for r in done], "o", color=colors[budget], label=f"C = {budget:.1e}")
        if budget in parabolas and len(n):
            p = parabolas[budget]
            x = np.linspace(np.log(n.min()), np.log(n.max()), 100)
            ax.plot(np.exp(x), np.polyval(p["coeffs"], x), "-", color=colors[budget], lw=1)
            ax.plot(p["n_opt"], p["loss_min"], "*", ms=14, color=colors[budget], mec="k")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (flops.py's count)")
    ax.set_ylabel("final validation loss")
    ax.set_title("IsoFLOP curves (star: parabola minimum)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, to, "isoflop")


def plot_optimal(records: list[dict], result: dict, to: Path) -> str:
    """N_opt and D_opt against C: IsoFLOP minima and their power law, the lowest-loss run of each budget
    (an upper bound on N_opt when the minimum is at the smallest size), the parametric frontier when the
    bootstrap constrains it, and Chinchilla's rule of thumb (D = 20 N, so N = sqrt(C / 120))."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    done = [r for r in records if r["status"] == "done" and r.get("val_loss") is not None]
    parabolas = result["isoflop"]["parabolas"]
    params = result["parametric"].get("params")
    c_line = np.geomspace(min(r["flops"] for r in records) / 1.5, max(r["flops"] for r in records) * 1.5, 50)
    best = [min((r for r in done if r["budget"] == b), key=lambda r: r["val_loss"]) for b in sorted({r["budget"] for r in done})]
    for ax, key, run_key, label in ((axes[0], "n_opt", "params", "N_opt"), (axes[1], "d_opt", "tokens", "D_opt")):
        ax.plot([r["flops"] for r in best], [r[run_key] for r in best], "s", mfc="none", color="k",
                label="lowest-loss run of each budget")
        if parabolas:
            c_points = np.array([p["flops"] for p in parabolas])
            y = np.array([p[key] for p in parabolas])
            ax.plot(c_points, y, "o", color="C0", label=f"{label}, IsoFLOP minima")
            laws = result["isoflop"]["power_laws"]
            if laws:
                exp, k = (laws["a"], laws["k_N"]) if key == "n_opt" else (laws["b"], laws["k_D"])
                ax.plot(c_line, k * c_line**exp, "-", color="C0", label=f"IsoFLOP fit: C^{exp:.2f}")
            # Published exponents, drawn through our smallest budget's minimum: compare slopes, not levels.
            for (name, exp_n), style in zip((("Chinchilla", 0.50), ("Kaplan", 0.73)), ("--", ":")):
                exp = exp_n if key == "n_opt" else 1 - exp_n
                ax.plot(c_line, y[0] * (c_line / c_points[0]) ** exp, style, color="gray", label=f"{name} slope C^{exp:.2f}")
        rule_n = np.sqrt(c_line / 120)
        ax.plot(c_line, rule_n if key == "n_opt" else 20 * rule_n, "--", color="C2", label="Chinchilla rule D = 20N")
        if params and "G" in params and not _unconstrained(result["parametric"]):
            n_opt, d_opt = fits.frontier(params, c_line)
            ax.plot(c_line, n_opt if key == "n_opt" else d_opt, "-", color="C3",
                    label=f"parametric fit (C=6ND): C^{params['a' if key == 'n_opt' else 'b']:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, to, "optimal")


def plot_loss_vs_compute(records: list[dict], result: dict, to: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    shapes = sorted({r["shape"]["name"] for r in records}, key=lambda s: min(r["params"] for r in records if r["shape"]["name"] == s))
    colors = dict(zip(shapes, plt.cm.viridis(np.linspace(0, 0.9, len(shapes)))))
    for shape in shapes:
        done = sorted((r for r in records if r["shape"]["name"] == shape and r["status"] == "done" and r["val_loss"] is not None),
                      key=lambda r: r["flops"])
        ax.plot([r["flops"] for r in done], [r["val_loss"] for r in done], "o-", color=colors[shape], lw=1, ms=4,
                label=f"{shape} (N={done[0]['params']:,})" if done else shape)
    parabolas = result["isoflop"]["parabolas"]
    if parabolas:
        ax.plot([p["flops"] for p in parabolas], [p["loss_min"] for p in parabolas], "*", ms=13, color="k",
                label="IsoFLOP minima")
    params = result["parametric"].get("params")
    if params and "G" in params and not _unconstrained(result["parametric"]):
        c = np.geomspace(min(r["flops"] for r in records), max(r["flops"] for r in records), 50)
        n, d = fits.frontier(params, c)
        ax.plot(c, fits.parametric_loss(params, n, d), "--", color="C3", label="parametric frontier (C=6ND)")
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("final validation loss")
    ax.set_title("Loss against compute, every run")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, to, "loss_vs_compute")


def _ci(result_part: dict, key: str) -> str:
    ci = (result_part.get("bootstrap") or {}).get("ci95", {}).get(key)
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""


def _unconstrained(part: dict) -> list[str]:
    """Parameters whose 95% bootstrap interval spans more than a factor of 10 (or crosses zero)."""
    out = []
    for key, ci in ((part.get("bootstrap") or {}).get("ci95") or {}).items():
        if key in ("E", "A", "B", "alpha", "beta", "a", "b") and ci and (ci[0] <= 0 or ci[1] / ci[0] > 10):
            out.append(key)
    return out


def sweep_data_dir(sweep_dir: Path, records: list[dict]) -> Optional[str]:
    """The data folder the sweep's runs trained on (read from a run's config.yaml), or None."""
    import yaml

    for r in records:
        config = sweep_dir / "runs" / r["name"] / "config.yaml"
        if config.is_file():
            try:
                return yaml.safe_load(config.read_text())["data"]["dir"]
            except (OSError, KeyError, TypeError):
                return None
    return None


def unigram_baseline(data_dir: Optional[str]) -> Optional[float]:
    """The unigram val loss of the sweep's data, or None if it can't be read."""
    from gptdist.errors import DataError
    from gptdist.studies.scaling_laws.vocab import unigram_loss

    try:
        return unigram_loss(data_dir) if data_dir else None
    except (DataError, OSError):
        return None


def train_split_tokens(data_dir: Optional[str]) -> Optional[int]:
    """Tokens in the data's train split (for the epochs each run saw), or None if it can't be read."""
    from gptdist.data.loader import load_manifest
    from gptdist.errors import DataError
    from gptdist.studies.scaling_laws.sweep import split_tokens

    try:
        manifest = load_manifest(data_dir) if data_dir else None
    except (DataError, OSError):
        return None
    return split_tokens(manifest) if manifest else None


def markdown(spec_name: str, records: list[dict], result: dict, figures: list[str], unigram: Optional[float] = None,
             train_tokens: Optional[int] = None) -> str:
    """The report. train_tokens (the train split's size) adds each run's epochs: a run past one epoch saw
    repeated data, and its train loss (the last step's batch, so noisy) below its val loss would show it."""
    iso, par = result["isoflop"], result["parametric"]
    lines = [f"# Scaling-law sweep `{spec_name}`", "",
             f"{result['runs_used']} runs used; missing (failed or unfinished): "
             f"{', '.join(result['runs_missing']) or 'none'}.", "",
             *([f"Yardsticks: a uniform guess over the vocabulary scores ln V; knowing only token frequencies "
                f"(the train split's unigram distribution) scores **{unigram:.4f}** on the val split.", ""]
               if unigram is not None else []),
             "| run | N | D (tokens) | epochs | C (FLOPs) | steps | final val loss | final train loss | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        val = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "-"
        train = f"{r['train_loss']:.4f}" if r.get("train_loss") is not None else "-"
        epochs = f"{r['tokens'] / train_tokens:.2f}" if train_tokens else "-"
        lines.append(f"| {r['name']} | {r['params']:,} | {r['tokens']:,} | {epochs} | {r['flops']:.3e} | {r['steps']} | {val} "
                     f"| {train} | {r['status']} |")
    lines += ["", "## Approach 2: IsoFLOP parabolas", ""]
    if iso["parabolas"]:
        lines += ["| budget C | N_opt | D_opt | loss at minimum |", "|---:|---:|---:|---:|"]
        lines += [f"| {p['budget']:.2e} | {p['n_opt']:,.0f} | {p['d_opt']:,.0f} | {p['loss_min']:.4f} |" for p in iso["parabolas"]]
    if iso["budgets_without_minimum"]:
        lines += ["", "Budgets with no minimum among the sizes tried (the parabola opens downwards or its vertex "
                      f"lies outside the sampled N): {', '.join(f'{b:.2e}' for b in iso['budgets_without_minimum'])}."]
    laws = iso["power_laws"]
    if laws:
        lines += ["", f"N_opt ∝ C^{laws['a']:.3f}{_ci(iso, 'a')}, D_opt ∝ C^{laws['b']:.3f}{_ci(iso, 'b')} "
                      f"(95% bootstrap intervals over {iso['bootstrap']['resamples']} resamples, "
                      f"{iso['bootstrap']['dropped']} dropped as degenerate)."]
    else:
        lines += ["", "Fewer than two budgets have a minimum, so no power law is fitted."]
    lines += ["", "## Approach 3: parametric fit L(N, D) = E + A/N^α + B/D^β", ""]
    p = par.get("params")
    if p:
        lines += [f"Huber δ = {par['huber_delta']:g} on log-loss, L-BFGS from the best starts of Hoffmann et al.'s grid; "
                  f"{par['runs']} runs, 95% bootstrap intervals over {par['bootstrap']['resamples']} resamples.", ""]
    else:
        lines += [f"Not fitted: {par.get('reason')}."]
    lines += ["| | E | A | B | α | β | a (N_opt ∝ C^a) | b (D_opt ∝ C^b) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    if p:
        cells = [f"{p[k]:.3g}{_ci(par, k)}" if k in p else "-" for k in ("E", "A", "B", "alpha", "beta", "a", "b")]
        lines.append("| **this sweep (parametric)** | " + " | ".join(cells) + " |")
    if laws:
        lines.append(f"| **this sweep (IsoFLOP)** | | | | | | {laws['a']:.3f}{_ci(iso, 'a')} | {laws['b']:.3f}{_ci(iso, 'b')} |")
    loose = _unconstrained(par)
    if loose:
        lines_note = ("The bootstrap intervals of " + ", ".join(loose) + " span more than a factor of 10: these runs do "
                      "not pin those parameters down, and the frontier the fit implies should not be read.")
    else:
        lines_note = ""
    for name, values in fits.PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:g}" if k in values else "" for k in
                                                ("E", "A", "B", "alpha", "beta", "a", "b")) + " |")
    if lines_note:
        lines += ["", lines_note]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | Path, to: Optional[str | Path] = None, bootstrap: int = 200) -> Path:
    sweep_dir = Path(sweep_dir)
    results_path = sweep_dir / "results.json"
    if not results_path.is_file():
        raise SweepError(f"no results.json in {sweep_dir}; run the sweep first")
    results = json.loads(results_path.read_text())
    records = results["runs"]
    to = Path(to) if to else sweep_dir
    to.mkdir(parents=True, exist_ok=True)
    result = fits.fit_all(records, bootstrap)
    (to / "fits.json").write_text(json.dumps(result, indent=1) + "\n")
    if to.resolve() != sweep_dir.resolve():
        shutil.copy(results_path, to / "results.json")
        for name in ("plan.json", "sweep_log.jsonl"):
            if (sweep_dir / name).is_file():
                shutil.copy(sweep_dir / name, to / name)
    figures = [plot_isoflop(records, result, to), plot_loss_vs_compute(records, result, to)]
    figures.append(plot_optimal(records, result, to))
    finished = [sweep_dir / "runs" / r["name"] for r in records if r["status"] == "done"]
    if finished:
        largest = max(r["budget"] for r in records)
        curves = [load_run(f) for f, r in zip(finished, [r for r in records if r["status"] == "done"]) if r["budget"] == largest]
        plot_runs(curves, to / "loss_curves", ("tokens", "time"), smoothing=0.9, log_x=True,
                  title=f"Runs at the largest budget, C = {largest:.1e}")
        figures.append("loss_curves.png")
    path = to / "report.md"
    data_dir = sweep_data_dir(sweep_dir, records)
    unigram = unigram_baseline(data_dir)
    result["unigram_val_loss"] = unigram
    (to / "fits.json").write_text(json.dumps(result, indent=1) + "\n")
    path.write_text(markdown(results.get("spec", ""), records, result, figures, unigram, train_split_tokens(data_dir)))
    return path
