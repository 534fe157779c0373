# Sourced by simulator_repeats.sh and cluster_simulator_repeats.sh (not run on its own).
# rehearse BACKEND N B DIR: one process doing rank 0's work of the BACKEND job at N ranks and batch B per rank
# (GPTDIST_FAKE_WORLD=N: torch's fake process group, collectives that move nothing), into DIR/BACKEND-fN-bB.
rehearse() {
  mkdir -p "$4"
  GPTDIST_FAKE_WORLD=$2 python launch/train.py --config configs/scaling_cpu.yaml --backend "$1" \
    --data.batch_size "$3" --train.global_batch_tokens $(($2 * $3 * 64)) --train.max_steps "$STEPS" \
    --log.out_dir "$4" --log.run_name "$1-f$2-b$3" --log.overwrite true > "$4/$1-f$2-b$3.console.txt" 2>&1
}
# copies K B: K copies of the 1-rank manual job of configs/scaling_cpu.yaml at batch B, started together, no
# communication (the CPU contention input, `simulate.py contention`), into $RR/copies/kK-bB-<c>, $STEPS steps each.
copies() {
  local pids=()
  for c in $(seq 0 $(($1 - 1))); do
    torchrun --standalone --nproc-per-node 1 launch/train.py --config configs/scaling_cpu.yaml --backend manual \
      --data.batch_size "$2" --train.global_batch_tokens $(($2 * 64)) --train.max_steps "$STEPS" \
      --log.out_dir "$RR/copies" --log.run_name "k$1-b$2-$c" --log.overwrite true > /dev/null 2>&1 & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
# lockstep_contention K B DIR: K copies of the 1-rank job at batch B held in lock-step (a barrier before each
# step, each copy its own replica, nothing exchanged: `simulate.py lockstep`) over one copy alone, measured just
# before and just after them (a drift of the machine's speed between them cancels); prints the factor, writes
# DIR/lockstep_k1_bB_{before,after}.json and DIR/lockstep_kK_bB.json.
lockstep_contention() {
  local probe=(launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch "$2" --steps "$STEPS" --skip "$WARMUP")
  local solo="$3/lockstep_k1_b$2"
  torchrun --standalone --nproc-per-node 1 "${probe[@]}" --out "${solo}_before.json" > /dev/null
  torchrun --standalone --nproc-per-node "$1" "${probe[@]}" --out "$3/lockstep_k$1_b$2.json" > /dev/null
  torchrun --standalone --nproc-per-node 1 "${probe[@]}" --out "${solo}_after.json" > /dev/null
  PYTHONPATH=$PWD python - "$3/lockstep_k$1_b$2.json" "${solo}_before.json" "${solo}_after.json" <<'PY'
import json, sys
from gptdist.studies.simulator.lockstep import contention_factor
copies, *solos = (json.load(open(f)) for f in sys.argv[1:])
print(f"{contention_factor(copies, solos):.4f}")
PY
}
