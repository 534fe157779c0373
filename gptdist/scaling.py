"""The scaling study: "if one rank takes T, do N ranks take T/N? If not, why?"

    python launch/scaling.py --config configs/scaling_cpu.yaml --backends manual,ddp,fsdp --world-sizes 1,2,4

runs one training config per backend at each world size (and "2x4" = 2 nodes x 4 ranks), in two modes,
reads the instrumentation every run writes, and reports speed-up, efficiency and where the time went.

MODES (DESIGN.md, "Measurement conventions")
- strong: a fixed global batch G = per-rank batch b x the largest world size, split over the ranks
  (data.batch_size = G/N, no accumulation). Ideal: T_N = T_1 / N. Efficiency E = T_1 / (N·T_N).
- weak: a fixed per-rank batch b (global batch b·N). Ideal: T_N = T_1. Efficiency = per-rank
  throughput at N / at 1 = T_1 / T_N.
At the largest world size both modes run the same job (run once, used for both).

WHAT A RUN GIVES (ranks/rank{r}/steps.jsonl, first `warmup` steps left out; per step, over ranks):
    step      the step PERIOD: mean over ranks of the time from the rank's previous step end to this
              one's (`end_unix_s`; rows without it: step_ms). Each rank's periods add up to the run's wall
              time, so this is the step time throughput sees (tokens/s = tokens per step / step).
    slowest   max over ranks of step_ms (a rank's step from its own start to its end). Reported, not used:
              when ranks drift apart (e.g. oversubscribed cores), a rank that finished the previous step
              early starts early and waits in the first collective, so its step_ms includes time the
              others spent still finishing the previous step; the max over ranks then adds up to MORE
              than the wall time. slowest - step shows how far the ranks' step boundaries drift.
    compute   mean over ranks of time/compute_ms
    comm      mean over ranks of comm/total_ms; overlap likewise
    exposed   MIN over ranks of comm/exposed_ms: the last rank to arrive waits least, so its exposed
              time is the collectives' own cost
    wait      mean over ranks of (exposed_r - min exposed): time ranks sat in a collective waiting
              for a slower rank (stragglers, uneven load)
    data      mean over ranks of time/data_ms
Medians over steps (with p25/p75); `other` = median step - the other medians (Python, logging and
work between steps, and the residual of taking medians separately), so the parts add up to the median
step exactly.

GAP ATTRIBUTION. The gap to ideal, T_N - ideal_N, is split part by part:
    part_N - share·part_1   for part in (compute, exposed, wait, data, other),   share = 1/N (strong) or 1 (weak)
    extra compute  = compute_N - share·compute_1   (FSDP's extra copies, oversubscribed cores, small-batch inefficiency)
    exposed comm   = exposed_N - share·exposed_1
    straggler wait = wait_N - share·wait_1
    data           = data_N - share·data_1
    other          = other_N - share·other_1
The parts sum to the gap exactly (tested).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from gptdist.dist import emulated_node_devices, visible_gpus
from gptdist.errors import ConfigError
from gptdist.instrument.summary import percentile

PARTS = ("compute", "exposed", "wait", "data", "other")
PART_TITLES = {"compute": "extra compute", "exposed": "exposed comm", "wait": "straggler wait", "data": "data",
               "other": "other"}
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Layout:
    nodes: int
    per_node: int

    @property
    def world(self) -> int:
        return self.nodes * self.per_node

    @property
    def name(self) -> str:
        return f"{self.nodes}x{self.per_node}" if self.nodes > 1 else str(self.per_node)


def parse_world_sizes(text: str) -> list[Layout]:
    """"1,2,4,2x4" -> layouts (2x4 = 2 nodes of 4 ranks)."""
    layouts = []
    for item in text.split(","):
        item = item.strip()
        try:
            nodes, per_node = (int(x) for x in item.split("x")) if "x" in item else (1, int(item))
        except ValueError:
            raise ConfigError(f"world size {item!r}: expected N or NODESxN, e.g. 1,2,4,2x4") from None
        if nodes < 1 or per_node < 1:
            raise ConfigError(f"world size {item!r} must be positive")
        layouts.append(Layout(nodes, per_node))
    if not any(layout.world == 1 for layout in layouts):
        raise ConfigError("the world sizes must include 1 (the baseline every efficiency is relative to)")
    return layouts


@dataclass(frozen=True)
class RunSpec:
    backend: str
    layout: Layout
    batch_size: int  # per rank, per micro-step
    seq_len: int
    modes: tuple[str, ...]  # which modes this run serves

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def name(self) -> str:
        return f"{self.backend}-n{self.layout.name}-b{self.batch_size}"

    @property
    def global_batch_tokens(self) -> int:
        return self.batch_size * self.seq_len * self.world


def plan_runs(backends: Sequence[str], layouts: Sequence[Layout], modes: Sequence[str], per_rank_batch: int,
              seq_len: int) -> list[RunSpec]:
    """Every (backend, layout, mode) as a run; identical jobs (same backend, layout and batch) run once."""
    for mode in modes:
        if mode not in ("strong", "weak"):
            raise ConfigError(f"unknown mode {mode!r} (strong, weak)")
    max_world = max(layout.world for layout in layouts)
    global_batch = per_rank_batch * max_world
    specs: dict[tuple, RunSpec] = {}
    for backend in backends:
        for layout in layouts:
            for mode in modes:
                if mode == "strong":
                    if global_batch % layout.world:
                        raise ConfigError(f"strong scaling: global batch {global_batch} is not divisible by world size {layout.world}")
                    batch = global_batch // layout.world
                else:
                    batch = per_rank_batch
                key = (backend, layout, batch)
                old = specs.get(key)
                specs[key] = RunSpec(backend, layout, batch, seq_len, (old.modes if old else ()) + (mode,))
    return list(specs.values())


# ----------------------------------------------------------------------------------------------
# Running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_commands(spec: RunSpec, config: str, runs_dir: Path, steps: int, extra: Sequence[str] = ()) -> list[list[str]]:
    """One torchrun command per node (all on this host for a multi-node layout: a rehearsal of the
    real thing, which runs the same command on each node with its --node-rank)."""
    port = _free_port()
    args = [
        str(REPO / "launch" / "train.py"), "--config", config, "--backend", spec.backend,
        "--data.batch_size", str(spec.batch_size), "--train.global_batch_tokens", str(spec.global_batch_tokens),
        "--train.max_steps", str(steps), "--log.out_dir", str(runs_dir), "--log.run_name", spec.name,
        "--log.overwrite", "true", *extra,
    ]
    commands = []
    for node in range(spec.layout.nodes):
        commands.append([
            sys.executable, "-m", "torch.distributed.run", "--nnodes", str(spec.layout.nodes),
            "--node-rank", str(node), "--nproc-per-node", str(spec.layout.per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", *args,
        ])
    return commands


def run_spec(spec: RunSpec, config: str, runs_dir: Path, steps: int, threads_per_rank: int, timeout: float,
             extra: Sequence[str] = (), log=print) -> Path:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads_per_rank)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    commands = launch_commands(spec, config, runs_dir, steps, extra)
    log(f"run {spec.name} ({', '.join(spec.modes)}): {' '.join(commands[0][2:])}")
    t0 = time.time()
    # Each emulated node gets its own GPUs (NCCL refuses two ranks on one GPU): gptdist.dist.emulated_node_devices.
    devices = emulated_node_devices(spec.layout.nodes, spec.layout.per_node, visible_gpus())
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**env, "CUDA_VISIBLE_DEVICES": gpus} if gpus else env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, gpus in zip(commands, devices)]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise ConfigError(f"run {spec.name} took longer than {timeout:.0f} s") from None
        outputs.append(out)
    run_dir = runs_dir / spec.name
    if any(p.returncode for p in procs):
        tail = "\n".join(outputs[0].splitlines()[-15:])
        raise ConfigError(f"run {spec.name} failed (exit {[p.returncode for p in procs]}):\n{tail}")
    log(f"  done in {time.time() - t0:.0f} s -> {run_dir}")
    return run_dir


# ----------------------------------------------------------------------------------------------
# Collecting a run


@dataclass
class Stat:
    median: float
    p25: float
    p75: float


def _stat(values: Sequence[float]) -> Stat:
    return Stat(percentile(values, 50), percentile(values, 25), percentile(values, 75))


@dataclass
class RunResult:
    name: str
    backend: str
    world: int
    layout: str
    batch_size: int
    tokens_per_step: int
    steps_kept: int
    step: Stat  # the step period (module docstring)
    parts: dict[str, float]  # medians of compute, exposed, wait, data, other (other = residual)
    comm_ms: float
    overlap: Optional[float]
    mem_peak_mb: float
    tokens_per_s: float
    modes: tuple[str, ...] = ()
    slowest_step_ms: float = 0.0  # median over steps of the max over ranks of step_ms (module docstring)


def per_step_values(rows_by_rank: dict[int, list[dict]], warmup: int) -> list[dict[str, float]]:
    """Combine the ranks' rows of each step (see the module docstring), warm-up steps left out."""
    by_step: dict[int, list[dict]] = {}
    for rows in rows_by_rank.values():
        previous_end = {}
        for r in sorted(rows, key=lambda r: r["step"]):
            previous_end[r["step"]] = r.get("end_unix_s")
            before = previous_end.get(r["step"] - 1)
            period = (r["end_unix_s"] - before) * 1e3 if before is not None and r.get("end_unix_s") is not None else r["step_ms"]
            by_step.setdefault(r["step"], []).append({**r, "_period_ms": period})
    n = len(rows_by_rank)
    out = []
    for step in sorted(by_step):
        if step <= warmup or len(by_step[step]) != n:
            continue
        rs = by_step[step]
        exposed = [r.get("comm/exposed_ms", 0.0) for r in rs]
        overlaps = [r["comm/overlap"] for r in rs if r.get("comm/overlap") is not None]
        out.append({
            "step": statistics.fmean(r["_period_ms"] for r in rs),
            "slowest": max(r["step_ms"] for r in rs),
            "compute": statistics.fmean(r["time/compute_ms"] for r in rs),
            "exposed": min(exposed),
            "wait": statistics.fmean(e - min(exposed) for e in exposed),
            "data": statistics.fmean(r.get("time/data_ms", 0.0) for r in rs),
            "comm": statistics.fmean(r.get("comm/total_ms", 0.0) for r in rs),
            "overlap": statistics.fmean(overlaps) if overlaps else None,
            "mem": max(r.get("mem/peak_mb") or 0.0 for r in rs),
        })
    return out


