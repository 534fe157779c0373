#!/usr/bin/env bash
# The simulator's validation as a user re-runs it, measured in ONE sitting and repeated. Each repeat measures the
# simulator's inputs, none of them a multi-rank training run, and the study (strong, global batch 4: b = 4 at 1
# rank, b = 2 at 2 ranks) backend by backend, each part between its own inputs:
#   comm_bench tables at 2 ranks, at the sweep's sizes and at the exact sizes the simulator will ask for
#     (`simulate.py sizes`, from a short rehearsal of each backend at the start of the sitting);
#   per backend: the contention probe of 2 copies (`contention_probe`: interleaved, phase-aligned; per-phase
#     factors), the 1-rank runs at b = 4 and 2 and a rehearsal of the 2-rank job (GPTDIST_FAKE_WORLD=2: one
#     process doing rank 0's work at 2 ranks, collectives that move nothing) -> that backend's part of the study
#     -> the same inputs again (each timeline pools its job's runs from just before and just after the part, the
#     contention the two probes: this machine's speed drifts by up to ~30% over minutes, and inputs minutes away
#     from a run carry that drift into its prediction);
#   the comm tables again (pooled with the first: the mean at each size).
# Then `simulate.py validate` three times: the rehearsals with each backend's probed contention per phase (the
# model of record, validation/), the same with the contention from the core count (max(1, N·threads/cores): 1
# for 2 one-thread ranks on 2 cores; validation_cores/), and the 1-rank runs instead of the rehearsals with the
# core count (validation_no_rehearsal/). At the end: the error per run with its spread over the repeats.
#     REPEATS=3 STEPS=30 WARMUP=5 OUT=docs/results/simulator_repeats_cpu bash launch/reproduce/simulator_repeats.sh
# (issue 20's re-run: --backends manual,fsdp --world-sizes 1,2 --modes strong --steps 30 --warmup 5, extract --skip 5)
# VALIDATE_ONLY=1: measure nothing, predict again from the inputs and runs already in OUT and RUNS.
set -euo pipefail
REPEATS=${REPEATS:-3}; STEPS=${STEPS:-30}; WARMUP=${WARMUP:-5}; OUT=${OUT:-runs/simulator_repeats/report}
BACKENDS=${BACKENDS:-manual,fsdp}; RUNS=${RUNS:-runs/simulator_repeats}; VALIDATE_ONLY=${VALIDATE_ONLY:-}
TABLE_ARGS=${TABLE_ARGS:--b 64K -e 64M -w 2 -n 10}
export OMP_NUM_THREADS=1
CORES=$(getconf _NPROCESSORS_ONLN)  # not `nproc`: it answers OMP_NUM_THREADS (1) when that is set
mkdir -p "$OUT"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
source "$(dirname "$0")/simulator_inputs.sh"  # rehearse BACKEND N B DIR, message_sizes DIR WORLDS, contention_probe K B FILE
if [[ -z $VALIDATE_ONLY ]]; then
  message_sizes "$RUNS/sizes" 2 > "$OUT/sizes.txt"
  stamp "sizes $(cat "$OUT/sizes.txt")"
fi
validations=(); no_rehearsal=(); cores=()
for i in $(seq 1 "$REPEATS"); do
  R=$OUT/repeat$i; RR=$RUNS/repeat$i
  mkdir -p "$R/timelines"
  if [[ -z $VALIDATE_ONLY ]]; then
    stamp "repeat $i start"
    table() {  # WHEN: comm tables at 2 ranks into $R/comm_n2_WHEN
      torchrun --standalone --nproc-per-node 2 comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter \
        $TABLE_ARGS --sizes "$(cat "$OUT/sizes.txt")" --out "$R/comm_n2_$1" --overwrite > "$R/comm_n2_$1.console.txt"
    }
    inputs() {  # WHEN BACKEND: the 1-rank runs at b = 4 and b = 2 and the rehearsal at 2 ranks of b = 2, into $RR/WHEN
      for b in 4 2; do
        python launch/scaling.py --config configs/scaling_cpu.yaml --backends "$2" --world-sizes 1 \
          --modes strong --per-rank-batch $b --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/$1" --out "$R/$1_$2_b$b"
      done
      rehearse "$2" 2 2 "$RR/$1"
    }
    table before
    for bk in ${BACKENDS//,/ }; do
      contention_probe 2 2 "$R/probe_${bk}_before.json"
      inputs before "$bk"
      python launch/scaling.py --config configs/scaling_cpu.yaml --backends "$bk" --world-sizes 1,2 \
        --modes strong --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/study" --out "$R/study_$bk"
      inputs after "$bk"
      contention_probe 2 2 "$R/probe_${bk}_after.json"
    done
    table after
    stamp "repeat $i measured"
  fi
  big=""; small=""; rehearsed=""; studies=(); probed=""
  for b in ${BACKENDS//,/ }; do
    # the contention during this backend's part: its two probes pooled (FORWARD_BACKWARD:UPDATE)
    probed+="${probed:+,}$b@2=$(python launch/simulate.py lockstep-factor --phases "$R/probe_${b}_before.json" "$R/probe_${b}_after.json")"
    python launch/simulate.py extract "$RR/before/$b-n1-b4" "$RR/study/$b-n1-b4" "$RR/after/$b-n1-b4" --skip "$WARMUP" \
      --out "$R/timelines/$b-n1-b4.json" > /dev/null
    for job in n1-b2 f2-b2; do
      python launch/simulate.py extract "$RR/before/$b-$job" "$RR/after/$b-$job" --skip "$WARMUP" \
        --out "$R/timelines/$b-$job.json" > /dev/null
    done
    big+="${big:+,}$b=$R/timelines/$b-n1-b4.json"; small+="${small:+,}$b=$R/timelines/$b-n1-b2.json"
    rehearsed+="${rehearsed:+,}$b=$R/timelines/$b-f2-b2.json"; studies+=(--study "$R/study_$b/results.json")
  done
  validate() {  # OUT [extra flags]
    local out=$1; shift
    python launch/simulate.py validate "$big" --small-timeline "$small" --comm-table "$R/comm_n2_before,$R/comm_n2_after" \
      "${studies[@]}" --backends "$BACKENDS" --modes strong --cores "$CORES" --no-prefetch \
      --out "$R/$out" "$@" | tee "$R/$out.console.txt"
  }
  echo "$probed" > "$R/contention_phases.txt"
  # the model of record: 2 ranks replay their rehearsal, slowed per phase by the probed contention
  validate validation --small-timeline "$rehearsed" --contention "$probed"
  validations+=("$R/validation/validation.json")
  validate validation_cores --small-timeline "$rehearsed"  # the contention from the core count
  cores+=("$R/validation_cores/validation.json")
  # the 1-rank run at b = 2 instead of the rehearsal (FSDP's shard work modelled as 1/N)
  validate validation_no_rehearsal
  no_rehearsal+=("$R/validation_no_rehearsal/validation.json")
done
python launch/simulate.py repeats "${validations[@]}" --out "$OUT"
python launch/simulate.py repeats "${cores[@]}" --out "$OUT/cores"
python launch/simulate.py repeats "${no_rehearsal[@]}" --out "$OUT/no_rehearsal"
