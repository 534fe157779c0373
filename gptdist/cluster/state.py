"""The one place a cluster's description lives: <GPTDIST_CLUSTER_DIR>/<name>/state.json.

`up` writes it before it creates anything and updates it as it goes, so `down` can always find what
was made (also after a crash half-way through `up`); `down` removes the folder last.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptdist.errors import GptdistError

# A short name keeps every derived interface/namespace name unique per cluster and within Linux's
# 15-character interface-name limit ("<name>-sw", "<name>-n0", veth "<name>p0").
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,7}$")
DEFAULT_NAME = "gd"


class ClusterError(GptdistError):
    """The cluster can't be made, found or used (missing root/iproute2, bad name, unknown node...)."""


def cluster_root() -> Path:
    return Path(os.environ.get("GPTDIST_CLUSTER_DIR", "/tmp/gptdist-cluster"))


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ClusterError(f"cluster name {name!r}: use 1-8 lowercase letters/digits starting with a letter")
    return name


@dataclass
class Node:
    name: str  # e.g. "gd-n0": namespace name and host name inside the cluster
    addr: str  # its address on the cluster subnet, e.g. 10.213.0.11
    rank: int


@dataclass
class ClusterState:
    name: str
    subnet: str  # e.g. 10.213.0.0/24
    rate_bit: int  # each node's egress rate in bit/s
    nodes: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # every namespace made, in creation order
    slurm: dict = field(default_factory=dict)  # what slurm.py started (pids, files), empty when none
    iface: str = "eth0"  # each node's interface name inside its namespace (GLOO_SOCKET_IFNAME)

    @property
    def folder(self) -> Path:
        return cluster_root() / self.name

    @property
    def switch(self) -> str:
        return f"{self.name}-sw"

    def node(self, name_or_rank: str) -> Node:
        for n in self.nodes:
            if name_or_rank in (n.name, f"n{n.rank}", str(n.rank)):
                return n
        raise ClusterError(f"cluster {self.name!r} has no node {name_or_rank!r} (nodes: "
                           f"{', '.join(f'n{n.rank}' for n in self.nodes)})")

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.folder / "state.json")


def load(name: str) -> ClusterState | None:
    path = cluster_root() / check_name(name) / "state.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    raw["nodes"] = [Node(**n) for n in raw["nodes"]]
    return ClusterState(**raw)


def require(name: str) -> ClusterState:
    state = load(name)
    if state is None:
        raise ClusterError(f"no cluster {name!r} is up (start one with: launch/cluster.py up --name {name})")
    return state
