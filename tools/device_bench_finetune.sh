#!/usr/bin/env bash
# Device run (one H100): the GPU benchmark figures (restarts, scaling, end to end), then
# a low-learning-rate fine-tune of the shipped PFN with the time left, ranked against the
# shipped network by benchmarks/prior_gap.py. Usage: bash tools/device_bench_finetune.sh [SECONDS]
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
TOTAL=${1:-560}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/bench
timeout 210 python benchmarks/restarts.py --device cuda --time-budget 2 --out /tmp/bench/restarts_cuda 2>&1 | grep -v "it/s\]\|s/it\]" | tail -n 30
timeout 90 python benchmarks/scaling.py --device cuda --time-budget 1 --out /tmp/bench/scaling_cuda 2>&1 | grep -v "it/s\]\|s/it\]" | tail -n 25
timeout 150 python benchmarks/end_to_end.py --device cuda --network default --uncached-timeout 60 --out /tmp/bench/end_to_end_cuda 2>&1 | grep -v "it/s\]\|s/it\]" | tail -n 15
(cd /tmp/bench && tar czf "$OUT/bench_cuda.tgz" .)
REM=$((TOTAL - SECONDS - 45))
echo "[device] $SECONDS s used by the benchmarks; fine-tuning for $REM s"
if [ "$REM" -gt 60 ]; then
  M=$(python -c "print(round($REM / 60, 2))")
  R=/tmp/pfnruns/ft_lowlr
  python -m botorch_community.pfn.train --config botorch_community/pfn/configs/default_finetune.json \
    --out $R --budget-minutes "$M" --max-minutes "$(python -c "print($M + 0.4)")" --no-progress \
    --set train.lr=5e-5 --set train.warmup_steps=100 --set train.min_lr_ratio=0.02 --set train.seed=2 >"$OUT/ft.log" 2>&1
  tail -n 3 "$OUT/ft.log"
  python benchmarks/prior_gap.py default $R/model --device cuda --datasets 512 --out "$OUT/prior_gap_ft" 2>&1 | grep -v "prior_gap:"
  python - <<PY
import torch
from botorch_community.pfn.checkpoint import load_pretrained, save_pretrained
net = load_pretrained("$R/model")
save_pretrained(net, "$OUT/ft_model", dtype=torch.float16, metadata=net.checkpoint_metadata)
PY
  cp $R/metrics.jsonl "$OUT/ft_metrics.jsonl"; cp $R/train_state.json "$OUT/ft_train_state.json"
fi
ls -la "$OUT"
