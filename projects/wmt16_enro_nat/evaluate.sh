#!/usr/bin/env bash
# Translate the test set with a NAT checkpoint and print its BLEU:
#   projects/wmt16_enro_nat/evaluate.sh DATA_BIN CHECKPOINT SRC TGT [fairseq-generate options]
# Vanilla NAT decoding as in fairseq's NAT README: one parallel pass (--iter-decode-max-iter 0),
# greedy, one length candidate. Prints fairseq's BLEU4 line, the tokenised BLEU on BPE-removed
# text that NAT papers report, and sacreBLEU on the same text as a check (no tokenisation and no
# smoothing of its own, as fairseq's).
# Writes fairseq-generate's output to OUT (default: next to the checkpoint,
# CHECKPOINT_NAME.generate-SRC-TGT.txt), and the hypotheses and references beside it.
set -euo pipefail
if (( $# < 4 )); then
    echo "usage: $0 DATA_BIN CHECKPOINT SRC TGT [fairseq-generate options]" >&2
    exit 2
fi
DATA_BIN=$1
CHECKPOINT=$2
SRC=$3
TGT=$4
shift 4
PYTHON=${PYTHON:-python}
OUT=${OUT:-${CHECKPOINT%.pt}.generate-$SRC-$TGT.txt}
# Lets torch >= 2.6 (weights_only loading) read fairseq's NAT checkpoints, whichever criterion
# trained them.
USER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/plugins/fairseq_reloss

if [[ ! -f $CHECKPOINT ]]; then
    echo "error: CHECKPOINT should be a checkpoint file written by train.sh but" \
        "'$CHECKPOINT' does not exist" >&2
    exit 2
fi
if [[ ! -f $DATA_BIN/dict.$SRC.txt || ! -f $DATA_BIN/dict.$TGT.txt ]]; then
    echo "error: DATA_BIN should be the directory the model was trained on (with" \
        "dict.$SRC.txt and dict.$TGT.txt) but '$DATA_BIN' lacks them" >&2
    exit 2
fi

# fairseq's NAT README, "Translate" (examples/nonautoregressive_translation/README.md);
# --iter-decode-max-iter 0 for the vanilla NAT, which does not refine its first output.
# --required-batch-size-multiple 1: with fairseq's default of 8, fairseq-fixed 0.12.3.1 drops the
# last (N mod 8) sentences of the test set, its longest ones (up to 7).
"$PYTHON" -m fairseq_cli.generate "$DATA_BIN" \
    --user-dir "$USER_DIR" \
    --source-lang "$SRC" --target-lang "$TGT" \
    --gen-subset test \
    --task translation_lev \
    --path "$CHECKPOINT" \
    --iter-decode-max-iter 0 \
    --iter-decode-eos-penalty 0 \
    --iter-decode-with-beam 1 \
    --beam 1 --remove-bpe \
    --print-step \
    --batch-size 400 \
    --required-batch-size-multiple 1 \
    "$@" > "$OUT"

grep '^Generate ' "$OUT"
hypotheses=${OUT%.txt}.hyp
references=${OUT%.txt}.ref
# Sentence order: fairseq prints batches in length order; ids restore the file's order.
{ grep '^H-' "$OUT" || true; } | sed 's/^H-//' | sort -t$'\t' -k1,1n | cut -f3 > "$hypotheses"
{ grep '^T-' "$OUT" || true; } | sed 's/^T-//' | sort -t$'\t' -k1,1n | cut -f2 > "$references"
if [[ -s $hypotheses ]]; then
    printf 'sacreBLEU: '
    "$PYTHON" -m sacrebleu "$references" --input "$hypotheses" --tokenize none \
        --smooth-method none --format text
fi
echo "$(wc -l < "$hypotheses") sentences translated: $OUT"
