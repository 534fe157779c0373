"""An emulated cluster on one Linux machine: nodes are network namespaces joined by a shaped link.

state.py   the one state file per cluster (what `up` made, so `down` finds it)
netns.py   namespaces, veth pairs, the bridge, tc shaping; run commands in a node
runner.py  one command (e.g. torchrun --node-rank r) per node, all at once
slurm.py   a real slurmctld + one slurmd per node namespace
"""
