"""A real Slurm on the emulated cluster: slurmctld on node 0 and one slurmd per node namespace.

Debian's slurm-wlm 22.05 with munge. Everything Slurm writes (config, state, spool, logs, pid files) is
under the cluster's folder; the daemons run inside the node namespaces, so `down` stops them with the
rest. Settings that make slurmd work here: proctrack/linuxproc and task/none (no cgroup confinement),
and cgroup.conf with cgroup/v1, else slurmd stops on the machine's hybrid cgroup mount.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gptdist.cluster.netns import exec_argv
from gptdist.cluster.state import ClusterError, ClusterState, cluster_root

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_PIDFILE = Path("/run/munge/munged.pid")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "sinfo")


def missing_requirements() -> str | None:
    lacking = [tool for tool in DAEMONS if shutil.which(tool) is None]
    if lacking:
        return (f"Slurm is not installed ({', '.join(lacking)} not found): "
                "apt-get install -y slurm-wlm (Debian's package, with munge)")
    return None


def slurm_conf(state: ClusterState, folder: Path, cpus_per_node: int) -> str:
    head = state.nodes[0]
    lines = [
        f"ClusterName={state.name}",
        f"SlurmctldHost={head.name}({head.addr})",
        "SlurmUser=root",
        "AuthType=auth/munge",
        f"StateSaveLocation={folder}/ctld",
        f"SlurmdSpoolDir={folder}/spool/%n",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd-%n.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "KillWait=30",  # seconds between the SIGTERM of a cancel/time limit and the SIGKILL
        "MinJobAge=600",
        "JobCompType=jobcomp/none",
    ]
    lines += [f"NodeName={n.name} NodeAddr={n.addr} CPUs={cpus_per_node} State=UNKNOWN" for n in state.nodes]
    lines.append("PartitionName=cluster Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    munge = subprocess.run(["munge", "-n"], capture_output=True)
    return munge.returncode == 0 and subprocess.run(["unmunge"], input=munge.stdout, capture_output=True).returncode == 0


def _ensure_munge() -> bool:
    """Start munged as the munge user unless one already answers; True if we started it."""
    if _munge_works():
        return False
    run_dir = MUNGE_SOCKET.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True)
    _wait_for(_munge_works, 30, "munged to answer")
    return True


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise ClusterError(f"Slurm: timed out after {timeout_s:g}s waiting for {what}")


def nodes_idle(state: ClusterState) -> bool:
    argv = exec_argv(state, state.nodes[0], ["sinfo", "-h", "-N", "-o", "%N %t"])
    proc = subprocess.run(argv, capture_output=True, text=True)
    states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    return proc.returncode == 0 and all(states.get(n.name) == "idle" for n in state.nodes)


def start(state: ClusterState, cpus_per_node: int | None = None, timeout_s: float = 90) -> None:
    problem = missing_requirements()
    if problem:
        raise ClusterError(problem)
    folder = state.folder / "slurm"
    (folder / "ctld").mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(state, folder, cpus_per_node or os.cpu_count() or 1))
    (folder / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
    state.slurm = {"conf": str(conf), "folder": str(folder), "started_munge": False}
    state.save()
    state.slurm["started_munge"] = _ensure_munge()
    state.save()
    head = state.nodes[0]
    subprocess.run(exec_argv(state, head, ["slurmctld", "-f", str(conf)]), check=True, capture_output=True)
    for node in state.nodes:
        (folder / "spool" / node.name).mkdir(parents=True, exist_ok=True)
        subprocess.run(exec_argv(state, node, ["slurmd", "-f", str(conf), "-N", node.name]), check=True,
                       capture_output=True)
    _wait_for(lambda: nodes_idle(state), timeout_s, f"{len(state.nodes)} idle nodes (logs in {folder})")


def stop(state: ClusterState) -> None:
    """The daemons and jobs live in the node namespaces (netns.down kills those); here: munged, if we
    started it and no other cluster still uses Slurm."""
    if not state.slurm.get("started_munge"):
        return
    others = [p for p in cluster_root().glob("*/slurm/slurm.conf") if p.parents[1].name != state.name]
    if others or not MUNGE_PIDFILE.exists():
        return
    try:
        os.kill(int(MUNGE_PIDFILE.read_text().strip()), signal.SIGTERM)
    except (ValueError, ProcessLookupError):
        pass
