#!/usr/bin/env bash
# The simulator's validation on the emulated cluster (docs/cluster.md), measured in ONE sitting and repeated:
# the cluster sibling of simulator_repeats.sh. Each repeat measures the simulator's inputs, none of them a
# multi-rank training run, and the study (layouts 1, 2, 2x1, 2x2; strong, global batch 8: b = 8 at 1 rank, 4 at 2
# and 2x1, 2 at 2x2; weak: b = 2) backend by backend, each part between its own inputs:
#   comm_bench tables in one node (n0 loopback, 2 and 4 ranks) and across the link (2x1, 2x2), at the sweep's
#     sizes and at the exact sizes the simulator will ask for (`simulate.py sizes`, from a short rehearsal of
#     each backend at the start of the sitting); across the link both back to back and with each call after
#     IDLE_GAP_MS (default 10: the tbf bucket's refill time, docs/cluster.md) of idle link (`comm_bench --gap-ms`:
#     a collective issued after compute gets the bucket's credit, one queued behind another does not);
#   per backend: the contention probes of 2 copies at b = 4 and 4 copies at b = 2 (`contention_probe`:
#     interleaved, phase-aligned; per-phase factors), the 1-rank runs at b = 4 and 2 and a rehearsal of every
#     multi-rank job (GPTDIST_FAKE_WORLD=N: one process doing rank 0's work at N ranks, collectives that move
#     nothing: 2 ranks at b = 4 and 2, 4 at b = 2) -> that backend's part of the study -> the same inputs again,
#     and the 1-rank run at b = 8 (each timeline pools its job's runs from just before and just after the part,
#     the contention the probes: this machine's speed drifts by up to ~30% over minutes);
#   the one-node tables again (pooled with the first: the mean at each size; the shaped link's are steady).
# Then `simulate.py validate` three times: the rehearsals with each backend's probed contention per phase (the
# model of record, validation/), the same with the contention from the core count (max(1, N·threads/cores);
# validation_cores/), and the 1-rank runs instead of the rehearsals with the core count (validation_no_rehearsal/).
# At the end: the error per run with its spread over the repeats (repeats.md/json, repeats.png). As root, on an
# otherwise idle machine (other work on the cores moves the 1-rank inputs and the runs apart):
#     REPEATS=3 STEPS=14 WARMUP=4 RATE=1gbit MODES=strong,weak \
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
IDLE_GAP_MS=${IDLE_GAP_MS:-10}
C="python launch/cluster.py --name $NAME"
export OMP_NUM_THREADS=1
CORES=$(getconf _NPROCESSORS_ONLN)  # not `nproc`: it answers OMP_NUM_THREADS (1) when that is set
VALIDATE_ONLY=${VALIDATE_ONLY:-}  # 1: measure nothing, predict again from the inputs and runs already in OUT, RUNS
mkdir -p "$OUT"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
source "$(dirname "$0")/simulator_inputs.sh"  # rehearse, message_sizes, contention_probe, backend_probes, probed_contention, cluster_start, one_node_tables, across_tables
[[ -n $VALIDATE_ONLY ]] || cluster_start  # the cluster up, sizes.txt, $CB
validations=(); cores=(); no_rehearsal=()
for i in $(seq 1 "$REPEATS"); do
  R=$OUT/repeat$i; RR=$RUNS/repeat$i; T=$R/tables
  modes=$MODES; [[ $i == 1 ]] && modes=$FIRST_MODES
  mkdir -p "$R/timelines" "$T"
  if [[ -z $VALIDATE_ONLY ]]; then
    stamp "repeat $i start"
    inputs() {  # WHEN BACKEND [BATCHES]: the 1-rank runs (b = 4 and 2, or BATCHES) and the rehearsals, into $RR/WHEN
      for b in ${3:-4 2}; do
        python launch/scaling.py --config configs/scaling_cpu.yaml --cluster "$NAME" --backends "$2" \
          --world-sizes 1 --modes strong --per-rank-batch $b --steps "$STEPS" --warmup "$WARMUP" \
          --runs-dir "$RR/$1" --out "$R/$1_$2_b$b"
      done
      rehearse "$2" 2 4 "$RR/$1"; rehearse "$2" 2 2 "$RR/$1"; rehearse "$2" 4 2 "$RR/$1"
    }
    one_node_tables "$T" before
    across_tables "$T"
    for bk in ${BACKENDS//,/ }; do
      backend_probes "$R" "$bk" before
      inputs before "$bk"
      python launch/scaling.py --config configs/scaling_cpu.yaml --cluster "$NAME" --backends "$bk" \
        --world-sizes "$WORLDS" --modes "$modes" --steps "$STEPS" --warmup "$WARMUP" --runs-dir "$RR/study" \
        --out "$R/study_$bk" --note "emulated cluster: 2 nodes (network namespaces), each node's egress shaped to $RATE with tc tbf, no added latency; repeat $i of $REPEATS in one sitting"
      inputs after "$bk" "8 4 2"
      backend_probes "$R" "$bk" after
    done
    one_node_tables "$T" after
    stamp "repeat $i measured"
  fi
  studies=(); probed=$(probed_contention "$R")  # the contention during each backend's part
  for bk in ${BACKENDS//,/ }; do  # each timeline pools its job's runs from just before and after (b = 8: the study's own)
    python launch/simulate.py extract "$RR/study/$bk-n1-b8" "$RR/after/$bk-n1-b8" --skip "$WARMUP" \
      --out "$R/timelines/$bk-n1-b8.json" > /dev/null
    for job in n1-b4 n1-b2 f2-b4 f2-b2 f4-b2; do
      python launch/simulate.py extract "$RR/before/$bk-$job" "$RR/after/$bk-$job" --skip "$WARMUP" \
        --out "$R/timelines/$bk-$job.json" > /dev/null
    done
    studies+=(--study "$R/study_$bk/results.json")
  done
  timelines() { local s=""; for bk in ${BACKENDS//,/ }; do s+="${s:+,}$bk=$R/timelines/$bk-$1.json"; done; echo "$s"; }
  rehearsed=(--small-timeline "$(timelines f2-b4)" --small-timeline "$(timelines f2-b2)" --small-timeline "$(timelines f4-b2)")
  inter="2x1=$T/inter_2x1,2x2=$T/inter_2x2"
  for l in 2x1 2x2; do  # the idle-link tables beside the back-to-back ones (absent in sittings before they existed)
    [[ -e $T/inter_${l}_idle/results.json ]] && inter+=",$l=$T/inter_${l}_idle"
  done
  validate() {  # OUT [extra flags]: every run of this repeat's study, from this repeat's inputs
    local out=$1; shift
    python launch/simulate.py validate "$(timelines n1-b8)" --small-timeline "$(timelines n1-b4)" --small-timeline "$(timelines n1-b2)" \
      --comm-table "$T/intra_n2_before,$T/intra_n2_after,$T/intra_n4_before,$T/intra_n4_after" \
      --inter-table "$inter" "${studies[@]}" --backends "$BACKENDS" --modes "$modes" \
      --cores "$CORES" --no-prefetch --out "$R/$out" "$@" | tee "$R/$out.console.txt"
  }
  echo "$probed" > "$R/contention_phases.txt"
  # the model of record: the rehearsals, slowed per phase by the contention probed during each backend's part
  validate validation --contention "$probed" "${rehearsed[@]}"
  validations+=("$R/validation/validation.json")
  validate validation_cores "${rehearsed[@]}"  # the same with the contention from the core count
  cores+=("$R/validation_cores/validation.json")
  # without rehearsals: every layout replays a 1-rank run (FSDP's shard work modelled as 1/N)
  validate validation_no_rehearsal
  no_rehearsal+=("$R/validation_no_rehearsal/validation.json")
  [[ -n $VALIDATE_ONLY ]] || stamp "repeat $i done"
done
python launch/simulate.py repeats "${validations[@]}" --out "$OUT"
python launch/simulate.py repeats "${cores[@]}" --out "$OUT/cores"
python launch/simulate.py repeats "${no_rehearsal[@]}" --out "$OUT/no_rehearsal"
