#!/usr/bin/env bash
# The simulator's validation on the emulated cluster (docs/cluster.md), measured in ONE sitting and repeated:
# the cluster sibling of simulator_repeats.sh. Each repeat measures the simulator's inputs, none of them a
# multi-rank training run -- comm_bench tables in one node (n0 loopback, 2 and 4 ranks) and across the link
# (2x1, 2x2), 1-rank timelines at every per-rank batch the layouts will have (strong, global batch 8:
# b = 8 at 1 rank, 4 at 2 and 2x1, 2 at 2x2; weak: 2), a rehearsal of every multi-rank job (GPTDIST_FAKE_WORLD=N:
# one process doing rank 0's work at N ranks, collectives that move nothing: 2 ranks at b = 4 and 2, 4 at b = 2)
# and the CPU contention, K copies of the 1-rank job held in lock-step (`simulate.py lockstep`: a barrier before
# each step, each copy its own replica, no communication; K copies run free, for comparison) -- then the study itself,
# then the 1-rank runs and rehearsals again (each timeline pools its job's runs from before and after the study:
# this machine's speed drifts by up to ~30% over minutes), then `simulate.py validate` four times: with the
# rehearsals and the lock-step contention (the model of record, validation/), with the free copies' contention
# (validation_free_copies/), with the formula max(1, N·threads/cores) (validation_formula_contention/: needs only
# the core count), and without rehearsals (validation_no_rehearsal/: every layout replays a 1-rank run).
# At the end: the error per run with its spread over the repeats (repeats.md/json, repeats.png). As root, on an
# otherwise idle machine (other work on the cores moves the contention and the 1-rank inputs between runs):
#     REPEATS=2 STEPS=14 WARMUP=4 RATE=1gbit MODES=strong,weak \
#       OUT=docs/results/cluster_simulator_repeats_cpu_netns bash launch/reproduce/cluster_simulator_repeats.sh
# FIRST_MODES: the first repeat's study modes (default MODES); MODES: the rest.
set -euo pipefail
REPEATS=${REPEATS:-2}; STEPS=${STEPS:-14}; WARMUP=${WARMUP:-4}; RATE=${RATE:-1gbit}
MODES=${MODES:-strong}; FIRST_MODES=${FIRST_MODES:-$MODES}
BACKENDS=${BACKENDS:-manual,ddp,fsdp}; WORLDS=${WORLDS:-1,2,2x1,2x2}
OUT=${OUT:-runs/cluster_simulator_repeats/report}; RUNS=${RUNS:-runs/cluster_simulator_repeats}
NAME=${NAME:-csr}; SUBNET=${SUBNET:-10.217.0.0/24}
# up to 64 MiB: FSDP's root unit and the manual backend's largest bucket are 51.5 MB. Across the 1 Gbit/s link a
# 64 MiB all-reduce takes ~1 s, so fewer calls there; in one node the calls are fast and vary, so more of them.
COMM_ARGS=${COMM_ARGS:--b 64K -e 64M -w 1 -n 3}; INTRA_ARGS=${INTRA_ARGS:--b 64K -e 64M -w 2 -n 10}
C="python launch/cluster.py --name $NAME"
CB="comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter $COMM_ARGS --overwrite"
CB_INTRA="comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter $INTRA_ARGS --overwrite"
export OMP_NUM_THREADS=1
CORES=$(getconf _NPROCESSORS_ONLN)  # not `nproc`: it answers OMP_NUM_THREADS (1) when that is set
VALIDATE_ONLY=${VALIDATE_ONLY:-}  # 1: measure nothing, predict again from the inputs and runs already in OUT, RUNS
mkdir -p "$OUT"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
if [[ -z $VALIDATE_ONLY ]]; then
  trap '$C down' EXIT
  $C down > /dev/null
  $C up --nodes 2 --rate "$RATE" --subnet "$SUBNET"
  stamp "cluster up ($RATE)"
