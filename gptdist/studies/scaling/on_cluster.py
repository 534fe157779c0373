"""The scaling study's runs on the emulated cluster (launch/cluster.py up): a layout of one node (1, 2, 4)
runs one standalone torchrun inside node 0's namespace; a layout AxB runs one torchrun per node on nodes
0..A-1 (c10d rendezvous on node 0, gloo bound to each node's interface), the command a user types on real
nodes, so ranks on different nodes talk across the shaped link and ranks on one node over its loopback.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from gptdist.cluster import runner
from gptdist.cluster.state import ClusterState
from gptdist.errors import ConfigError
from gptdist.studies.scaling.plan import REPO, RunSpec, train_args

PORT = 29600  # node 0's rendezvous port (inside node 0's namespace: no clash with anything outside)


def check_layouts(state: ClusterState, specs: Sequence[RunSpec]) -> None:
    """Refuse, before anything runs, a layout with more nodes than the cluster has."""
    for spec in specs:
        if spec.layout.nodes > len(state.nodes):
            raise ConfigError(f"layout {spec.layout.name} needs {spec.layout.nodes} nodes; cluster "
                              f"{state.name!r} has {len(state.nodes)}")


def cluster_commands(state: ClusterState, spec: RunSpec, config: str, runs_dir: Path, steps: int,
                     threads_per_rank: int, extra: Sequence[str] = (), port: int = PORT) -> dict[str, list[str]]:
    """node name -> the command that node runs for this run (nodes not in the layout run nothing)."""
    env = ["env", f"OMP_NUM_THREADS={threads_per_rank}", f"PYTHONPATH={REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"]
    torchrun = (*env, sys.executable, "-m", "torch.distributed.run")
    args = train_args(spec, config, Path(runs_dir).resolve(), steps, extra)
    if spec.layout.nodes == 1:
        node = state.nodes[0]
        return {node.name: [*torchrun, "--standalone", "--nproc-per-node", str(spec.layout.per_node), *args]}
    return {node.name: runner.torchrun_argv(state, node, spec.layout.per_node, port, args, rdzv_id=spec.name,
                                            nnodes=spec.layout.nodes, torchrun=torchrun)
            for node in state.nodes[:spec.layout.nodes]}


def rank_hosts(run_dir: Path) -> dict[int, dict]:
    """rank -> {host, addr, cluster_node} as each rank wrote it (ranks/rank{r}/host.json)."""
    out = {}
    for path in sorted((Path(run_dir) / "ranks").glob("rank*/host.json")):
        host = json.loads(path.read_text())
        out[int(path.parent.name[4:])] = {k: host.get(k) for k in ("host", "addr", "cluster_node")}
    return out


def run_spec_on_cluster(state: ClusterState, spec: RunSpec, config: str, runs_dir: Path, steps: int,
                        threads_per_rank: int, timeout: float, extra: Sequence[str] = (), log=print) -> Path:
    commands = cluster_commands(state, spec, config, runs_dir, steps, threads_per_rank, extra)
    log(f"run {spec.name} ({', '.join(spec.modes)}) on {', '.join(commands)}: {' '.join(next(iter(commands.values()))[3:])}")
    t0 = time.time()
    output = io.StringIO()
    codes = runner.run_on_nodes(state, commands, timeout=timeout, sink=output)
    run_dir = Path(runs_dir) / spec.name
    if any(codes.values()) or time.time() - t0 > timeout:
        tail = "\n".join(output.getvalue().splitlines()[-15:])
        raise ConfigError(f"run {spec.name} failed on the cluster (exit codes {codes}):\n{tail}")
    hosts = rank_hosts(run_dir)
    where = ", ".join(f"rank {r}: {h['host']} ({h['addr']})" for r, h in sorted(hosts.items()))
    log(f"  done in {time.time() - t0:.0f} s -> {run_dir} [{where}]")
    return run_dir
