#!/usr/bin/env bash
# Device run (one H100): fine-tune the shipped PFN twice side by side on one GPU, bf16
# autocast vs TF32 (amp off), then rank both against the shipped network on held-out
# prior data (benchmarks/prior_gap.py). Writes logs, metrics, the gap table and float16
# copies of both networks to $OUT. Usage: bash tools/device_finetune_ab.sh MINUTES
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
MIN=${1:-7}
R=/tmp/pfnruns; mkdir -p "$R"
CFG=botorch_community/pfn/configs/default_finetune.json
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m botorch_community.pfn.train --config $CFG --out $R/bf16 --steps 13000 \
  --max-minutes "$MIN" --no-progress >"$OUT/bf16.log" 2>&1 &
python -m botorch_community.pfn.train --config $CFG --out $R/tf32 --steps 8000 \
  --max-minutes "$MIN" --no-progress --set train.amp=false >"$OUT/tf32.log" 2>&1 &
wait
tail -n 4 "$OUT/bf16.log" "$OUT/tf32.log"
python benchmarks/prior_gap.py default $R/bf16/model $R/tf32/model --device cuda \
  --datasets 512 --out "$OUT/prior_gap_ab" 2>&1 | grep -v "prior_gap:"
python - <<PY
import torch
from botorch_community.pfn.checkpoint import load_pretrained, save_pretrained
for v in ("bf16", "tf32"):
    net = load_pretrained("$R/%s/model" % v)
    save_pretrained(net, "$OUT/%s_model" % v, dtype=torch.float16, metadata=net.checkpoint_metadata)
PY
for v in bf16 tf32; do cp $R/$v/metrics.jsonl "$OUT/${v}_metrics.jsonl"; cp $R/$v/train_state.json "$OUT/${v}_train_state.json"; done
(cd "$OUT" && tar czf logs.tgz *.log *_metrics.jsonl *_train_state.json prior_gap_ab.* && rm -f *.log *_metrics.jsonl *_train_state.json prior_gap_ab.*)
ls -la "$OUT"
