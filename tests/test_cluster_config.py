"""The emulated cluster's pieces that need no root: rates, names, the one-line refusal without root, the
Slurm config, the per-node torchrun command line. (Real namespaces: test_cluster.py, test_slurm.py.)"""

import subprocess

import pytest

from gptdist.cluster import netns, runner, slurm, state
from gptdist.cluster.state import ClusterError, ClusterState, Node
from launchers import REPO


@pytest.mark.parametrize("text, bits", [("200mbit", 200_000_000), ("1gbit", 1_000_000_000), ("1.5gbit", 1_500_000_000),
                                        ("500kbit", None), ("1gbps", None), ("fast", None), ("100GBIT", 100_000_000_000), ("200gbit", None)])
def test_link_rates_are_tc_bits_per_second(text, bits):
    if bits is None:
        with pytest.raises(ClusterError):
            netns.parse_rate(text)
    else:
        assert netns.parse_rate(text) == bits


@pytest.mark.parametrize("name", ["", "Gd", "9x", "toolongname", "a-b"])
def test_cluster_names_that_could_collide_or_overflow_interface_names_are_refused(name):
    with pytest.raises(ClusterError, match="cluster name"):
        state.check_name(name)


def test_without_root_every_command_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.missing_requirements() == "the emulated cluster needs root (network namespaces, veth, tc)"
    with pytest.raises(ClusterError, match="needs root"):
        netns.up("gdx", 2, "1gbit", "10.214.9.0/24")
    with pytest.raises(ClusterError, match="needs root"):
        netns.down("gdx")


def two_nodes() -> ClusterState:
    cluster = ClusterState(name="gdx", subnet="10.214.9.0/24", rate_bit=10**9)
    cluster.nodes = [Node("gdx-n0", "10.214.9.11", 0), Node("gdx-n1", "10.214.9.12", 1)]
    return cluster


def test_each_node_runs_the_torchrun_line_a_user_types_on_a_real_node():
    cluster = two_nodes()
    cmd = runner.torchrun_argv(cluster, cluster.nodes[1], 2, 29500, ["launch/train.py", "--backend", "fsdp"])
    assert " ".join(cmd) == ("torchrun --nnodes 2 --nproc-per-node 2 --node-rank 1 --rdzv-backend c10d --rdzv-id gptdist "
                             "--rdzv-endpoint gdx-n0:29500 launch/train.py --backend fsdp")
    argv = netns.exec_argv(cluster, cluster.nodes[1], cmd)
    assert argv[:4] == ["ip", "netns", "exec", "gdx-n1"] and "GLOO_SOCKET_IFNAME=eth0" in argv
    assert runner.fill_placeholders(cluster, cluster.nodes[1], ["x", "--node-rank={node_rank}", "{head}:1", "{addr}"]) == \
        ["x", "--node-rank=1", "gdx-n0:1", "10.214.9.12"]


def test_slurm_config_puts_the_controller_on_node_0_and_each_node_at_its_address(tmp_path):
    conf = slurm.slurm_conf(two_nodes(), tmp_path, cpus_per_node=2)
    assert "SlurmctldHost=gdx-n0(10.214.9.11)" in conf
    assert "NodeName=gdx-n1 NodeAddr=10.214.9.12 CPUs=2 State=UNKNOWN" in conf
    assert "ProctrackType=proctrack/linuxproc" in conf and f"StateSaveLocation={tmp_path}/ctld" in conf


def test_the_sbatch_script_parses_and_has_no_job_id_in_its_run_name():
    script = (REPO / "launch" / "slurm_2nodes.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "launch" / "slurm_2nodes.sbatch")]).returncode == 0
    run_name = [line for line in script.splitlines() if line.startswith("RUN_NAME=")]
    assert run_name and "SLURM_JOB_ID" not in run_name[0]
    assert "--cpus-per-task=" in script and "--checkpoint.resume auto" in script
