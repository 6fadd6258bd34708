#!/usr/bin/env bash
# The BO suite (benchmarks/bo_quality.py) on a many-core CPU machine: NPROC one-thread
# processes (--shard i/NPROC, OMP_NUM_THREADS=1), then the report.
#
# Usage, from anywhere (it cds to the repository root):
#   bash tools/device_bo_suite.sh [bo_quality.py arguments...]
# The arguments go to every shard and to the report, e.g. --suite core, --seeds 5,
# --methods pfn_logei gp sobol, --pfn-options '{"ensemble_size": 4}' --tag ens4,
# --checkpoint PATH. Do not pass --shard, --out, --threads or --results.
#
# Environment:
#   OUT         output directory (default benchmarks/results); results in $OUT/$NAME.jsonl,
#               report in $OUT/$NAME.{md,json,png}, shard logs in $OUT/$NAME_logs.tgz
#   NAME        file stem (default bo_suite)
#   NPROC       processes (default: nproc)
#   PY          python (default: .venv/bin/python if present, else python3); the package is
#               imported from this checkout (PYTHONPATH=repo root), never an installed copy
#   TIME_LIMIT  seconds after which unfinished shards are stopped (default: none); finished
#               runs are kept and the report covers them; run again to resume
#   RESUME      a results JSONL from an earlier (partial) run, copied to $OUT/$NAME.jsonl
#               first if that file does not exist (e.g. one brought back from a device run)
#
# On the device machine ($OUT is set there; torch/botorch/gpytorch are installed system
# wide, the package is not):
#   bash tools/device_bo_suite.sh                       # full suite, 10 seeds
#   TIME_LIMIT=540 RESUME=shared/bo_suite.jsonl bash tools/device_bo_suite.sh   # resumable
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUTDIR=${OUT:-$REPO/benchmarks/results}
NAME=${NAME:-bo_suite}
NPROC=${NPROC:-$(nproc)}
if [ -z "${PY:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUTDIR"
STEM=$OUTDIR/$NAME
RES=$STEM.jsonl
LOGS=$(mktemp -d /tmp/bo_suite_logs.XXXXXX)
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
if [ -n "${RESUME:-}" ] && [ ! -s "$RES" ] && [ -s "$RESUME" ]; then
  cp "$RESUME" "$RES"
  echo "resuming from $RESUME ($(wc -l < "$RES") runs)"
fi
"$PY" -c 'import torch, botorch, gpytorch, botorch_community, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "botorch", botorch.__version__, "gpytorch", gpytorch.__version__, "package", botorch_community.__file__)' || exit 1
echo "$(date +%T) starting $NPROC shards -> $RES (args: $*)"
T0=$(date +%s)
pids=()
for ((i = 0; i < NPROC; i++)); do
  if [ -n "${TIME_LIMIT:-}" ]; then
    timeout -s INT "$TIME_LIMIT" "$PY" benchmarks/bo_quality.py --threads 1 --no-report \
      --shard "$i/$NPROC" --out "$STEM" "$@" > "$LOGS/shard_$i.log" 2>&1 &
  else
    "$PY" benchmarks/bo_quality.py --threads 1 --no-report \
      --shard "$i/$NPROC" --out "$STEM" "$@" > "$LOGS/shard_$i.log" 2>&1 &
  fi
  pids+=($!)
done
# progress: finished runs in the results file, once a minute
( while sleep 60; do
    echo "$(date +%T) $(( $(date +%s) - T0 )) s: $( [ -f "$RES" ] && wc -l < "$RES" || echo 0) runs in $RES"
  done ) &
MON=$!
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
kill "$MON" 2>/dev/null
echo "$(date +%T) shards done in $(( $(date +%s) - T0 )) s ($fail exited non-zero)"
for ((i = 0; i < NPROC; i++)); do
  if grep -q "Traceback\|Error" "$LOGS/shard_$i.log"; then
    echo "--- shard $i log (tail):"; tail -n 15 "$LOGS/shard_$i.log"
  fi
done
"$PY" benchmarks/bo_quality.py --report-only --out "$STEM" "$@"
tar czf "${STEM}_logs.tgz" -C "$LOGS" .
rm -rf "$LOGS"
ls -la "$OUTDIR"
