#!/usr/bin/env bash
# Predict a committed cluster sitting again with idle-link comm tables (`comm_bench --gap-ms`): the inputs that
# sitting lacked. A link shaped with tc tbf lets its bucket (10 ms of traffic, docs/cluster.md) through at line
# speed after an idle spell; a collective issued after compute gets that credit, the back-to-back tables do not
# (FSDP across the link was predicted 8-15% high in docs/results/cluster_simulator_probed_repeats_cpu_netns).
# The shaped link is a property of the kernel's shaper, steady from sitting to sitting, so tables measured now
# stand in for tables of then; to show that, the back-to-back tables are measured again now as well, and the
# sitting is predicted three ways: its own back-to-back tables (as it was), those plus today's idle tables, and
# today's back-to-back plus idle tables. Every other input is the sitting's own (timelines, probes, studies).
# As root, on an otherwise idle machine:
#     SITTING=docs/results/cluster_simulator_probed_repeats_cpu_netns \
#       OUT=docs/results/cluster_idle_revalidate_cpu_netns bash launch/reproduce/cluster_idle_revalidate.sh
set -euo pipefail
SITTING=${SITTING:-docs/results/cluster_simulator_probed_repeats_cpu_netns}
OUT=${OUT:-runs/cluster_idle_revalidate}; RATE=${RATE:-1gbit}; IDLE_GAP_MS=${IDLE_GAP_MS:-10}
BACKENDS=${BACKENDS:-manual,ddp,fsdp}; MODES=${MODES:-strong,weak}
NAME=${NAME:-cir}; SUBNET=${SUBNET:-10.219.0.0/24}
COMM_ARGS=${COMM_ARGS:--b 64K -e 64M -w 1 -n 3}  # the sitting's (cluster_simulator_repeats.sh)
C="python launch/cluster.py --name $NAME"
export OMP_NUM_THREADS=1
CORES=$(getconf _NPROCESSORS_ONLN)
[[ -f $SITTING/sizes.txt ]] || { echo "error: $SITTING has no sizes.txt (not a cluster_simulator_repeats.sh sitting)" >&2; exit 2; }
T=$OUT/tables
mkdir -p "$T"
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/sitting.txt"; }
if [[ -z ${VALIDATE_ONLY:-} ]]; then
  trap '$C down' EXIT
  $C down > /dev/null
  $C up --nodes 2 --rate "$RATE" --subnet "$SUBNET"
  stamp "cluster up ($RATE)"
  CB="comm_bench/run_all.py --op all_reduce,all_gather,reduce_scatter --sizes $(cat "$SITTING/sizes.txt") --overwrite $COMM_ARGS"
  port=29730
  for l in 2x1 2x2; do
    for kind in "" _idle; do
      gap=0; [[ -n $kind ]] && gap=$IDLE_GAP_MS
      $C torchrun --port $((port++)) --nproc-per-node "${l#2x}" -- $CB --gap-ms "$gap" --out "$T/inter_$l$kind" \
        > "$T/inter_$l$kind.console.txt"
      stamp "inter_$l$kind measured"
    done
  done
  $C down; trap - EXIT
fi
declare -A runs=([as_it_was]="" [sitting_plus_idle]="" [today_plus_idle]="")
for R in "$SITTING"/repeat[0-9]*; do
  i=${R##*repeat}; ST=$R/tables; mkdir -p "$OUT/repeat$i"
  timelines() { local s=""; for bk in ${BACKENDS//,/ }; do s+="${s:+,}$bk=$R/timelines/$bk-$1.json"; done; echo "$s"; }
  studies=(); for bk in ${BACKENDS//,/ }; do studies+=(--study "$R/study_$bk/results.json"); done
  for way in as_it_was sitting_plus_idle today_plus_idle; do
    case $way in
      as_it_was) inter="2x1=$ST/inter_2x1,2x2=$ST/inter_2x2" ;;
      sitting_plus_idle) inter="2x1=$ST/inter_2x1,2x2=$ST/inter_2x2,2x1=$T/inter_2x1_idle,2x2=$T/inter_2x2_idle" ;;
      today_plus_idle) inter="2x1=$T/inter_2x1,2x2=$T/inter_2x2,2x1=$T/inter_2x1_idle,2x2=$T/inter_2x2_idle" ;;
    esac
    python launch/simulate.py validate "$(timelines n1-b8)" --small-timeline "$(timelines n1-b4)" \
      --small-timeline "$(timelines n1-b2)" --small-timeline "$(timelines f2-b4)" --small-timeline "$(timelines f2-b2)" \
      --small-timeline "$(timelines f4-b2)" \
      --comm-table "$ST/intra_n2_before,$ST/intra_n2_after,$ST/intra_n4_before,$ST/intra_n4_after" \
      --inter-table "$inter" "${studies[@]}" --backends "$BACKENDS" --modes "$MODES" --cores "$CORES" --no-prefetch \
      --contention "$(cat "$R/contention_phases.txt")" --out "$OUT/repeat$i/$way" > "$OUT/repeat$i/$way.console.txt"
    runs[$way]+=" $OUT/repeat$i/$way/validation.json"
  done
done
for way in as_it_was sitting_plus_idle today_plus_idle; do
  # shellcheck disable=SC2086
  python launch/simulate.py repeats ${runs[$way]} --out "$OUT/$way" > "$OUT/$way.console.txt"
done
