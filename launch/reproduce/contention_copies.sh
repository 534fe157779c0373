# Sourced by simulator_repeats.sh and cluster_simulator_repeats.sh (not run on its own): the simulator's inputs.
# rehearse BACKEND N B DIR: one process doing rank 0's work of the BACKEND job at N ranks and batch B per rank
# (GPTDIST_FAKE_WORLD=N: torch's fake process group, collectives that move nothing), into DIR/BACKEND-fN-bB.
rehearse() {
  mkdir -p "$4"
  GPTDIST_FAKE_WORLD=$2 python launch/train.py --config configs/scaling_cpu.yaml --backend "$1" \
    --data.batch_size "$3" --train.global_batch_tokens $(($2 * $3 * 64)) --train.max_steps "$STEPS" \
    --log.out_dir "$4" --log.run_name "$1-f$2-b$3" --log.overwrite true > "$4/$1-f$2-b$3.console.txt" 2>&1
}
# message_sizes DIR WORLDS: the message sizes the simulator will ask of the comm tables when it replays every
# backend of $BACKENDS at WORLDS (e.g. 2,4), for `comm_bench --sizes`: taken from a short rehearsal of each
# backend at 2 ranks (a bucket layout and FSDP's units do not depend on the world size) into DIR. The tables are
# then read at the sizes a training step moves instead of interpolated between sizes a factor 2 apart (gloo's
# all-gather is 3.8-5x slower at 64 MiB than at 32 MiB; FSDP's 51.6 MB root unit lies between).
message_sizes() {
  local timelines=() bk
  for bk in ${BACKENDS//,/ }; do
    STEPS=6 rehearse "$bk" 2 2 "$1"
    python launch/simulate.py extract "$1/$bk-f2-b2" --skip 2 --out "$1/$bk-f2-b2.json" > /dev/null
    timelines+=("$1/$bk-f2-b2.json")
  done
  python launch/simulate.py sizes "${timelines[@]}" --world-sizes "$2"
}
# lockstep_contention K B DIR: K copies of the 1-rank job at batch B held in lock-step (a barrier before each
# step, each copy its own replica, nothing exchanged: `simulate.py lockstep`) over one copy alone, measured just
# before and just after them (a drift of the machine's speed between them cancels); prints the factor, writes
# DIR/lockstep_k1_bB_{before,after}.json and DIR/lockstep_kK_bB.json. A comparison input: the model of record
# takes the contention from the core count (max(1, N·threads/cores)).
lockstep_contention() {
  local probe=(launch/simulate.py lockstep --config configs/scaling_cpu.yaml --batch "$2" --steps "$STEPS" --skip "$WARMUP")
  local solo="$3/lockstep_k1_b$2"
  torchrun --standalone --nproc-per-node 1 "${probe[@]}" --out "${solo}_before.json" > /dev/null
  torchrun --standalone --nproc-per-node "$1" "${probe[@]}" --out "$3/lockstep_k$1_b$2.json" > /dev/null
  torchrun --standalone --nproc-per-node 1 "${probe[@]}" --out "${solo}_after.json" > /dev/null
  python launch/simulate.py lockstep-factor "$3/lockstep_k$1_b$2.json" "${solo}_before.json" "${solo}_after.json"
}
