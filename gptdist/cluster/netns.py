"""Nodes as network namespaces: one switch namespace holding a bridge, one namespace per node with a veth
pair to the bridge, its own address on a private subnet, and its egress shaped with tc tbf.

Nothing is created in the root namespace: the bridge, every veth end and every address live inside
namespaces named "<cluster>-*", so deleting those namespaces removes all of it. A node has no default
route, so its traffic can only reach the cluster subnet or its own loopback. netem is not available on
this kernel, so the link has a rate but no added latency.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gptdist.cluster.state import ClusterError, ClusterState, Node, check_name, cluster_root, load

HOSTS_DIR = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts
FIRST_HOST = 11  # node i gets <subnet>.(11 + i)
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)?bit$")


def missing_requirements() -> str | None:
    """One line saying what is missing to run a cluster here, or None."""
    if os.geteuid() != 0:
        return "the emulated cluster needs root (network namespaces, veth, tc)"
    lacking = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if lacking:
        return f"the emulated cluster needs iproute2 ({' and '.join(lacking)} not found on PATH)"
    return None


def require_host() -> None:
    problem = missing_requirements()
    if problem:
        raise ClusterError(problem)


def parse_rate(text: str) -> int:
    """'250mbit', '1gbit', '1.5gbit' -> bit/s (tc's units; bytes-per-second units are refused)."""
    m = _RATE.match(text.strip().lower())
    if not m:
        raise ClusterError(f"link rate {text!r}: write it like 250mbit or 1gbit")
    bits = float(m.group(1)) * {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    if not 1e6 <= bits <= 100e9:
        raise ClusterError(f"link rate {text!r}: choose between 1mbit and 100gbit")
    return int(bits)


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc


def list_namespaces(prefix: str) -> list[str]:
    out = _sh("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def tbf_burst_bytes(rate_bit: int) -> int:
    # tbf needs a bucket of at least one (GSO-sized, up to 64 KiB) packet; 10 ms of traffic keeps the
    # timer granularity from throttling below the rate at high rates.
    return max(rate_bit // 8 // 100, 128 * 1024)


def _hosts_file(state: ClusterState) -> str:
    # Like a real cluster: every node name resolves to that node's address. Commands run with the node's
    # name as host name (exec_argv), so torchrun's rendezvous sees node 0 as the store's host and
    # hands the other nodes an address that reaches it.
    lines = ["127.0.0.1 localhost"] + [f"{n.addr} {n.name}" for n in state.nodes]
    return "\n".join(lines) + "\n"


def up(name: str, n_nodes: int, rate: str, subnet: str) -> ClusterState:
    """Make the cluster. On any failure everything made so far is removed before the error is raised."""
    require_host()
    check_name(name)
    rate_bit = parse_rate(rate)
    if n_nodes < 2:
        raise ClusterError(f"--nodes {n_nodes}: a cluster needs at least 2 nodes")
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as e:
        raise ClusterError(f"--subnet {subnet!r}: {e}") from None
    if net.version != 4 or not net.is_private or net.prefixlen > 26 or net.is_loopback:
        raise ClusterError(f"--subnet {subnet}: use a private IPv4 network of /26 or larger, e.g. 10.213.0.0/24")
    if n_nodes > 40:
        raise ClusterError(f"--nodes {n_nodes}: at most 40 nodes")
    if load(name) is not None or list_namespaces(name):
        raise ClusterError(f"cluster {name!r} is already up (launch/cluster.py down --name {name} first)")
    hosts = list(net.hosts())
    state = ClusterState(name=name, subnet=str(net), rate_bit=rate_bit)
    state.nodes = [Node(f"{name}-n{i}", str(hosts[FIRST_HOST - 1 + i]), i) for i in range(n_nodes)]
    state.save()  # first, so `down` finds the cluster even if we die half-way
    try:
        _add_namespace(state, state.switch)
        _sh("ip", "-n", state.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", state.switch, "link", "set", "br0", "up")
        for node in state.nodes:
            _add_node(state, node, net.prefixlen)
    except BaseException:
        down(name)
        raise
    return state


def _add_namespace(state: ClusterState, ns: str) -> None:
    state.namespaces.append(ns)
    state.save()
    _sh("ip", "netns", "add", ns)
    _sh("ip", "-n", ns, "link", "set", "lo", "up")


def _add_node(state: ClusterState, node: Node, prefixlen: int) -> None:
    ns, port = node.name, f"p{node.rank}"
    _add_namespace(state, ns)
    hosts = HOSTS_DIR / ns
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / "hosts").write_text(_hosts_file(state))
    # The node's end is created directly inside its namespace: it never exists in the root namespace.
    _sh("ip", "-n", state.switch, "link", "add", port, "type", "veth", "peer", "name", state.iface, "netns", ns)
    _sh("ip", "-n", state.switch, "link", "set", port, "master", "br0")
    _sh("ip", "-n", state.switch, "link", "set", port, "up")
    _sh("ip", "-n", ns, "addr", "add", f"{node.addr}/{prefixlen}", "dev", state.iface)
    _sh("ip", "-n", ns, "link", "set", state.iface, "up")
    burst = tbf_burst_bytes(state.rate_bit)
    _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", state.iface, "root", "tbf",
        "rate", f"{state.rate_bit}bit", "burst", str(burst), "latency", "100ms")


def namespace_pids(ns: str) -> list[int]:
    out = _sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def kill_namespace_processes(ns: str, sig: int = signal.SIGKILL, wait_s: float = 10.0) -> None:
    """Send sig to every process in the namespace; with SIGKILL, wait until they are gone."""
    for pid in namespace_pids(ns):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while sig == signal.SIGKILL and namespace_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.1)


def down(name: str) -> list[str]:
    """Remove everything cluster `name` made; idempotent (nothing there is fine). Returns what it removed.

    Finds the namespaces from the state file and, in case the file is gone or stale, by their prefix."""
    require_host()
    check_name(name)
    state = load(name)
    removed: list[str] = []
    if state is not None and state.slurm:
        from gptdist.cluster import slurm  # only when Slurm was started
        slurm.stop(state)
    namespaces = list(dict.fromkeys((state.namespaces if state else []) + list_namespaces(name)))
    for ns in reversed(namespaces):  # nodes first, the switch last
        kill_namespace_processes(ns)
        if ns in list_namespaces(name):
            _sh("ip", "netns", "del", ns, check=False)
            removed.append(ns)
        if (HOSTS_DIR / ns).is_dir():
            shutil.rmtree(HOSTS_DIR / ns, ignore_errors=True)
    folder = cluster_root() / name
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def exec_argv(state: ClusterState, node: Node, cmd: list[str], env: dict[str, str] | None = None) -> list[str]:
    """argv that runs cmd inside node's namespace, with gloo bound to the node's interface."""
    settings = {"GLOO_SOCKET_IFNAME": state.iface, "GPTDIST_CLUSTER_NODE": node.name, **(env or {})}
    if state.slurm:
        settings["SLURM_CONF"] = state.slurm["conf"]
    # A UTS namespace per command gives it the node's host name, as on a real node.
    return ["ip", "netns", "exec", node.name, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', node.name,
            "env", *(f"{k}={v}" for k, v in settings.items()), *cmd]


def describe(state: ClusterState) -> str:
    lines = [f"cluster {state.name}: {len(state.nodes)} nodes on {state.subnet}, each node's egress shaped to "
             f"{state.rate_bit / 1e9:g} Gbit/s (tc tbf; no added latency: netem is not available)"]
    for node in state.nodes:
        alive = node.name in list_namespaces(state.name)
        lines.append(f"  n{node.rank}  {node.name:<12} {node.addr:<15} {state.iface}  "
                     f"{'up' if alive else 'MISSING'}  {len(namespace_pids(node.name)) if alive else 0} processes")
    if state.slurm:
        lines.append(f"  slurm: controller on n0 ({state.nodes[0].addr}), SLURM_CONF={state.slurm['conf']}")
    return "\n".join(lines)
