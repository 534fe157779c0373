"""The T/N study's plan (which runs: backend x world size x mode) and its launch (one torchrun per run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gptdist.dist import emulated_node_devices, visible_gpus
from gptdist.errors import ConfigError
from gptdist.net import free_port


REPO = Path(__file__).resolve().parents[3]
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


def train_args(spec: RunSpec, config: str, runs_dir: Path, steps: int, extra: Sequence[str] = ()) -> list[str]:
    """launch/train.py and its arguments for one run (what every rank runs)."""
    return [
        str(REPO / "launch" / "train.py"), "--config", config, "--backend", spec.backend,
        "--data.batch_size", str(spec.batch_size), "--train.global_batch_tokens", str(spec.global_batch_tokens),
        "--train.max_steps", str(steps), "--log.out_dir", str(runs_dir), "--log.run_name", spec.name,
        "--log.overwrite", "true", *extra,
    ]


def launch_commands(spec: RunSpec, config: str, runs_dir: Path, steps: int, extra: Sequence[str] = ()) -> list[list[str]]:
    """One torchrun command per node (all on this host for a multi-node layout: a rehearsal of the
    real thing, which runs the same command on each node with its --node-rank)."""
    port = free_port()
    args = train_args(spec, config, runs_dir, steps, extra)
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
