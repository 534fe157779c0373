"""Run one command per node at once, the way a user starts one torchrun on each real node."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from gptdist.cluster.netns import exec_argv
from gptdist.cluster.state import ClusterState, Node


def torchrun_argv(state: ClusterState, node: Node, nproc_per_node: int, port: int, script_and_args: list[str],
                  rdzv_id: str = "gptdist", nnodes: int | None = None, torchrun: tuple[str, ...] = ("torchrun",)) -> list[str]:
    """The command line a user types on node `node` of a real cluster (head = node 0). nnodes: how many of
    the cluster's nodes take part (default all: nodes 0..nnodes-1)."""
    return [*torchrun, "--nnodes", str(nnodes or len(state.nodes)), "--nproc-per-node", str(nproc_per_node),
            "--node-rank", str(node.rank), "--rdzv-backend", "c10d", "--rdzv-id", rdzv_id,
            "--rdzv-endpoint", f"{state.nodes[0].name}:{port}", *script_and_args]


def fill_placeholders(state: ClusterState, node: Node, cmd: list[str]) -> list[str]:
    """{node_rank}, {nnodes}, {head} (node 0's name) and {addr} (this node's address) in a command line."""
    values = {"node_rank": node.rank, "nnodes": len(state.nodes), "head": state.nodes[0].name, "addr": node.addr}
    return [arg.format(**values) if "{" in arg else arg for arg in cmd]


def _pump(stream, prefix: str, sink) -> None:
    for line in stream:
        sink.write(f"[{prefix}] {line}")
        sink.flush()


def run_on_nodes(state: ClusterState, commands: dict[str, list[str]], timeout: float | None = None,
                 sink=None, grace_after_failure_s: float = 60.0) -> dict[str, int]:
    """Start commands[node name] in each node's namespace together; wait for all; return exit codes.
    Output lines are prefixed with the node's name. Once a node fails, the others get
    grace_after_failure_s to end by themselves (their own one-line errors) and are then killed, so a node
    that died before the rendezvous doesn't leave the rest waiting for its 15-minute timeout. On timeout
    every process still running is killed."""
    sink = sink or sys.stdout
    procs, pumps = {}, []
    for name, cmd in commands.items():
        argv = exec_argv(state, state.node(name), cmd)
        procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pumps.append(threading.Thread(target=_pump, args=(procs[name].stdout, name, sink), daemon=True))
        pumps[-1].start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs.values()):
            now = time.monotonic()
            failed = any(p.returncode not in (None, 0) for p in procs.values())
            if failed and (deadline is None or deadline > now + grace_after_failure_s):
                deadline = now + grace_after_failure_s
                sink.write(f"[cluster] a node failed: the others get {grace_after_failure_s:g}s to finish\n")
            if deadline is not None and now > deadline:
                break
            time.sleep(0.2)
    finally:
        # SIGTERM first: torchrun passes it on to its workers (their own sessions) and reaps them.
        stopping = [p for p in procs.values() if p.poll() is None]
        for proc in stopping:
            proc.terminate()
        for proc in stopping:
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pump in pumps:
            pump.join(timeout=5)
    return {name: proc.returncode for name, proc in procs.items()}