def summarize_steps(values: list[dict[str, float]]) -> tuple[Stat, dict[str, float], float, Optional[float], float, float]:
    """(step stat, part medians with `other` as the residual, comm median, overlap median, peak memory,
    median slowest-rank step)."""
    if not values:
        raise ConfigError("no steps left after the warm-up (raise --steps or lower --warmup)")
    step = _stat([v["step"] for v in values])
    parts = {p: percentile([v[p] for v in values], 50) for p in PARTS if p != "other"}
    parts["other"] = step.median - sum(parts.values())
    overlaps = [v["overlap"] for v in values if v["overlap"] is not None]
    return (step, parts, percentile([v["comm"] for v in values], 50),
            percentile(overlaps, 50) if overlaps else None, max(v["mem"] for v in values),
            percentile([v["slowest"] for v in values], 50))


def read_rank_rows(run_dir: Path) -> dict[int, list[dict]]:
    rank_dirs = sorted((run_dir / "ranks").glob("rank*"))
    if not rank_dirs:
        raise ConfigError(f"{run_dir}: no ranks/rank*/steps.jsonl (was instrumentation on?)")
    out = {}
    for d in rank_dirs:
        lines = (d / "steps.jsonl").read_text().splitlines() if (d / "steps.jsonl").is_file() else []
        out[int(d.name.removeprefix("rank"))] = [json.loads(line) for line in lines if line.strip()]
    return out