fi
validations=(); formula_validations=(); no_rehearsal=(); free_validations=()
source "$(dirname "$0")/contention_copies.sh"  # copies K B, lockstep_contention K B DIR, rehearse BACKEND N B DIR
for i in $(seq 1 "$REPEATS"); do
  R=$OUT/repeat$i; RR=$RUNS/repeat$i; T=$R/tables
  modes=$MODES; [[ $i == 1 ]] && modes=$FIRST_MODES
  mkdir -p "$R/timelines" "$T"
  if [[ -z $VALIDATE_ONLY ]]; then
    stamp "repeat $i start"
    # inputs 1: comm tables, one node (node 0, where the study runs its 1-node layouts) and across the link
    $C exec n0 -- torchrun --standalone --nproc-per-node 2 $CB_INTRA --out "$T/intra_n2" > "$T/intra_n2.console.txt"
    $C exec n0 -- torchrun --standalone --nproc-per-node 4 $CB_INTRA --out "$T/intra_n4" > "$T/intra_n4.console.txt"
    $C torchrun --port 29710 --nproc-per-node 1 -- $CB --out "$T/inter_2x1" > "$T/inter_2x1.console.txt"
    $C torchrun --port 29711 --nproc-per-node 2 -- $CB --out "$T/inter_2x2" > "$T/inter_2x2.console.txt"
    # inputs 2: 1-rank runs at the per-rank batches 4 and 2 (b = 8 is the study's own 1-rank run), again after it
    singles() {  # WHEN BATCHES: the 1-rank runs into $RR/WHEN
      for b in $2; do
        python launch/scaling.py --config configs/scaling_cpu.yaml --cluster "$NAME" --backends "$BACKENDS" \
          --world-sizes 1 --modes strong --per-rank-batch $b --steps "$STEPS" --warmup "$WARMUP" \
          --runs-dir "$RR/$1" --out "$R/$1_b$b"
      done
    }
    rehearsals() {  # WHEN: every multi-rank job's rehearsal into $RR/WHEN
      for bk in ${BACKENDS//,/ }; do rehearse "$bk" 2 4 "$RR/$1"; rehearse "$bk" 2 2 "$RR/$1"; rehearse "$bk" 4 2 "$RR/$1"; done
    }
    singles before "4 2"; rehearsals before
    # inputs 3: CPU contention measured without communication (simulate.py contention): K copies of the 1-rank
    # manual job at once, at the per-rank batch of the layouts with K ranks (2 and 2x1: b = 4; 2x2: b = 2)
    copies 2 4; copies 4 2
    k2=$(python launch/simulate.py contention "$RR/before/manual-n1-b4" "$RR"/copies/k2-b4-* --skip "$WARMUP")
    k4=$(python launch/simulate.py contention "$RR/before/manual-n1-b2" "$RR"/copies/k4-b2-* --skip "$WARMUP")
    echo "measured contention: 2=$k2,4=$k4" | tee "$R/contention_free_copies.txt"
    l2=$(lockstep_contention 2 4 "$R"); l4=$(lockstep_contention 4 2 "$R")
    echo "measured contention: 2=$l2,4=$l4" | tee "$R/contention.txt"
    # the study
    python launch/scaling.py --config configs/scaling_cpu.yaml --cluster "$NAME" --backends "$BACKENDS" \
      --world-sizes "$WORLDS" --modes "$modes" --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/study" \
      --out "$R/study" --note "emulated cluster: 2 nodes (network namespaces), each node's egress shaped to $RATE with tc tbf, no added latency; repeat $i of $REPEATS in one sitting"
    singles after "8 4 2"; rehearsals after
    stamp "repeat $i measured"
  fi
  for bk in ${BACKENDS//,/ }; do  # each timeline pools its job's 1-rank runs (before, the study's own, after)
    python launch/simulate.py extract "$RR/study/$bk-n1-b8" "$RR/after/$bk-n1-b8" --skip "$WARMUP" \
      --out "$R/timelines/$bk-n1-b8.json" > /dev/null
    for job in n1-b4 n1-b2 f2-b4 f2-b2 f4-b2; do
      python launch/simulate.py extract "$RR/before/$bk-$job" "$RR/after/$bk-$job" --skip "$WARMUP" \
        --out "$R/timelines/$bk-$job.json" > /dev/null
    done
  done
  timelines() { local s=""; for bk in ${BACKENDS//,/ }; do s+="${s:+,}$bk=$R/timelines/$bk-$1.json"; done; echo "$s"; }
  rehearsed=(--small-timeline "$(timelines f2-b4)" --small-timeline "$(timelines f2-b2)" --small-timeline "$(timelines f4-b2)")
  validate() {  # OUT [extra flags]: every run of this repeat's study, from this repeat's inputs
    local out=$1; shift
    python launch/simulate.py validate "$(timelines n1-b8)" --small-timeline "$(timelines n1-b4)" --small-timeline "$(timelines n1-b2)" \
      --comm-table "$T/intra_n2,$T/intra_n4" --inter-table "2x1=$T/inter_2x1,2x2=$T/inter_2x2" \
      --study "$R/study/results.json" --backends "$BACKENDS" --modes "$modes" --cores "$CORES" --no-prefetch \
      --out "$R/$out" "$@" | tee "$R/$out.console.txt"
  }
  # the model of record: the rehearsals and the contention of copies in lock-step (2=F2,4=F4)
  k=$(sed 's/^measured contention: //' "$R/contention.txt")
  validate validation --contention "$k" "${rehearsed[@]}"
  validations+=("$R/validation/validation.json")
  # the same with the contention of free-running copies
  validate validation_free_copies --contention "$(sed 's/^measured contention: //' "$R/contention_free_copies.txt")" "${rehearsed[@]}"
  free_validations+=("$R/validation_free_copies/validation.json")
  # the same with the formula max(1, N·threads/cores) instead: what the simulator predicts from the core count alone
  validate validation_formula_contention "${rehearsed[@]}"
  formula_validations+=("$R/validation_formula_contention/validation.json")
  # without rehearsals: every layout replays a 1-rank run (FSDP's shard work modelled as 1/N)
  validate validation_no_rehearsal --contention "$k"
  no_rehearsal+=("$R/validation_no_rehearsal/validation.json")
  [[ -n $VALIDATE_ONLY ]] || stamp "repeat $i done"
done
python launch/simulate.py repeats "${validations[@]}" --out "$OUT"
python launch/simulate.py repeats "${formula_validations[@]}" --out "$OUT/formula_contention"
python launch/simulate.py repeats "${no_rehearsal[@]}" --out "$OUT/no_rehearsal"
python launch/simulate.py repeats "${free_validations[@]}" --out "$OUT/free_copies"
