#!/usr/bin/env bash
# Does the interleaved contention probe see what two real training ranks on this machine see? ROUNDS times, on
# 127.0.0.1 (a check of the probe, not a simulator input: step 3 is a multi-rank training run):
#   1. the probe, 2 copies at b = 2 (`contention_probe`: phase-aligned, every other step one copy alone);
#   2. a rehearsal of the manual 2-rank job at b = 2 (one process doing rank 0's work, fake collectives);
#   3. the one-node study's manual job, strong, global batch 4: at 1 rank (b = 4; the study needs its baseline) and
#      at 2 ranks (b = 2 per rank);
#   4. the rehearsal again, 5. the probe again.
# Then per round: the real ranks' phases over the rehearsals' (their mean), beside the two probes' factors
# (probe_vs_training.md).
#     ROUNDS=3 STEPS=24 WARMUP=4 OUT=docs/results/probe_vs_training_cpu bash launch/reproduce/probe_vs_training.sh
set -euo pipefail
ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-24}; WARMUP=${WARMUP:-4}; OUT=${OUT:-runs/probe_vs_training/report}
RUNS=${RUNS:-runs/probe_vs_training}
export OMP_NUM_THREADS=1
source "$(dirname "$0")/simulator_inputs.sh"  # rehearse BACKEND N B DIR, contention_probe K B FILE
mkdir -p "$OUT"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
for i in $(seq 1 "$ROUNDS"); do
  RR=$RUNS/round$i
  stamp "round $i start"
  contention_probe 2 2 "$OUT/round$i/probe_before.json"
  rehearse manual 2 2 "$RR/before"
  python launch/scaling.py --config configs/scaling_cpu.yaml --backends manual --world-sizes 1,2 --modes strong \
    --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/real" --out "$OUT/round$i/real" > /dev/null
  rehearse manual 2 2 "$RR/after"
  contention_probe 2 2 "$OUT/round$i/probe_after.json"
  stamp "round $i done"
done
python - "$RUNS" "$OUT" "$ROUNDS" "$WARMUP" <<'PY' | tee "$OUT/probe_vs_training.md"
import json, statistics, subprocess, sys
from pathlib import Path
runs, out, rounds, skip = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def phases(rank_dir):  # median ms per phase over the kept steps
    rows = [json.loads(l) for l in (rank_dir / "steps.jsonl").read_text().splitlines()][skip:]
    med = lambda k: statistics.median(r[k] for r in rows)
    return {"forward_backward": med("time/forward_ms") + med("time/backward_ms"),
            "update": med("time/clip_ms") + med("time/optimizer_ms"), "compute": med("time/compute_ms")}
def factors(*probes):
    f = lambda *a: subprocess.run([sys.executable, "launch/simulate.py", "lockstep-factor", *a], check=True,
                                  capture_output=True, text=True).stdout.strip()
    return f(*probes), f("--phases", *probes)
print("| round | rehearsal fwd-bwd / update / compute ms | real ranks fwd-bwd / update / compute ms | real / rehearsal: fwd-bwd, update, compute | probe before: step, fwd-bwd:update | probe after |")
print("|---|---|---|---|---|---|")
for i in range(1, rounds + 1):
    rr = runs / f"round{i}"
    reh = [phases(rr / w / "manual-f2-b2" / "ranks" / "rank0") for w in ("before", "after")]
    reh = {k: statistics.fmean(r[k] for r in reh) for k in reh[0]}
    real = [phases(rr / "real" / "manual-n2-b2" / "ranks" / f"rank{r}") for r in (0, 1)]
    real = {k: statistics.fmean(r[k] for r in real) for k in real[0]}
    ratio = ", ".join(f"{real[k] / reh[k]:.3f}" for k in ("forward_backward", "update", "compute"))
    fmt = lambda d: " / ".join(f"{d[k]:.1f}" for k in ("forward_backward", "update", "compute"))
    before, after = (factors(str(out / f"round{i}" / f"probe_{w}.json")) for w in ("before", "after"))
    print(f"| {i} | {fmt(reh)} | {fmt(real)} | {ratio} | {before[0]}, {before[1]} | {after[0]}, {after[1]} |")
PY