def collect_run(run_dir: Path, spec: RunSpec, warmup: int) -> RunResult:
    values = per_step_values(read_rank_rows(run_dir), warmup)
    step, parts, comm, overlap, mem, slowest = summarize_steps(values)
    tokens = spec.global_batch_tokens
    return RunResult(spec.name, spec.backend, spec.world, spec.layout.name, spec.batch_size, tokens, len(values),
                     step, parts, comm, overlap, mem, tokens / (step.median / 1e3), spec.modes, slowest)


# ----------------------------------------------------------------------------------------------
# Efficiency and the gap to ideal


def efficiency(mode: str, t1: float, tn: float, n: int) -> dict[str, float]:
    """speed-up and efficiency at N from median step times (DESIGN.md). strong: same global batch, so
    speed-up = T1/TN, ideal N, E = T1/(N·TN). weak: N times the work per step, so speed-up (in
    throughput) = N·T1/TN, E = T1/TN (per-rank throughput at N over at 1)."""
    if mode == "strong":
        return {"speedup": t1 / tn, "efficiency": t1 / (n * tn), "ideal_ms": t1 / n}
    if mode == "weak":
        return {"speedup": n * t1 / tn, "efficiency": t1 / tn, "ideal_ms": t1}
    raise ConfigError(f"unknown mode {mode!r}")


def attribute_gap(mode: str, base: dict[str, float], run: dict[str, float], n: int) -> dict[str, float]:
    """Split T_N - ideal into parts (module docstring). base, run: medians of PARTS (summing to the step)."""
    share = 1.0 / n if mode == "strong" else 1.0
    return {p: run[p] - share * base[p] for p in PARTS}


