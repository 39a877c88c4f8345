#!/usr/bin/env bash
# GPU-scale loop benchmark (issue 11): the loop and its matched-compute control as two processes side by
# side on one GPU (the tiny model is launch-bound: one card serves both), each stopped after LIMIT seconds;
# then the table and JSON of whatever adapters they finished. Extra arguments go to bench/loop.py.
#   bench/loop_gpu.sh                          # 8 rounds x 512 pool candidates, seed 0
#   LIMIT=300 OUT=/tmp/out bench/loop_gpu.sh --rounds 4
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-loop-gpu-out}
LIMIT=${LIMIT:-420}
mkdir -p "$OUT"
ARGS=(--gpu-scale --separate-control --seeds 0 --threads 4 --work "${WORK:-bench-loop-gpu-work}" "$@")
python3 bench/loop.py "${ARGS[@]}" --report-only > /dev/null  # renders the inputs once, before both start
for v in loop control; do
  PYTHONUNBUFFERED=1 timeout "$LIMIT" python3 bench/loop.py "${ARGS[@]}" --only "$v" > "$OUT/$v.log" 2>&1 &
done
wait
python3 bench/loop.py "${ARGS[@]}" --report-only --json "$OUT/loop_gpu.json" | tee "$OUT/report.txt"
