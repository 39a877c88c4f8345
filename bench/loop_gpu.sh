#!/usr/bin/env bash
# GPU-scale loop benchmark (issue 11): the loop, its matched-compute control and optional loop variants as
# processes side by side on one GPU (the tiny model is launch-bound: one card serves several), each stopped
# after LIMIT seconds; then a table and JSON per variant of whatever adapters they finished. Rerunning on the
# same machine resumes from the stores under WORK. Extra arguments go to every bench/loop.py call.
#   bench/loop_gpu.sh                                  # 8 rounds x 512 pool candidates, seed 0
#   VARIANTS="keepall:thresholds.overall=0" LIMIT=300 OUT=/tmp/out bench/loop_gpu.sh
#   CONTROL=0 bench/loop_gpu.sh                        # the control's store was filled elsewhere (e.g. on CPU:
#                                                      # it trains on the seeds alone) and travelled under WORK
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-loop-gpu-out}
LIMIT=${LIMIT:-420}
mkdir -p "$OUT"
ARGS=(--gpu-scale --separate-control --seeds 0 --threads 4 --work "${WORK:-bench-loop-gpu-work}" "$@")
python3 bench/loop.py "${ARGS[@]}" --report-only > /dev/null  # renders the inputs once, before any starts
if [ "${CONTROL:-1}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout "$LIMIT" python3 bench/loop.py "${ARGS[@]}" --only control > "$OUT/control.log" 2>&1 &
fi
PYTHONUNBUFFERED=1 timeout "$LIMIT" python3 bench/loop.py "${ARGS[@]}" --only loop > "$OUT/loop.log" 2>&1 &
for v in ${VARIANTS:-}; do  # name:field=value[,field=value...]
  sets=(); IFS=, read -ra pairs <<< "${v#*:}"; for p in "${pairs[@]}"; do sets+=(--set "$p"); done
  PYTHONUNBUFFERED=1 timeout "$LIMIT" python3 bench/loop.py "${ARGS[@]}" --only loop --name "${v%%:*}" \
    "${sets[@]}" > "$OUT/${v%%:*}.log" 2>&1 &
done
wait
python3 bench/loop.py "${ARGS[@]}" --report-only --json "$OUT/loop.json" > "$OUT/report-loop.txt" 2>&1
for v in ${VARIANTS:-}; do
  python3 bench/loop.py "${ARGS[@]}" --report-only --name "${v%%:*}" --json "$OUT/${v%%:*}.json" \
    > "$OUT/report-${v%%:*}.txt" 2>&1
done
tail -n 30 "$OUT"/report-*.txt
