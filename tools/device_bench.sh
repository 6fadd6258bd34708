#!/usr/bin/env bash
# Device run (one H100): end-to-end optimize_acqf figures and the restarts table on CUDA.
# Usage: bash tools/device_bench.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/bench
timeout 170 python benchmarks/end_to_end.py --device cuda --network default --uncached-timeout 60 --out /tmp/bench/end_to_end_cuda 2>&1 | grep -v "it/s\]\|s/it\]\|run/s\]" | tail -n 12
timeout 225 python benchmarks/restarts.py --device cuda --time-budget 1.5 --candidates 4 8 16 32 1024 --out /tmp/bench/restarts_cuda 2>&1 | grep -v "it/s\]\|s/it\]\|run/s\]" | tail -n 30
(cd /tmp/bench && tar czf "$OUT/bench_cuda2.tgz" .)
ls -la "$OUT"