def analyse(results: list[RunResult], modes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (mode, backend, world): step, speed-up, efficiency, the gap and its parts."""
    rows = []
    for mode in modes:
        for backend in sorted({r.backend for r in results}):
            mine = sorted((r for r in results if r.backend == backend and mode in r.modes), key=lambda r: r.world)
            base = next((r for r in mine if r.world == 1), None)
            if base is None:
                continue
            for r in mine:
                e = efficiency(mode, base.step.median, r.step.median, r.world)
                gap = attribute_gap(mode, base.parts, r.parts, r.world)
                rows.append({"mode": mode, "backend": backend, "world": r.world, "layout": r.layout, "run": r.name,
                             "step_ms": r.step.median, "step_p25": r.step.p25, "step_p75": r.step.p75,
                             "slowest_step_ms": r.slowest_step_ms, **e,
                             "gap_ms": r.step.median - e["ideal_ms"], "gap": gap, "parts": r.parts,
                             "comm_ms": r.comm_ms, "overlap": r.overlap, "tokens_per_s": r.tokens_per_s,
                             "mem_peak_mb": r.mem_peak_mb, "batch_size": r.batch_size})
    return rows


# ----------------------------------------------------------------------------------------------
# Report


def environment() -> dict[str, Any]:
    import torch

    return {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


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


def _save_backend_panels(fig, axes, title: str, path: Path) -> Path:
    """Finish a row of per-backend panels (ms per step on the y axis): shared legend below, title, save."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel("ms per step (median)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        ax.set_title(f"{tag}{mode} scaling efficiency{title_note}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"efficiency_{mode}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

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
        ax.set_xticks(xs, names)
        ax.set_xlabel("ranks N")
        ax.set_ylabel("tokens / s (all ranks)")
        ax.set_title(f"{tag}{mode} scaling: throughput{title_note}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / f"throughput_{mode}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_predicted_vs_measured(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """validation_<mode>.png: per backend, the measured step (bar, p25–p75 whisker) and the predicted one
    (marker, error in % above it) at each layout. rows: `launch/simulate.py validate`'s rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        backends = sorted({r["backend"] for r in mine})
        fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 4), sharey=True, squeeze=False)
        for ax, b in zip(axes[0], backends):
            rs = [r for r in mine if r["backend"] == b]  # in the study's order (by world size)
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
        paths.append(_save_backend_panels(fig, axes, f"{mode} scaling: predicted vs measured step",
                                          out_dir / f"validation_{mode}.png"))
    return paths


def write_report(out_dir: Path, rows: list[dict[str, Any]], results: list[RunResult], meta: dict[str, Any],
                 notes: Sequence[str] = ()) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {"meta": meta, "rows": rows, "runs": [asdict(r) for r in results]}
    (out_dir / "results.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    plots = plot_report(rows, out_dir)
    md = [f"# Scaling study: {', '.join(meta.get('backends', []))} at N = {meta.get('world_sizes', '')}", "",
          f"Date (UTC): {meta['env']['date_utc']}. Hardware: {meta['env']['cpu']}, {meta['env']['cores']} cores"
          f"{', GPU ' + meta['env']['cuda'] if meta['env'].get('cuda') else ''}. torch {meta['env']['torch']}.", "",
          "Command:", "", "```", meta.get("command", ""), "```", "",
          f"Config: `{meta.get('config')}`; {meta.get('steps')} steps per run, the first {meta.get('warmup')} left out; "
          f"{meta.get('threads_per_rank')} thread(s) per rank (OMP_NUM_THREADS). Strong scaling: global batch "
          f"{meta.get('global_batch')} sequences of {meta.get('seq_len')} tokens split over the ranks; weak scaling: "
          f"{meta.get('per_rank_batch')} sequences per rank.", ""]
    md += [f"- {n}" for n in notes]
    md += ["", "## Results (medians over steps)", "", markdown_table(rows), "",
           "Step = the step period (time between two steps' ends, mean over ranks; what tokens/s sees); slowest rank = "
           "median of the longest rank's own step (start to end), larger when the ranks' step boundaries drift apart. "
           "Gap = step − ideal (strong: T1/N, weak: T1); its parts (extra compute, exposed comm, straggler wait, data, "
           "other) add up to it. Definitions: docs/scaling.md.", "", "## The answer", "", answer_in_words(rows), "",
           "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + ["", "Raw: `results.json`.", ""]
    (out_dir / "report.md").write_text("\n".join(md))
