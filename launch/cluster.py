"""A cluster on one machine: K nodes as network namespaces joined by a tc-shaped link (needs root, iproute2).

    python launch/cluster.py up --nodes 2 --rate 1gbit            # nodes gd-n0 (10.213.0.11), gd-n1 (.12)
    python launch/cluster.py status
    python launch/cluster.py exec n0 -- ping -c1 gd-n1
    python launch/cluster.py torchrun --nproc-per-node 1 -- launch/train.py --config configs/tiny_cpu.yaml
    python launch/cluster.py run -- torchrun --nnodes {nnodes} --node-rank {node_rank} --rdzv-endpoint {head}:29500 ...
    python launch/cluster.py up --nodes 2 --rate 1gbit --slurm    # plus slurmctld + one slurmd per node
    python launch/cluster.py exec n0 -- sbatch launch/slurm_2nodes.sbatch
    python launch/cluster.py down                                  # removes everything; safe to repeat

`torchrun` prints and runs, on every node at once, the command a user types on real nodes (one torchrun per
node, rendezvous on node 0, gloo bound to the node's interface). There is no added latency (no netem here).
See docs/cluster.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402


def main(argv: list[str]) -> int:
    from gptdist.cluster import netns, runner, state

    command = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=state.DEFAULT_NAME, help="cluster name, a prefix of everything it makes (default gd)")
    sub = p.add_subparsers(dest="action", required=True)
    u = sub.add_parser("up", help="make the nodes and the link")
    u.add_argument("--nodes", type=int, default=2)
    u.add_argument("--rate", default="1gbit", help="each node's egress rate, e.g. 250mbit, 1gbit (default 1gbit)")
    u.add_argument("--subnet", default="10.213.0.0/24", help="private subnet of the nodes (default 10.213.0.0/24)")
    u.add_argument("--slurm", action="store_true", help="also start slurmctld (on n0) and one slurmd per node")
    sub.add_parser("down", help="remove everything the cluster made (idempotent)")
    sub.add_parser("status", help="nodes, addresses, link rate, processes")
    e = sub.add_parser("exec", help="run a command in one node: exec NODE -- cmd")
    e.add_argument("node", help="n0, n1, ... (or the full name)")
    sub.add_parser("run", help="run a command on every node at once: {node_rank} {nnodes} {head} {addr} are filled in")
    pl = sub.add_parser("plot", help="intra- vs inter-node comm_bench busbw in one plot: plot LABEL=RESULTS[@RATE] ...")
    pl.add_argument("series", nargs="+", help="LABEL=comm_bench results folder, @RATE for a shaped link (e.g. @1gbit)")
    pl.add_argument("--op", default="all_reduce")
    pl.add_argument("--out", required=True)
    t = sub.add_parser("torchrun", help="one torchrun per node running SCRIPT ARGS: torchrun -- SCRIPT ARGS")
    t.add_argument("--nproc-per-node", type=int, default=1)
    t.add_argument("--port", type=int, default=29500)
    t.add_argument("--rdzv-id", default="gptdist")
    args = p.parse_args(argv)
    state.check_name(args.name)

    if args.action == "plot":  # no root needed
        import json
        from gptdist.cluster import report
        series = [report.parse_series(spec) for spec in args.series]
        summary = [report.link_summary(args.op, *s) for s in series]
        print(f"wrote {report.plot(series, Path(args.out), args.op)}")
        (Path(args.out) / f"{args.op}_link_summary.json").write_text(json.dumps(summary, indent=2))
        for row in summary:
            vs_rate = (f" = {100 * row['busbw_over_rate']:.1f}% of the link; fit >= 1 MiB: "
                       f"{row['fit_busbw_gbps']:.4f} GB/s = {100 * row['fit_busbw_over_rate']:.1f}%") if "link_gbps" in row else ""
            print(f"{row['label']}: busbw {row['busbw_gbps_largest']:.4f} GB/s at {row['largest_bytes']} B{vs_rate}")
        return 0
    if args.action == "up":
        netns.require_host()
        try:
            cluster = netns.up(args.name, args.nodes, args.rate, args.subnet)
            if args.slurm:
                from gptdist.cluster import slurm
                slurm.start(cluster)
        except BaseException:
            netns.down(args.name)
            raise
        print(netns.describe(cluster))
        return 0
    if args.action == "down":
        removed = netns.down(args.name)
        print(f"cluster {args.name}: removed {', '.join(removed) if removed else 'nothing (was not up)'}")
        return 0
    netns.require_host()
    cluster = state.require(args.name)
    if args.action == "status":
        print(netns.describe(cluster))
        return 0
    if not command:
        raise state.ClusterError(f"{args.action}: give the command after --")
    if args.action == "exec":
        import subprocess
        return subprocess.call(netns.exec_argv(cluster, cluster.node(args.node), command))
    if args.action == "run":
        commands = {n.name: runner.fill_placeholders(cluster, n, command) for n in cluster.nodes}
    else:
        commands = {n.name: runner.torchrun_argv(cluster, n, args.nproc_per_node, args.port, command, args.rdzv_id)
                    for n in cluster.nodes}
    for name, cmd in commands.items():
        print(f"[{name}] $ {' '.join(cmd)}", flush=True)
    codes = runner.run_on_nodes(cluster, commands)
    return max(codes.values())


def cli(argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise SystemExit(code)  # a node's command failed: pass its exit status on


if __name__ == "__main__":
    main_guard(cli, sys.argv[1:])
