#!/usr/bin/env bash
# Third-version validation runs (docs/scaling.md, "Validation"): manual backend, strong scaling (global batch
# 8 x 64 tokens), interleaved over rounds so the other jobs on this shared 2-core machine hit every case alike.
# Per round: 1 rank at b=8 and b=2 (the simulator's inputs), 2 and 4 ranks (the validation targets), and the
# INDEPENDENT contention measurement: K copies of the 1-rank b=8/K job run at once, no communication, which
# gives how much slower compute runs when K processes share the cores (`measured contention`).
#   bash launch/reproduce/simulator_cpu_gloo_shared_remeasure.sh ROUNDS OUT_RUNS_DIR [FIRST_ROUND]
set -euo pipefail
ROUNDS=${1:-2}; RUNS=${2:-runs/sim2}; FIRST=${3:-1}
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
common=(--config configs/scaling_cpu.yaml --backend manual --train.max_steps 12 --log.overwrite true)
dist() {  # name nproc batch
  python -m torch.distributed.run --standalone --nproc-per-node "$2" launch/train.py "${common[@]}" \
    --data.batch_size "$3" --train.global_batch_tokens $(( $3 * 64 * $2 )) --log.out_dir "$RUNS/r$r" --log.run_name "$1" > "$RUNS/r$r/$1.log" 2>&1
}
solo_k() {  # K concurrent independent 1-rank runs at batch b
  local k=$1 b=$2 pids=()
  for i in $(seq 0 $((k - 1))); do
    python launch/train.py "${common[@]}" --data.batch_size "$b" --train.global_batch_tokens $(( b * 64 )) \
      --log.out_dir "$RUNS/r$r" --log.run_name "solo-k$k-b$b-$i" > "$RUNS/r$r/solo-k$k-b$b-$i.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}
for r in $(seq "$FIRST" $((FIRST + ROUNDS - 1))); do
  mkdir -p "$RUNS/r$r"
  if (( r % 2 )); then order="n1b8 n2 n4 k2 k4 n1b2"; else order="n4 k4 n1b2 k2 n2 n1b8"; fi
  for job in $order; do
    echo "$(date -u +%T) round $r $job"
    case $job in
      n1b8) dist manual-n1-b8 1 8 ;; n1b2) dist manual-n1-b2 1 2 ;;
      n2) dist manual-n2-b4 2 4 ;; n4) dist manual-n4-b2 4 2 ;;
      k2) solo_k 2 4 ;; k4) solo_k 4 2 ;;
    esac
  done
done
echo "$(date -u +%T) done"
