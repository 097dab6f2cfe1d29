#!/usr/bin/env bash
# Train NAT-Base (vanilla non-autoregressive Transformer) with fairseq's recipe:
#   projects/wmt16_enro_nat/train.sh DATA_BIN SAVE_DIR CRITERION SRC TGT [fairseq-train options]
# CRITERION: nat_loss (fairseq's) or reloss_nat (nat_loss with the learned surrogate in place of
# the token cross-entropy). Nothing else differs between the two. Options given after TGT come
# last, so they override the recipe's (--update-freq 2 on 4 GPUs, --cpu, a smaller model, ...).
# fairseq trains on all visible GPUs; --max-tokens is per GPU. SAVE_DIR resumes from its
# checkpoint_last.pt if there is one.
set -euo pipefail
if (( $# < 5 )); then
    echo "usage: $0 DATA_BIN SAVE_DIR CRITERION SRC TGT [fairseq-train options]" >&2
    exit 2
fi
DATA_BIN=$1
SAVE_DIR=$2
CRITERION=$3
SRC=$4
TGT=$5
shift 5
PYTHON=${PYTHON:-python}
# Registers reloss_nat and lets torch >= 2.6 load fairseq's checkpoints (resuming) for either
# criterion; fairseq imports a user dir under its folder's name, hence not plugins/fairseq.
USER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/plugins/fairseq_reloss

case $CRITERION in
    nat_loss | reloss_nat) ;;
    *)
        echo "error: CRITERION should be nat_loss or reloss_nat but got '$CRITERION'" >&2
        exit 2
        ;;
esac
if [[ ! -f $DATA_BIN/train.$SRC-$TGT.$SRC.idx ]]; then
    echo "error: DATA_BIN should hold the $SRC-$TGT training pairs binarised by prepare.sh" \
        "($DATA_BIN/train.$SRC-$TGT.$SRC.idx) but it does not; distilled data differs per" \
        "direction, so binarise each direction into its own DATA_BIN" >&2
    exit 2
fi

# fairseq's vanilla NAT recipe, examples/nonautoregressive_translation/scripts.md
# ("Non-autoregressive Transformer (NAT, Gu et al., 2017)"), unchanged but for the criterion.
exec "$PYTHON" -m fairseq_cli.train "$DATA_BIN" \
    --user-dir "$USER_DIR" \
    --source-lang "$SRC" --target-lang "$TGT" \
    --save-dir "$SAVE_DIR" \
    --ddp-backend=legacy_ddp \
    --task translation_lev \
    --criterion "$CRITERION" \
    --arch nonautoregressive_transformer \
    --noise full_mask \
    --share-all-embeddings \
    --optimizer adam --adam-betas '(0.9,0.98)' \
    --lr 0.0005 --lr-scheduler inverse_sqrt \
    --stop-min-lr '1e-09' --warmup-updates 10000 \
    --warmup-init-lr '1e-07' --label-smoothing 0.1 \
    --dropout 0.3 --weight-decay 0.01 \
    --decoder-learned-pos \
    --encoder-learned-pos \
    --pred-length-offset \
    --length-loss-factor 0.1 \
    --apply-bert-init \
    --log-format 'simple' --log-interval 100 \
    --fixed-validation-seed 7 \
    --max-tokens 8000 \
    --save-interval-updates 10000 \
    --max-update 300000 \
    "$@"
