#!/usr/bin/env bash
# The simulator's validation as a user re-runs it, measured in ONE sitting and repeated. Each repeat measures the
# simulator's inputs, none of them a multi-rank training run -- the 1-rank runs at every per-rank batch the study
# will have (strong, global batch 4: b = 4 at 1 rank, b = 2 at 2 ranks), a rehearsal of each 2-rank job
# (GPTDIST_FAKE_WORLD=2: one process doing rank 0's work at 2 ranks, collectives that move nothing), comm_bench
# tables at 2 ranks, and the CPU contention (2 copies of the 1-rank job at b = 2 held in lock-step: `simulate.py
# lockstep`, a barrier before each step, each copy its own replica, no communication; and 2 copies run free, for
# comparison) -- then the study, then the 1-rank runs and rehearsals again, then `simulate.py validate` three
# times: replaying the rehearsals at 2 ranks with the lock-step contention (the model of record, validation/),
# the same with the free copies' contention (validation_free_copies/), and the 1-rank runs instead of the
# rehearsals (validation_no_rehearsal/). Each timeline pools
# the runs of its job from before and after the study (and the study's own 1-rank run): this machine's speed
# drifts by up to ~30% over minutes, and inputs from one moment would carry that drift into every prediction.
# At the end: the error per run with its spread over the repeats.
#     REPEATS=3 STEPS=30 WARMUP=5 OUT=docs/results/simulator_repeats_cpu bash launch/reproduce/simulator_repeats.sh
# (issue 20's re-run: --backends manual,fsdp --world-sizes 1,2 --modes strong --steps 30 --warmup 5, extract --skip 5)
# VALIDATE_ONLY=1: measure nothing, predict again from the inputs and runs already in OUT and RUNS.
set -euo pipefail
REPEATS=${REPEATS:-3}; STEPS=${STEPS:-30}; WARMUP=${WARMUP:-5}; OUT=${OUT:-runs/simulator_repeats/report}
BACKENDS=${BACKENDS:-manual,fsdp}; RUNS=${RUNS:-runs/simulator_repeats}; VALIDATE_ONLY=${VALIDATE_ONLY:-}
export OMP_NUM_THREADS=1
CORES=$(getconf _NPROCESSORS_ONLN)  # not `nproc`: it answers OMP_NUM_THREADS (1) when that is set
mkdir -p "$OUT"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
source "$(dirname "$0")/contention_copies.sh"  # copies K B, lockstep_contention K B DIR, rehearse BACKEND N B DIR
validations=(); no_rehearsal=(); free_copies=()
for i in $(seq 1 "$REPEATS"); do
  R=$OUT/repeat$i; RR=$RUNS/repeat$i
  mkdir -p "$R/timelines"
  if [[ -z $VALIDATE_ONLY ]]; then
    stamp "repeat $i start"
    # inputs: comm tables at 2 ranks; 1-rank runs at b = 4 and 2; the contention of 2 copies at b = 2
    torchrun --standalone --nproc-per-node 2 comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter \
      -b 1K -e 64M --out "$R/comm_n2" --overwrite > "$R/comm_n2.console.txt"
    singles() {  # WHEN: the 1-rank runs at b = 4 and b = 2, and the rehearsals at 2 ranks of b = 2, into $RR/WHEN
      for b in 4 2; do
        python launch/scaling.py --config configs/scaling_cpu.yaml --backends "$BACKENDS" --world-sizes 1 \
          --modes strong --per-rank-batch $b --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/$1" --out "$R/$1_b$b"
      done
      for bk in ${BACKENDS//,/ }; do rehearse "$bk" 2 2 "$RR/$1"; done
    }
    singles before
    copies 2 2
    python launch/simulate.py contention "$RR/before/manual-n1-b2" "$RR"/copies/k2-b2-* --skip "$WARMUP" \
      | sed 's/^/2=/' > "$R/contention_free_copies.txt"
    echo "2=$(lockstep_contention 2 2 "$R")" > "$R/contention.txt"
    # the study (its 1-rank run at b = 4 joins that timeline's pool), then the 1-rank runs again
    python launch/scaling.py --config configs/scaling_cpu.yaml --backends "$BACKENDS" --world-sizes 1,2 \
      --modes strong --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/study" --out "$R/study"
    singles after
    stamp "repeat $i measured"
  fi
  big=""; small=""; rehearsed=""
  for b in ${BACKENDS//,/ }; do
    python launch/simulate.py extract "$RR/before/$b-n1-b4" "$RR/study/$b-n1-b4" "$RR/after/$b-n1-b4" --skip "$WARMUP" \
      --out "$R/timelines/$b-n1-b4.json" > /dev/null
    python launch/simulate.py extract "$RR/before/$b-n1-b2" "$RR/after/$b-n1-b2" --skip "$WARMUP" \
      --out "$R/timelines/$b-n1-b2.json" > /dev/null
    python launch/simulate.py extract "$RR/before/$b-f2-b2" "$RR/after/$b-f2-b2" --skip "$WARMUP" \
      --out "$R/timelines/$b-f2-b2.json" > /dev/null
    big+="${big:+,}$b=$R/timelines/$b-n1-b4.json"; small+="${small:+,}$b=$R/timelines/$b-n1-b2.json"
    rehearsed+="${rehearsed:+,}$b=$R/timelines/$b-f2-b2.json"
  done
  validate() {  # OUT [extra flags]
    local out=$1; shift
    python launch/simulate.py validate "$big" --small-timeline "$small" --comm-table "$R/comm_n2" \
      --study "$R/study/results.json" --backends "$BACKENDS" --modes strong --cores "$CORES" --no-prefetch \
      --out "$R/$out" "$@" | tee "$R/$out.console.txt"
  }
  # the model of record: 2 ranks replay their rehearsal, with the lock-step contention
  validate validation --small-timeline "$rehearsed" --contention "$(cat "$R/contention.txt")"
  validations+=("$R/validation/validation.json")
  validate validation_free_copies --small-timeline "$rehearsed" --contention "$(cat "$R/contention_free_copies.txt")"
  free_copies+=("$R/validation_free_copies/validation.json")
  # the 1-rank run at b = 2 instead of the rehearsal (FSDP's shard work modelled as 1/N)
  validate validation_no_rehearsal --contention "$(cat "$R/contention.txt")"
  no_rehearsal+=("$R/validation_no_rehearsal/validation.json")
done
python launch/simulate.py repeats "${validations[@]}" --out "$OUT"
python launch/simulate.py repeats "${no_rehearsal[@]}" --out "$OUT/no_rehearsal"
python launch/simulate.py repeats "${free_copies[@]}" --out "$OUT/free_copies"
