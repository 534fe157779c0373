#!/usr/bin/env bash
# The simulator's validation as a user re-runs it, measured in ONE sitting and repeated: each repeat runs the
# study, extracts fresh 1-rank timelines from it (the 1-rank runs only), measures fresh comm_bench tables at
# 2 ranks and validates; at the end the error per run with its spread over the repeats.
#     REPEATS=3 STEPS=30 WARMUP=5 OUT=docs/results/simulator_repeats_cpu bash launch/reproduce/simulator_repeats.sh
# (issue 20's re-run: --backends manual,fsdp --world-sizes 1,2 --modes strong --steps 30 --warmup 5, extract --skip 5)
set -euo pipefail
REPEATS=${REPEATS:-3}; STEPS=${STEPS:-30}; WARMUP=${WARMUP:-5}; OUT=${OUT:-runs/simulator_repeats}
BACKENDS=${BACKENDS:-manual,fsdp}; WORLDS=${WORLDS:-1,2}; RUNS=${RUNS:-runs/simulator_repeats}
export OMP_NUM_THREADS=1
validations=()
for i in $(seq 1 "$REPEATS"); do
  R=$OUT/repeat$i; mkdir -p "$R/timelines"
  python launch/scaling.py --config configs/scaling_cpu.yaml --backends "$BACKENDS" --world-sizes "$WORLDS" \
    --modes strong --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RUNS/repeat$i" --out "$R/study"
  torchrun --standalone --nproc-per-node 2 comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter \
    -b 1K -e 64M --out "$R/comm_n2" --overwrite
  spec=""
  for b in ${BACKENDS//,/ }; do
    one_rank=$(ls -d "$RUNS/repeat$i/$b-n1-b"* | head -1)  # the study's 1-rank run (b = the global batch)
    python launch/simulate.py extract "$one_rank" --skip "$WARMUP" --out "$R/timelines/$b.json" > /dev/null
    spec+="${spec:+,}$b=$R/timelines/$b.json"
  done
  python launch/simulate.py validate "$spec" --comm-table "$R/comm_n2" --study "$R/study/results.json" \
    --backends "$BACKENDS" --modes strong --cores "$(getconf _NPROCESSORS_ONLN)" --no-prefetch --out "$R/validation"
  validations+=("$R/validation/validation.json")
done
python launch/simulate.py repeats "${validations[@]}" --out "$OUT"
