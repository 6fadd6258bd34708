#!/usr/bin/env bash
# Train or fine-tune a PFN on one GPU in commands of limited length, then rank the result
# against the shipped network on held-out prior data (benchmarks/prior_gap.py).
#
# Usage, from the repository root:
#   CONFIG=NAME bash tools/device_train.sh start MINUTES [BUDGET_MINUTES]
#   CONFIG=NAME INIT=DIR/model bash tools/device_train.sh warm MINUTES [BUDGET_MINUTES]
#   CONFIG=NAME bash tools/device_train.sh resume MINUTES [RESTORE_DIR]
#
#   start   a new run of botorch_community/pfn/configs/NAME.json (or a JSON path) whose
#           learning-rate schedule spans BUDGET_MINUTES of training (default: MINUTES);
#           the command stops cleanly, with a checkpoint, after MINUTES.
#   warm    the same, initialised from the checkpoint INIT (fresh optimizer), for a stage
#           whose config's train.init_from does not point at the right network.
#   resume  continue the run: on the same machine the optimizer state is kept; on a fresh
#           machine pass RESTORE_DIR, a folder holding the run.tar.part* chunks that an
#           earlier command wrote.
#
# Environment: CONFIG (default: default), RUN (run directory, default runs/$CONFIG),
# OUT (logs, the prior_gap table and the run's tar chunks; default $RUN.out, or the device
# machine's $OUT), EXTRA (more train options, e.g. "--set train.seed=12"), DATASETS (per
# prior_gap cell, default 512; GAP=0 skips prior_gap), DEVICE (default cuda), PACK (0: no tar chunks), PY (default
# python).
#
# The lineage of the shipped network is in botorch_community/pfn/configs/README.md. Its
# last three fine-tunes each ran as `start 8.3 24` then `resume 8.3` twice on one warm
# machine (the stage records in weights/default.json name this script by its former name,
# tools/device_metric_finetune.sh). Then ship a run with tools/promote_default.py.
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MODE=${1:?usage: device_train.sh start|warm|resume MINUTES [BUDGET_MINUTES|RESTORE_DIR]}
MIN=${2:?minutes per command}
ARG3=${3:-}
CONFIG=${CONFIG:-default}
RUN=${RUN:-runs/$(basename "$CONFIG" .json)}
OUT=${OUT:-$RUN.out}
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
TRAIN=("$PY" -m botorch_community.pfn.train --out "$RUN" --max-minutes "$MIN" --no-progress
       --device "$DEVICE")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
status=0
case "$MODE" in
  start)
    "${TRAIN[@]}" --config "$CONFIG" --budget-minutes "${ARG3:-$MIN}" ${EXTRA:-} \
      >>"$OUT/train.log" 2>&1 || status=$? ;;
  warm)
    : "${INIT:?set INIT to the checkpoint to start from (e.g. runs/x/model)}"
    "${TRAIN[@]}" --config "$CONFIG" --budget-minutes "${ARG3:-$MIN}" \
      --set "train.init_from=\"$INIT\"" ${EXTRA:-} >>"$OUT/train.log" 2>&1 || status=$? ;;
  resume)
    if [ ! -f "$RUN/train_state.json" ] && [ -n "$ARG3" ]; then
      mkdir -p "$(dirname "$RUN")"
      cat "$ARG3"/run.tar.part* | tar x -C "$(dirname "$RUN")"
      echo "[device_train] restored $RUN from $ARG3"
    fi
    "${TRAIN[@]}" --resume >>"$OUT/train.log" 2>&1 || status=$? ;;
  *) echo "unknown mode $MODE (start, warm or resume)" >&2; exit 2 ;;
esac
grep -v "^step .*datasets/s$" "$OUT/train.log" | tail -n 5 || true
if [ "$status" != 0 ]; then echo "[device_train] training failed ($status): $OUT/train.log" >&2; exit "$status"; fi
if [ "${GAP:-1}" != 0 ]; then  # GAP=0: no comparison (e.g. a network of another d range)
  "$PY" benchmarks/prior_gap.py default "$RUN/model" --device "$DEVICE" \
    --datasets "${DATASETS:-512}" --out "$OUT/prior_gap" 2>&1 | grep -v "prior_gap:" | tail -n 35 \
    || echo "[device_train] prior_gap failed" >&2
fi
if [ "${PACK:-1}" != 0 ]; then  # <= 15 MB chunks, so a later command on a fresh machine can resume
  tar cf - -C "$(dirname "$RUN")" "$(basename "$RUN")" | split -b 15M - "$OUT/run.tar.part"
fi
ls -la "$OUT"
