"""Median per-phase times (ms) of the sittings' run folders, the raw numbers behind the phase comparisons in
this README, ../cluster_simulator_repeats_cpu_netns/README.md and ../simulator_repeats_rehearsal_cpu/README.md.
From the repository root, while the run folders are still there (runs/ is not committed):

    python docs/results/simulator_repeats_cpu/phases.py runs/simulator_repeats runs/cluster_simulator_repeats
    python docs/results/simulator_repeats_cpu/phases.py runs/simulator_repeats_r     # the sitting with rehearsals

FSDP runs also get forward and backward less their own collectives (fwd-comm, bwd-comm): the forward's
collectives are a step's first n_layer + 1 all-gathers (the root and each block), the backward's the other
all-gathers and reduce-scatters. A rehearsal's (GPTDIST_FAKE_WORLD) are its fake collectives' own time.
"""

import json
import statistics
import sys
from pathlib import Path

KEYS = ["forward", "backward", "grad_sync", "clip", "optimizer", "compute", "comm/total", "comm/exposed", "step"]
SKIP = {"simulator_repeats": 5, "cluster_simulator_repeats": 4, "simulator_repeats_r": 5}  # each sitting's WARMUP
N_LAYER = 4  # configs/scaling_cpu.yaml: gpt2-tiny


def fsdp_split(rank_dir: Path, rows: list[dict]) -> dict[str, float]:
    per_step: dict[int, list[dict]] = {}
    for line in (rank_dir / "collectives.jsonl").read_text().splitlines():
        c = json.loads(line)
        if c["op"] in ("all_gather", "reduce_scatter"):
            per_step.setdefault(c["step"], []).append(c)
    fwd, bwd = [], []
    for r in rows:
        colls = per_step.get(r["step"], [])
        fwd.append(r["time/forward_ms"] - sum(c["duration_ms"] for c in colls[:N_LAYER + 1]))
        bwd.append(r["time/backward_ms"] - sum(c["duration_ms"] for c in colls[N_LAYER + 1:]))
    return {"fwd-comm": statistics.median(fwd), "bwd-comm": statistics.median(bwd)}


for root in map(Path, sys.argv[1:]):
    skip = SKIP.get(root.name, 4)
    print(f"# {root} (first {skip} steps left out; medians over the kept steps)")
    for steps in sorted(root.glob("*/*/*/ranks/rank*/steps.jsonl")):
        rows = [json.loads(line) for line in steps.read_text().splitlines()][skip:]
        cells = []
        for k in KEYS:
            key = k + "_ms" if "/" in k else ("step_ms" if k == "step" else f"time/{k}_ms")
            cells.append(f"{k}={statistics.median(r.get(key, 0.0) for r in rows):.1f}")
        run = steps.parents[2].relative_to(root)
        if "fsdp" in run.name and (steps.parent / "collectives.jsonl").is_file():
            cells += [f"{k}={v:.1f}" for k, v in fsdp_split(steps.parent, rows).items()]
        print(f"{str(run):32s} {steps.parent.name}  " + " ".join(cells))
