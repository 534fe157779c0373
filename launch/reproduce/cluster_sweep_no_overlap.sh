#!/usr/bin/env bash
# The link-rate sweep's runs without overlap (parallel.manual.overlap=false), and 4 Gbit/s. The override is
# refused at one rank (backend 'none'), so the no-overlap 2x1 run is started on the cluster directly, with the
# study's own command line, and its report is built with --report-only next to the same rate's 1-rank run.
set -euo pipefail
R=docs/results/cluster_scaling_cpu_netns; RUNS=runs/cluster_scaling; STEPS=12; WARMUP=3
C="python launch/cluster.py --name sc"
export OMP_NUM_THREADS=1
trap '$C down' EXIT
up() { $C down >/dev/null; $C up --nodes 2 --rate "$1" --subnet 10.216.0.0/24; }
study() {  # study NAME args...
  local name=$1; shift
  python launch/scaling.py --config configs/scaling_cpu.yaml --backends manual --world-sizes 1,2x1 --modes strong \
    --per-rank-batch 4 --steps $STEPS --warmup $WARMUP --runs-dir $RUNS/sweep/$name --out $R/sweep/$name "$@"
}
no_overlap() {  # no_overlap RATE: the 2x1 run without overlap, beside the 1-rank run of RATE's overlap study
  local rate=$1 with=$RUNS/sweep/$1_overlap_true; local runs=$RUNS/sweep/$1_overlap_false
  [[ $rate == 1gbit ]] && with=$RUNS/strong_1gbit
  mkdir -p $runs; rm -rf $runs/manual-n1-b8; cp -r $with/manual-n1-b8 $runs/
  $C torchrun --port 29650 --rdzv-id no-overlap-$rate -- launch/train.py --config configs/scaling_cpu.yaml --backend manual \
    --data.batch_size 4 --train.global_batch_tokens 512 --train.max_steps $STEPS --log.out_dir $runs \
    --log.run_name manual-n2x1-b4 --log.overwrite true --parallel.manual.overlap false > /tmp/sc20b/no_overlap_$rate.log
  study $1_overlap_false --report-only --note "link $rate, parallel.manual.overlap=false (2x1 run by cluster.py torchrun; 1-rank run: the overlap study's)"
}
for rate in ${RATES:-250mbit 1gbit 4gbit}; do
  up $rate
  if [[ $rate == 4gbit ]]; then
    $C torchrun --port 29700 --nproc-per-node 1 -- comm_bench/allreduce.py -b 64K -e 64M -w 1 -n 3 --out $R/comm_$rate/inter_2x1 --overwrite
    study ${rate}_overlap_true --cluster sc --note "link $rate, parallel.manual.overlap=true"
  fi
  [[ $rate == 1gbit ]] && $C torchrun --port 29700 --nproc-per-node 1 -- comm_bench/allreduce.py -b 64K -e 64M -w 1 -n 3 --out $R/comm_$rate/inter_2x1 --overwrite
  no_overlap $rate
done
