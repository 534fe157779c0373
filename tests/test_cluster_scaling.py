"""The scaling study on the emulated cluster (launch/scaling.py --cluster): a 2x1 layout runs one torchrun per
node namespace, so its two ranks sit on different nodes and talk across the shaped link. Needs root and
iproute2; skips with the reason elsewhere. The cluster is always taken down, also when the test fails."""

import json
import subprocess
import sys

import pytest

from gptdist.cluster import netns
from launchers import REPO, python, subprocess_env
from test_scaling import tiny_study_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(netns.missing_requirements() is not None,
                                                   reason=netns.missing_requirements() or "")]
NAME, SUBNET = "gdtsc", "10.214.6.0/24"  # its own prefix and subnet: never a user's or another test's cluster


def cluster_cli(*args: str) -> None:
    subprocess.run([sys.executable, "launch/cluster.py", "--name", NAME, *args], cwd=REPO, env=subprocess_env(),
                   capture_output=True, text=True, timeout=120, check=args[0] == "up")


def test_two_node_layout_runs_one_rank_per_node_across_the_link(tmp_path):
    config = tiny_study_config(tmp_path)
    out, runs = tmp_path / "report", tmp_path / "runs"
    cluster_cli("down")
    try:
        cluster_cli("up", "--nodes", "2", "--rate", "1gbit", "--subnet", SUBNET)
        python(["launch/scaling.py", "--config", str(config), "--cluster", NAME, "--backends", "manual",
                "--world-sizes", "1,2x1", "--modes", "strong", "--steps", "3", "--warmup", "1",
                "--runs-dir", str(runs), "--out", str(out)], timeout=300)
    finally:
        cluster_cli("down")
    raw = json.loads((out / "results.json").read_text())
    two = next(r for r in raw["rows"] if r["layout"] == "2x1")
    assert two["world"] == 2 and two["comm_ms"] > 0
    # Each rank ran in its own node's namespace: rank r's host is node r, with node r's cluster address.
    hosts = {int(r): h for r, h in raw["meta"]["rank_hosts"]["manual-n2x1-b2"].items()}
    assert hosts == {0: {"host": f"{NAME}-n0", "addr": "10.214.6.11", "cluster_node": f"{NAME}-n0"},
                     1: {"host": f"{NAME}-n1", "addr": "10.214.6.12", "cluster_node": f"{NAME}-n1"}}
    # The 1-rank baseline ran inside node 0 (a one-node layout).
    assert raw["meta"]["rank_hosts"]["manual-n1-b4"]["0"]["host"] == f"{NAME}-n0"
    assert raw["meta"]["cluster"]["rate_bit"] == 10**9
    assert netns.list_namespaces(NAME) == []
