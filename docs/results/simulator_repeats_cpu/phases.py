"""Median per-phase times (ms) of the sittings' run folders, the raw numbers behind the phase comparisons in
this README and ../cluster_simulator_repeats_cpu_netns/README.md. From the repository root, while the run
folders are still there (runs/ is not committed):

    python docs/results/simulator_repeats_cpu/phases.py runs/simulator_repeats runs/cluster_simulator_repeats
"""

import json
import statistics
import sys
from pathlib import Path

KEYS = ["forward", "backward", "grad_sync", "clip", "optimizer", "compute", "comm/total", "comm/exposed", "step"]
SKIP = {"simulator_repeats": 5, "cluster_simulator_repeats": 4}  # each sitting's WARMUP

for root in map(Path, sys.argv[1:]):
    skip = SKIP.get(root.name, 4)
    print(f"# {root} (first {skip} steps left out; medians over the kept steps)")
    for steps in sorted(root.glob("repeat*/*/*/ranks/rank*/steps.jsonl")):
        rows = [json.loads(line) for line in steps.read_text().splitlines()][skip:]
        cells = []
        for k in KEYS:
            key = k + "_ms" if "/" in k else ("step_ms" if k == "step" else f"time/{k}_ms")
            cells.append(f"{k}={statistics.median(r.get(key, 0.0) for r in rows):.1f}")
        run = steps.parents[2].relative_to(root)
        print(f"{str(run):32s} {steps.parent.name}  " + " ".join(cells))
