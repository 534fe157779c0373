# Sourced by simulator_repeats.sh and cluster_simulator_repeats.sh (not run on its own).
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
