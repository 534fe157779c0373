#!/usr/bin/env bash
# How far apart are the step times of the SAME 1-rank job run again and again, seconds apart, with and without
# address-space randomisation? In the simulator's cluster sittings a 1-rank run and the same job's runs 20 s
# before and after it differed by up to 24% while each run's own steps stayed within a few percent: the speed
# seems to be drawn per process, not to drift within one. This runs the job ROUNDS times, each round once as
# usual and once under `setarch -R` (the same address layout every time), alternating, and prints the median
# step of each run (first WARMUP steps left out) and the spread per kind. KINDS: aslr (as usual), fixed
# (setarch -R), cpu0 / cpu1 (pinned to one core with taskset: is one core slower?). On an otherwise idle machine:
#     ROUNDS=6 KINDS="aslr fixed" OUT=docs/results/process_speed_spread_cpu bash launch/reproduce/process_speed_spread.sh
# LONG_STEPS=N (ROUNDS=0 to skip the rounds): one run of N steps too, its step time per 10-step window
# (long_run.md): does the speed also move within one process?
set -euo pipefail
ROUNDS=${ROUNDS:-6}; LONG_STEPS=${LONG_STEPS:-0}; STEPS=${STEPS:-14}; WARMUP=${WARMUP:-4}; BATCH=${BATCH:-8}; BACKEND=${BACKEND:-manual}
KINDS=${KINDS:-aslr fixed}; OUT=${OUT:-runs/process_speed_spread/report}; RUNS=${RUNS:-runs/process_speed_spread}
export OMP_NUM_THREADS=1
mkdir -p "$OUT" "$RUNS"
command -v setarch > /dev/null || { echo "error: setarch (util-linux) is missing" >&2; exit 2; }
train() {  # NAME STEPS [WRAPPER...]: the 1-rank job, into $RUNS/NAME
  local name=$1 steps=$2; shift 2
  "$@" python launch/train.py --config configs/scaling_cpu.yaml --backend "$BACKEND" \
    --data.batch_size "$BATCH" --train.global_batch_tokens $((BATCH * 64)) --train.max_steps "$steps" \
    --log.out_dir "$RUNS" --log.run_name "$name" --log.overwrite true > "$RUNS/$name.console.txt" 2>&1
  echo "$name $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/runs.txt"
}
if [[ $LONG_STEPS -gt 0 ]]; then
  train long "$LONG_STEPS"
  python - "$RUNS/long/ranks/rank0/steps.jsonl" "$WARMUP" <<'EOF' | tee "$OUT/long_run.md"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])][int(sys.argv[2]):]
print(f"one run of {len(rows)} steps after the warm-up, per 10-step window:\n")
print("| steps | seconds from the first | median step ms | min | max |\n|---|---|---|---|---|")
for i in range(0, len(rows), 10):
    w = rows[i:i + 10]
    ms = [r["step_ms"] for r in w]
    print(f"| {w[0]['step']}–{w[-1]['step']} | {w[0]['end_unix_s'] - rows[0]['end_unix_s']:.1f} | "
          f"{statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
EOF
fi
[[ $ROUNDS -gt 0 ]] || exit 0
for i in $(seq 1 "$ROUNDS"); do
  for kind in $KINDS; do
    case $kind in
      aslr) wrap=() ;;
      fixed) wrap=(setarch "$(uname -m)" -R) ;;
      cpu[0-9]*) wrap=(taskset -c "${kind#cpu}") ;;
      *) echo "error: KINDS takes aslr, fixed, cpuN; got '$kind'" >&2; exit 2 ;;
    esac
    train "$kind-$i" "$STEPS" "${wrap[@]}"
  done
done
python - "$RUNS" "$WARMUP" "$ROUNDS" $KINDS <<'EOF' | tee "$OUT/spread.md"
import json, statistics, sys
runs, warmup, rounds, kinds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print("| run | median step ms | steps p25–p75 | forward | backward | optimizer |\n|---|---|---|---|---|---|")
medians = {kind: [] for kind in kinds}
for i in range(1, rounds + 1):
    for kind in medians:
        rows = [json.loads(line) for line in open(f"{runs}/{kind}-{i}/ranks/rank0/steps.jsonl")][warmup:]
        step = [r["step_ms"] for r in rows]
        q = statistics.quantiles(step, n=4)
        medians[kind].append(statistics.median(step))
        part = lambda k: statistics.median(r[k] for r in rows)
        print(f"| {kind}-{i} | {medians[kind][-1]:.1f} | {q[0]:.1f}–{q[2]:.1f} | {part('time/forward_ms'):.1f} | "
              f"{part('time/backward_ms'):.1f} | {part('time/optimizer_ms'):.1f} |")
print()
for kind, m in medians.items():
    print(f"- {kind}: run medians {min(m):.1f}–{max(m):.1f} ms (max/min {max(m) / min(m):.3f}), "
          f"spread (stdev/mean) {100 * statistics.stdev(m) / statistics.mean(m):.1f}% over {len(m)} runs")
EOF
