#!/usr/bin/env bash
# Device run (one H100): grow the shipped PFN into one with metric attention and fine-tune
# it (configs/default_metric.json), then rank it against the shipped network with
# benchmarks/prior_gap.py. The run directory comes back as <=15 MB tar chunks so that a
# later call on a fresh machine can resume it (pass the chunks' folder as RESTORE).
# Usage: bash tools/device_metric_finetune.sh start|resume|warm MINUTES [BUDGET_MINUTES] [RESTORE]
#   warm: a new run initialised from the checkpoint RESTORE/model (fresh optimizer), with
#   extra --set overrides in $EXTRA (used when the optimizer state is too big to carry).
#   start also takes $EXTRA; resume on the same warm machine keeps the optimizer state.
#   $CONFIG names the training config (default: default_metric; default_noise_hint grows
#   noise hints).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MODE=$1; MIN=$2; BUDGET=${3:-17}; RESTORE=${4:-}; CONFIG=${CONFIG:-default_metric}
R=runs/metric
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$MODE" = start ]; then
  python -m botorch_community.pfn.train --config $CONFIG --out $R ${EXTRA:-} \
    --budget-minutes "$BUDGET" --max-minutes "$MIN" --no-progress >"$OUT/train.log" 2>&1
elif [ "$MODE" = warm ]; then
  python -m botorch_community.pfn.train --config $CONFIG --out $R \
    --set "train.init_from=\"$RESTORE/model\"" ${EXTRA:-} \
    --budget-minutes "$BUDGET" --max-minutes "$MIN" --no-progress >"$OUT/train.log" 2>&1
else
  if [ ! -f $R/train_state.json ] && [ -n "$RESTORE" ]; then
    mkdir -p runs && cat "$RESTORE"/run.tar.part* | tar x -C runs && echo "[device] restored $R"
  fi
  python -m botorch_community.pfn.train --resume --out $R --max-minutes "$MIN" --no-progress \
    >"$OUT/train.log" 2>&1
fi
grep -v "^step .*datasets/s$" "$OUT/train.log" | tail -n 5; grep "eval" "$OUT/train.log" | tail -n 4
python benchmarks/prior_gap.py default $R/model --device cuda --datasets 512 --out "$OUT/prior_gap_metric" 2>&1 | grep -v "prior_gap:" | tail -n 30
(cd runs && tar cf - metric | split -b 15M - "$OUT/run.tar.part")
ls -la "$OUT"
