# Sourced by simulator_repeats.sh, cluster_simulator_repeats.sh and contention_compare.sh (not run on its own):
# the simulator's inputs.
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
# contention_probe K B FILE: the CPU contention of K copies of the 1-rank job at batch B, each its own replica,
# nothing exchanged (`simulate.py lockstep --interleave`): a barrier before each step and before clip + optimizer
# (where a data-parallel job's all-reduce aligns its ranks, so their memory-bound phases collide), and every other
# step one copy runs alone, the copies taking turns, so the slowdown is read against steps alone a second apart
# (this VM's speed moves 10-15% within a minute). WARMUP steps left out, then 6 steps alone per copy.
# `simulate.py lockstep-factor --phases FILE...` gives the FORWARD_BACKWARD:UPDATE factors --contention takes.
contention_probe() {
  torchrun --standalone --nproc-per-node "$1" launch/simulate.py lockstep --config configs/scaling_cpu.yaml \
    --batch "$2" --steps $((WARMUP + 12 * $1)) --skip "$WARMUP" --interleave --out "$3" > /dev/null
}
# backend_probes R BACKEND WHEN: contention_probe of 2 copies at b = 4 (the 2-rank layouts) and 4 at b = 2 (2x2),
# into R/probe_BACKEND_k{2,4}_WHEN.json; probed_contention R: each backend's before and after probes pooled, in
# the form `simulate.py validate --contention` takes (BACKEND@N=FORWARD_BACKWARD:UPDATE,...)
backend_probes() {
  contention_probe 2 4 "$1/probe_$2_k2_$3.json"; contention_probe 4 2 "$1/probe_$2_k4_$3.json"
}
probed_contention() {
  local probed="" bk n
  for bk in ${BACKENDS//,/ }; do
    for n in 2 4; do
      probed+="${probed:+,}$bk@$n=$(python launch/simulate.py lockstep-factor --phases "$1/probe_${bk}_k${n}_before.json" "$1/probe_${bk}_k${n}_after.json")"
    done
  done
  echo "$probed"
}
# cluster_start: a 2-node cluster $C at $RATE on $SUBNET (taken down on exit), the message sizes of $BACKENDS into
# $OUT/sizes.txt (message_sizes, at 2 and 4 ranks), and $CB, the comm_bench command of the tables; `stamp` logs.
cluster_start() {
  trap '$C down' EXIT
  $C down > /dev/null
  $C up --nodes 2 --rate "$RATE" --subnet "$SUBNET"
  stamp "cluster up ($RATE)"
  message_sizes "$RUNS/sizes" 2,4 > "$OUT/sizes.txt"
  stamp "sizes $(cat "$OUT/sizes.txt")"
  CB="comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter --sizes $(cat "$OUT/sizes.txt") --overwrite"
}
# one_node_tables T WHEN: comm_bench in node 0 of cluster $C (where a study runs its 1-node layouts), 2 and 4
# ranks, into T/intra_n{2,4}_WHEN; across_tables T: across the link at 2x1 and 2x2, back to back and with each
# call after IDLE_GAP_MS of idle link, into T/inter_2x{1,2}[_idle]. $CB: the comm_bench command (ops, sizes).
one_node_tables() {
  $C exec n0 -- torchrun --standalone --nproc-per-node 2 $CB $INTRA_ARGS --out "$1/intra_n2_$2" > "$1/intra_n2_$2.console.txt"
  $C exec n0 -- torchrun --standalone --nproc-per-node 4 $CB $INTRA_ARGS --out "$1/intra_n4_$2" > "$1/intra_n4_$2.console.txt"
}
across_tables() {
  $C torchrun --port 29710 --nproc-per-node 1 -- $CB $COMM_ARGS --out "$1/inter_2x1" > "$1/inter_2x1.console.txt"
  $C torchrun --port 29711 --nproc-per-node 2 -- $CB $COMM_ARGS --out "$1/inter_2x2" > "$1/inter_2x2.console.txt"
  $C torchrun --port 29712 --nproc-per-node 1 -- $CB $COMM_ARGS --gap-ms "$IDLE_GAP_MS" --out "$1/inter_2x1_idle" > "$1/inter_2x1_idle.console.txt"
  $C torchrun --port 29713 --nproc-per-node 2 -- $CB $COMM_ARGS --gap-ms "$IDLE_GAP_MS" --out "$1/inter_2x2_idle" > "$1/inter_2x2_idle.console.txt"
}
