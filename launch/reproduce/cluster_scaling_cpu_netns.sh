#!/usr/bin/env bash
# The T/N study on the emulated cluster (docs/results/cluster_scaling_cpu_netns/): strong scaling at
# 1 Gbit/s for all three backends at layouts 1, 2, 2x1, 2x2; a link-rate sweep (0.25, 1, 4 Gbit/s) for
# the manual backend at 2x1 with and without overlap; all_reduce tables across the link at each rate for
# the simulator. As root, from the repository root. STEPS/WARMUP small: the machine is shared.
set -euo pipefail
R=${R:-docs/results/cluster_scaling_cpu_netns}; RUNS=${RUNS:-runs/cluster_scaling}
STEPS=${STEPS:-12}; WARMUP=${WARMUP:-3}; PARTS=${PARTS:-strong,sweep}
C="python launch/cluster.py --name sc"
export OMP_NUM_THREADS=1
trap '$C down' EXIT
up() { $C down >/dev/null; $C up --nodes 2 --rate "$1" --subnet 10.216.0.0/24; }
study() {  # study OUT RUNS args...
  local out=$1 runs=$2; shift 2
  python launch/scaling.py --config configs/scaling_cpu.yaml --cluster sc --steps "$STEPS" --warmup "$WARMUP" \
    --runs-dir "$runs" --out "$out" "$@"
}
if [[ $PARTS == *strong* ]]; then
  up 1gbit
  study $R/strong_1gbit $RUNS/strong_1gbit --backends manual,ddp,fsdp --world-sizes 1,2,2x1,2x2 --modes strong \
    --note "emulated cluster: 2 nodes (network namespaces), each node's egress shaped to 1 Gbit/s with tc tbf, no added latency"
fi
if [[ $PARTS == *sweep* ]]; then
  # with overlap at 250 Mbit/s (1 Gbit/s with overlap is the strong study's manual 2x1 run; 4 Gbit/s and
  # every run without overlap: launch/reproduce/cluster_sweep_no_overlap.sh, because the overlap override
  # is refused by the 1-rank run)
  up 250mbit
  $C torchrun --port 29700 --nproc-per-node 1 -- comm_bench/allreduce.py -b 64K -e 64M -w 1 -n 3 --out $R/comm_250mbit/inter_2x1 --overwrite
  study $R/sweep/250mbit_overlap_true $RUNS/sweep/250mbit_overlap_true --backends manual --world-sizes 1,2x1 \
    --modes strong --per-rank-batch 4 --note "link 250mbit, parallel.manual.overlap=true"
  $C down
  launch/reproduce/cluster_sweep_no_overlap.sh
fi
