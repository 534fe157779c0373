#!/usr/bin/env bash
# The simulator's validation on the emulated cluster with each study run between its OWN inputs: a sibling of
# cluster_simulator_repeats.sh, which measures the inputs around each backend's whole part of the study (~10
# minutes). This VM's speed drifts by 10-30% within minutes, more than the 5% the model is asked for, so here
# every run is sandwiched: the input it is predicted from is measured right before it and again right after it
# (~30 s each side), and the after-input is the next run's before-input where the job is the same:
#   1-rank runs (strong b = 8, weak b = 2): the 1-rank run of that job before and after (the control: nothing to
#     model, the error is the drift over the sandwich);
#   2 and 2x1 at b = 4, 2 and 2x1 at b = 2, 2x2 at b = 2: the rehearsal of that job (GPTDIST_FAKE_WORLD=N, rank 0's
#     work at N ranks, collectives that move nothing) before, between and after;
# the contention probes before and after each backend's runs (ratios of interleaved steps: little drift), the comm
# tables as in cluster_simulator_repeats.sh (one node before and after the repeat, across the link once). Then one
# `simulate.py validate --runs RUN` per run, each from its own sandwich (the model of record: rehearsal + probed
# contention per phase; and with the core count), and `simulate.py repeats` over the repeats, each in parts.
# sitting.txt records each run's start with the machine's load and the hypervisor's steal time (/proc/stat, s).
# As root, on an otherwise idle machine:
#     REPEATS=2 STEPS=14 WARMUP=4 RATE=1gbit \
#       OUT=docs/results/cluster_simulator_sandwich_cpu_netns bash launch/reproduce/cluster_simulator_sandwich.sh
set -euo pipefail
REPEATS=${REPEATS:-2}; STEPS=${STEPS:-14}; WARMUP=${WARMUP:-4}; RATE=${RATE:-1gbit}
BACKENDS=${BACKENDS:-manual,ddp,fsdp}; WORLDS=1,2,2x1,2x2; MODES=strong,weak
OUT=${OUT:-runs/cluster_simulator_sandwich/report}; RUNS=${RUNS:-runs/cluster_simulator_sandwich}
NAME=${NAME:-css}; SUBNET=${SUBNET:-10.218.0.0/24}
COMM_ARGS=${COMM_ARGS:--b 64K -e 64M -w 1 -n 3}; INTRA_ARGS=${INTRA_ARGS:--b 64K -e 64M -w 2 -n 10}
IDLE_GAP_MS=${IDLE_GAP_MS:-10}
C="python launch/cluster.py --name $NAME"
export OMP_NUM_THREADS=1
CORES=$(getconf _NPROCESSORS_ONLN)
VALIDATE_ONLY=${VALIDATE_ONLY:-}  # 1: measure nothing, predict again from the inputs and runs already in OUT, RUNS
# the study's runs per backend (the plan of scaling.py --world-sizes 1,2,2x1,2x2 --modes strong,weak, b = 2) in the
# order they run, each with the input job of its sandwich; runs in a row that share a job share the input between them
SANDWICHES=("n1-b8:n1-b8" "f2-b4:n2-b4,n2x1-b4" "f2-b2:n2-b2,n2x1-b2" "f4-b2:n2x2-b2" "n1-b2:n1-b2")
mkdir -p "$OUT"
steal() { awk '/^cpu /{printf "%.1f", $9 / 100}' /proc/stat; }  # jiffies (USER_HZ = 100) -> s
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg) steal_s $(steal)" | tee -a "$OUT/sitting.txt"; }
source "$(dirname "$0")/simulator_inputs.sh"  # rehearse, message_sizes, contention_probe, backend_probes, probed_contention, cluster_start, one_node_tables, across_tables
study() {  # R RR BACKEND [--only RUN | --report-only]: the backend's study, or one run of it
  local r=$1 rr=$2 bk=$3; shift 3
  python launch/scaling.py --config configs/scaling_cpu.yaml --cluster "$NAME" --backends "$bk" --world-sizes "$WORLDS" \
    --modes "$MODES" --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$rr/study" --out "$r/study_$bk" \
    --note "emulated cluster: 2 nodes (network namespaces), each node's egress shaped to $RATE with tc tbf, no added latency; each run between its own inputs" "$@"
}
input_run() {  # BACKEND JOB DIR: one input (n1-bB: the 1-rank run at b = B; fN-bB: the rehearsal of N ranks at B)
  local n=${2%%-*} b=${2#*-b}
  if [[ $n == n1 ]]; then
    python launch/scaling.py --config configs/scaling_cpu.yaml --cluster "$NAME" --backends "$1" --world-sizes 1 \
      --modes strong --per-rank-batch "$b" --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$3" --out "$3/report_$1_$2" > /dev/null
  else
    rehearse "$1" "${n#f}" "$b" "$3"
  fi
}
[[ -n $VALIDATE_ONLY ]] || cluster_start  # the cluster up, sizes.txt, $CB
repeats=(); repeats_cores=()
for i in $(seq 1 "$REPEATS"); do
  R=$OUT/repeat$i; RR=$RUNS/repeat$i; T=$R/tables
  mkdir -p "$R/timelines" "$T"
  if [[ -z $VALIDATE_ONLY ]]; then
    stamp "repeat $i start"
    one_node_tables "$T" before
    across_tables "$T"
    : > "$R/sandwiches.txt"  # RUN BEFORE_DIR AFTER_DIR JOB, one line per study run
    k=0
    for bk in ${BACKENDS//,/ }; do
      backend_probes "$R" "$bk" before
      for sandwich in "${SANDWICHES[@]}"; do
        job=${sandwich%%:*}; runs=${sandwich#*:}
        k=$((k + 1)); stamp "input $bk-$job -> $RR/in$k"; input_run "$bk" "$job" "$RR/in$k"
        for run in ${runs//,/ }; do
          stamp "run $bk-$run"; study "$R" "$RR" "$bk" --only "$bk-$run" > /dev/null
          k=$((k + 1)); stamp "input $bk-$job -> $RR/in$k"; input_run "$bk" "$job" "$RR/in$k"
          echo "$bk-$run $RR/in$((k - 1)) $RR/in$k $job" >> "$R/sandwiches.txt"
        done
      done
      backend_probes "$R" "$bk" after
      study "$R" "$RR" "$bk" --report-only > /dev/null
    done
    one_node_tables "$T" after
    stamp "repeat $i measured"
  fi
  inter="2x1=$T/inter_2x1,2x2=$T/inter_2x2,2x1=$T/inter_2x1_idle,2x2=$T/inter_2x2_idle"
  probed=$(probed_contention "$R")  # the contention during each backend's runs
  echo "$probed" > "$R/contention_phases.txt"
  parts=(); parts_cores=(); mkdir -p "$R/validation" "$R/validation_cores"
  while read -r -u 3 run before after job; do  # the 1-rank b = 8 run comes first in each backend's lines
    bk=${run%%-*}
    python launch/simulate.py extract "$before/$bk-$job" "$after/$bk-$job" --skip "$WARMUP" --out "$R/timelines/$run.json" > /dev/null
    # the 1-rank b = 8 timeline is every prediction's base (tokens per step, the efficiency's 1-rank step); the
    # run's own sandwich is the timeline it replays (a rehearsal at its N and batch, or the 1-rank run at its batch)
    for variant in validation validation_cores; do
      flags=(); [[ $variant == validation ]] && flags=(--contention "$probed")
      python launch/simulate.py validate "$bk=$R/timelines/$bk-n1-b8.json" --small-timeline "$bk=$R/timelines/$run.json" \
        --comm-table "$T/intra_n2_before,$T/intra_n2_after,$T/intra_n4_before,$T/intra_n4_after" \
        --inter-table "$inter" --study "$R/study_$bk/results.json" --backends "$bk" --modes "$MODES" --runs "$run" \
        --cores "$CORES" --no-prefetch --out "$R/$variant/$run" "${flags[@]}" > "$R/$variant/$run.console.txt"
    done
    parts+=("$R/validation/$run/validation.json"); parts_cores+=("$R/validation_cores/$run/validation.json")
  done 3< "$R/sandwiches.txt"
  repeats+=("$(IFS=,; echo "${parts[*]}")"); repeats_cores+=("$(IFS=,; echo "${parts_cores[*]}")")
  [[ -n $VALIDATE_ONLY ]] || stamp "repeat $i done"
done
python launch/simulate.py repeats "${repeats[@]}" --out "$OUT"
python launch/simulate.py repeats "${repeats_cores[@]}" --out "$OUT/cores"
