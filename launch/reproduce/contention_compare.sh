#!/usr/bin/env bash
# Why do two training ranks on the 2-core machine compute slower than any contention probe says? Side by side,
# ROUNDS times, on 127.0.0.1 (for understanding, not a simulator input: step 3 is a multi-rank training run):
#   1. a rehearsal of the manual 2-rank job at b = 4, alone (one process: rank 0's work, fake collectives);
#   2. two of those rehearsals at once, free (two processes, nothing exchanged, each the whole trainer);
#   3. the one-node study's manual job at 1 and 2 ranks (strong, global batch 4: b = 2 per rank at 2 ranks; so
#      its forward and backward compare with 1-4 only through the batch, its optimizer and clip directly);
#   4. the lock-step probe: one copy, then two copies (`simulate.py lockstep`, TrainStep only, a barrier per step);
#   5. with ALIGN=1, the same probe with its phases aligned too (`--align-phases`: a barrier before clip + optimizer,
#      where the job's all-reduce aligns its ranks).
# Then the phases of every run (docs/results/simulator_repeats_cpu/phases.py) and the probe's factor.
#     ROUNDS=2 STEPS=14 WARMUP=4 ALIGN=1 OUT=docs/results/contention_compare_cpu bash launch/reproduce/contention_compare.sh
set -euo pipefail
ROUNDS=${ROUNDS:-2}; STEPS=${STEPS:-14}; WARMUP=${WARMUP:-4}; OUT=${OUT:-runs/contention_compare/report}
RUNS=${RUNS:-runs/contention_compare}
export OMP_NUM_THREADS=1
source "$(dirname "$0")/simulator_inputs.sh"  # rehearse BACKEND N B DIR
mkdir -p "$OUT"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
for i in $(seq 1 "$ROUNDS"); do
  RR=$RUNS/round$i
  stamp "round $i start"
  rehearse manual 2 4 "$RR/alone"
  rehearse manual 2 4 "$RR/free0" & a=$!; rehearse manual 2 4 "$RR/free1" & b=$!; wait $a $b
  python launch/scaling.py --config configs/scaling_cpu.yaml --backends manual --world-sizes 1,2 --modes strong \
    --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/real" --out "$OUT/round$i/real" > /dev/null
  probe=(launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch 4 --steps "$STEPS" --skip "$WARMUP")
  torchrun --standalone --nproc-per-node 1 "${probe[@]}" --out "$OUT/round$i/lockstep_k1.json" > /dev/null
  torchrun --standalone --nproc-per-node 2 "${probe[@]}" --out "$OUT/round$i/lockstep_k2.json" > /dev/null
  echo "lock-step 2 copies at b = 4: $(python launch/simulate.py lockstep-factor "$OUT/round$i/lockstep_k2.json" "$OUT/round$i/lockstep_k1.json")" \
    | tee "$OUT/round$i/lockstep.txt"
  if [[ -n ${ALIGN:-} ]]; then
    torchrun --standalone --nproc-per-node 2 "${probe[@]}" --align-phases --out "$OUT/round$i/aligned_k2.json" > /dev/null
    echo "phase-aligned 2 copies at b = 4: $(python launch/simulate.py lockstep-factor "$OUT/round$i/aligned_k2.json" "$OUT/round$i/lockstep_k1.json")" \
      | tee "$OUT/round$i/aligned.txt"
  fi
  stamp "round $i done"
done
python docs/results/simulator_repeats_cpu/phases.py "$RUNS" > "$OUT/phases.txt"  # 4 warm-up steps left out
cat "$OUT/phases.txt"
