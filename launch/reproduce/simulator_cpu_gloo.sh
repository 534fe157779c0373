#!/usr/bin/env bash
# Rebuilds this folder from the scaling study's run folders: runs/scaling (docs/results/scaling_cpu_gloo)
# and runs/scaling_r2 (its repeat, docs/results/scaling_cpu_gloo/repeat). From the repository root:
#     bash launch/reproduce/simulator_cpu_gloo.sh
set -euo pipefail
D=docs/results/simulator_cpu_gloo
TABLE=docs/results/comm_bench_cpu_gloo/n2,docs/results/comm_bench_cpu_gloo/n4
FIT=docs/results/comm_bench_cpu_gloo/fit.json
mkdir -p "$D/timelines" "$D/fit" "$D/repeat"

# 1. one-rank timelines of each backend at b = 8 (the strong-scaling global batch) and b = 2 (weak), warm-up left out
for round in scaling scaling_r2; do
  for backend in manual ddp fsdp; do
    for b in 8 2; do
      python launch/simulate.py extract "runs/$round/$backend-n1-b$b" --skip 5 \
        --out "$D/timelines/$round-$backend-n1-b$b.json" > /dev/null
    done
  done
done
timelines() {  # BACKEND=PATH for each backend, at batch $2 of round $1
  echo "manual=$D/timelines/$1-manual-n1-b$2.json,ddp=$D/timelines/$1-ddp-n1-b$2.json,fsdp=$D/timelines/$1-fsdp-n1-b$2.json"
}
COMMON=(--backends manual,ddp,fsdp --modes strong,weak --cores 2 --no-prefetch)

# 2. predicted vs measured: the study, with the measured comm tables (the model of record) ...
python launch/simulate.py validate "$(timelines scaling 8)" --small-timeline "$(timelines scaling 2)" \
  --comm-table "$TABLE" --study docs/results/scaling_cpu_gloo/results.json "${COMMON[@]}" --out "$D" | tee "$D/console.txt"
# ... with comm_bench's alpha-beta fits instead of the tables
python launch/simulate.py validate "$(timelines scaling 8)" --small-timeline "$(timelines scaling 2)" \
  --fit "$FIT" --study docs/results/scaling_cpu_gloo/results.json "${COMMON[@]}" --out "$D/fit" | tee "$D/fit/console.txt"
# ... and the repeat of the study, from its own one-rank runs
python launch/simulate.py validate "$(timelines scaling_r2 8)" --small-timeline "$(timelines scaling_r2 2)" \
  --comm-table "$TABLE" --study docs/results/scaling_cpu_gloo/repeat/results.json "${COMMON[@]}" --out "$D/repeat" \
  | tee "$D/repeat/console.txt"

# 3. the study's plots, predicted (strong scaling from the b = 8 timelines)
python launch/simulate.py predict "$(timelines scaling 8)" --small-timeline "$(timelines scaling 2)" \
  --comm-table "$TABLE" --backends manual,ddp,fsdp --modes strong --world-sizes 1,2,4 --cores 2 --no-prefetch \
  --title " (CPU/gloo, 2 cores)" --out "$D" | tee -a "$D/console.txt"
