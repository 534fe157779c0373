"""The emulated cluster (gptdist/cluster, launch/cluster.py): nodes as network namespaces on a shaped link.
Needs root and iproute2 (CI runs as root); skips with the reason elsewhere. Every test tears down what it
made, also when it fails."""

import re
import subprocess
import sys
import time

import pytest

from gptdist.cluster import netns, state
from launchers import REPO, subprocess_env
# The single-process reference and the comparison, exactly as the 1-node multi-process tests use them.
from test_parallel_training import STEPS, as_argv, assert_matches_reference, data_dir, losses, overrides, reference  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.skipif(netns.missing_requirements() is not None,
                                                   reason=netns.missing_requirements() or "")]
NAME, SUBNET = "gdtc", "10.214.3.0/24"  # a prefix and subnet of their own: never a user's cluster


def cluster_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "launch/cluster.py", "--name", NAME, *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cluster.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def leftovers() -> list[str]:
    """Anything of cluster NAME still on the machine: namespaces, per-namespace hosts files, its state."""
    found = netns.list_namespaces(NAME) + [str(p) for p in netns.HOSTS_DIR.glob(f"{NAME}-*")]
    return found + ([str(state.cluster_root() / NAME)] if (state.cluster_root() / NAME).exists() else [])


@pytest.fixture(scope="module")
def cluster():
    cluster_cli("down")  # a crashed earlier run may have left it
    try:
        cluster_cli("up", "--nodes", "2", "--rate", "1gbit", "--subnet", SUBNET)
        yield state.require(NAME)
    finally:
        cluster_cli("down", check=False)


def test_up_and_down_leave_nothing_behind_also_after_a_crash():
    cluster_cli("down")
    try:
        out = cluster_cli("up", "--nodes", "3", "--rate", "250mbit", "--subnet", SUBNET).stdout
        assert sorted(netns.list_namespaces(NAME)) == [f"{NAME}-n0", f"{NAME}-n1", f"{NAME}-n2", f"{NAME}-sw"]
        assert "10.214.3.13" in out  # node 2's address
        # Each node has its address inside its namespace, shaped with tbf at the chosen rate.
        addr = subprocess.run(["ip", "-n", f"{NAME}-n2", "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True)
        assert "10.214.3.13/24" in addr.stdout
        qdisc = subprocess.run(["ip", "netns", "exec", f"{NAME}-n2", "tc", "qdisc", "show", "dev", "eth0"],
                               capture_output=True, text=True).stdout
        assert "tbf" in qdisc and "250Mbit" in qdisc, qdisc
        # ...and none of it in the root namespace.
        assert "10.214.3." not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        # A crash that lost the state file: `down` still finds everything by the cluster's prefix.
        (state.cluster_root() / NAME / "state.json").unlink()
    finally:
        cluster_cli("down")
    assert leftovers() == []
    assert "nothing" in cluster_cli("down").stdout  # idempotent


@pytest.mark.parametrize("args, message", [
    (["up", "--nodes", "1"], "at least 2 nodes"),
    (["up", "--rate", "fast"], "write it like 250mbit"),
    (["up", "--subnet", "8.8.8.0/24"], "private IPv4"),
    (["exec", "n0", "--", "true"], "no cluster 'gdtc' is up"),
])
def test_bad_input_is_refused_with_one_line(args, message):
    cluster_cli("down")
    proc = cluster_cli(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert leftovers() == []


def test_two_nodes_rendezvous_across_the_link(cluster):
    out = cluster_cli("torchrun", "--port", "29611", "--", "comm_bench/allreduce.py", "-b", "1K", "-e", "64K",
                      "-w", "1", "-n", "2", "--no-fit", "--out", "/tmp/gdtc_rdzv", "--overwrite").stdout
    # One rank on each node, each with its node's host name; results checked (0 wrong).
    assert re.search(r"Rank\s+0 Pid\s+\d+ on\s+gdtc-n0", out) and re.search(r"Rank\s+1 Pid\s+\d+ on\s+gdtc-n1", out), out
    assert "nranks 2 nodes 2" in out and "Out of bounds values : 0 OK" in out


@pytest.mark.parametrize("backend", ["fsdp", "manual"])
def test_two_node_losses_and_weights_equal_the_single_process_run(cluster, data_dir, tmp_path, reference, backend):
    args = as_argv(overrides(data_dir, tmp_path, backend, backend=backend))
    cluster_cli("torchrun", "--port", "29612", "--", "launch/train.py", *args)
    run = tmp_path / backend
    got = losses(run)
    assert len(got) == STEPS
    assert_matches_reference(reference, got, run)


def test_a_killed_node_ends_the_other_within_the_timeout_with_one_line(cluster, data_dir, tmp_path):
    values = overrides(data_dir, tmp_path, "killed", backend="manual", **{"train.max_steps": 100000, "dist.timeout_s": 10})
    proc = subprocess.Popen([sys.executable, "launch/cluster.py", "--name", NAME, "torchrun", "--port", "29613", "--",
                             "launch/train.py", *as_argv(values)],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().count('"kind": "train"') >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the 2-node run never logged two steps"
            time.sleep(0.5)
        netns.kill_namespace_processes(f"{NAME}-n1")  # node 1 dies: its torchrun agent and its worker
        t0 = time.monotonic()
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        netns.kill_namespace_processes(f"{NAME}-n0")
    assert time.monotonic() - t0 < 120
    assert proc.returncode != 0
    assert re.search(r"\[gdtc-n0\] \[rank0\] error: rank 0: collective failed at step \d+ during ", output), output[-5000:]
