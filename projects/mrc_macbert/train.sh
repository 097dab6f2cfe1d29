#!/usr/bin/env bash
# Fine-tune MacBERT-base for extractive reading comprehension with the default loss or ReLoss:
#   projects/mrc_macbert/train.sh TRAIN_JSON DEV_JSON OUT_DIR LOSS [tools/finetune_qa.py options]
# LOSS is 'default' (the model's (CE(start) + CE(end)) / 2) or 'reloss' (ReLossQATrainer).
# MODEL picks the model (default hfl/chinese-macbert-base, or a local folder); GPUS > 1 launches
# that many processes with torchrun; PYTHON picks the interpreter (default python).
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 TRAIN_JSON DEV_JSON OUT_DIR LOSS [tools/finetune_qa.py options]" >&2
    exit 2
fi
TRAIN=$(realpath -m "$1")
DEV=$(realpath -m "$2")
OUT=$(realpath -m "$3")
LOSS=$4
shift 4
MODEL=${MODEL:-hfl/chinese-macbert-base}
if [ -e "$MODEL" ]; then MODEL=$(realpath "$MODEL"); fi
GPUS=${GPUS:-1}
PORT=${PORT:-29500}
PYTHON=${PYTHON:-python}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# The recipe of the Chinese MRC baselines (CMRC 2018 with MacBERT-base): 2 epochs, batch 32,
# learning rate 3e-5, 10% warm-up, 512-token windows with a stride of 128, answers <= 30 tokens.
ARGS=(--model "$MODEL" --train "$TRAIN" --dev "$DEV" --out "$OUT" --loss "$LOSS"
      --epochs 2 --batch-size $((32 / GPUS)) --lr 3e-5 --warmup 0.1 --max-length 512
      --stride 128 --max-answer-length 30 "$@")
if [ "$GPUS" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$GPUS" --master_port="$PORT" \
        -m tools.finetune_qa "${ARGS[@]}"
fi
exec "$PYTHON" -m tools.finetune_qa "${ARGS[@]}"
