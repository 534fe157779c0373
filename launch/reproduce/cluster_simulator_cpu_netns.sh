#!/usr/bin/env bash
# The simulator on the emulated cluster's study (docs/results/cluster_scaling_cpu_netns/simulator/): every
# layout predicted from inputs measured WITHOUT a multi-rank training run: each backend's 1-rank timelines
# (b = 8 from the study, b = 4 from runs/cluster_scaling/single) and comm_bench's tables (one node: intra_n2,
# intra_n4; across the link: 2x1 and 2x2 at 1 Gbit/s, docs/results/cluster_cpu_netns/tables; the sweep's
# all_reduce tables at each rate). Run launch/reproduce/cluster_scaling_cpu_netns.sh first (PARTS=...,single).
set -euo pipefail
R=docs/results/cluster_scaling_cpu_netns; D=$R/simulator; RUNS=${RUNS:-runs/cluster_scaling}; SKIP=${SKIP:-3}
T=docs/results/cluster_cpu_netns/tables
mkdir -p "$D/timelines"
for backend in manual ddp fsdp; do
  python launch/simulate.py extract "$RUNS/strong_1gbit/$backend-n1-b8" --skip "$SKIP" --out "$D/timelines/$backend-n1-b8.json" > /dev/null
  if [[ -d $RUNS/single/$backend-n1-b4 ]]; then
    python launch/simulate.py extract "$RUNS/single/$backend-n1-b4" --skip "$SKIP" --out "$D/timelines/$backend-n1-b4.json" > /dev/null
  fi
done
# with 1-rank runs at b = 4 (PARTS=single): compute affine in the batch; without them: compute x 1/N
small() { [[ -f $D/timelines/manual-n1-b4.json ]] && echo --small-timeline "$1" || true; }
timelines() { echo "manual=$D/timelines/manual-n1-b$1.json,ddp=$D/timelines/ddp-n1-b$1.json,fsdp=$D/timelines/fsdp-n1-b$1.json"; }
python launch/simulate.py validate "$(timelines 8)" $(small "$(timelines 4)") \
  --comm-table $T/intra_n2,$T/intra_n4 --inter-table 2x1=$T/inter_1gbit_2x1,2x2=$T/inter_1gbit_2x2 \
  --study $R/strong_1gbit/results.json --backends manual,ddp,fsdp --modes strong --cores 2 --no-prefetch \
  --out "$D/strong_1gbit" | tee "$D/strong_1gbit.console.txt"
# the link-rate sweep (manual, 2x1): each rate's own all_reduce table across the link
[[ ${PARTS:-strong,sweep} == *sweep* ]] || exit 0
mkdir -p "$D/sweep"
for study in $R/sweep/*/; do
  name=$(basename "$study"); rate=${name%%_*}; flags=()
  [[ $name == *overlap_false ]] && flags=(--no-overlap)
  # each sweep study's own 1-rank run (same sitting as its 2x1 run; the no-overlap studies reuse the overlap one's)
  python launch/simulate.py extract "$RUNS/sweep/$name/manual-n1-b8" --skip "$SKIP" --out "$D/timelines/sweep-$name-manual-n1-b8.json" > /dev/null
  python launch/simulate.py validate "manual=$D/timelines/sweep-$name-manual-n1-b8.json" $(small "manual=$D/timelines/manual-n1-b4.json") \
    --comm-table $T/intra_n2 --inter-table 2x1=$R/comm_$rate/inter_2x1 --study "$study/results.json" \
    --backends manual --modes strong --cores 2 "${flags[@]}" --out "$D/sweep/$name" | tee "$D/sweep/$name.console.txt"
done
# efficiency vs link rate, measured and predicted (1 Gbit/s with overlap: the strong study's manual 2x1 run)
measured=("1gbit_overlap_true=$R/strong_1gbit/results.json"); predicted=("1gbit_overlap_true=$D/strong_1gbit/validation.json")
for study in $R/sweep/*/; do
  name=$(basename "$study")
  measured+=("$name=$study/results.json"); predicted+=("$name=$D/sweep/$name/validation.json")
done
python launch/link_sweep.py --layout 2x1 --out $R "${measured[@]}" --predicted "${predicted[@]}" | tee $R/link_sweep.console.txt
