#!/usr/bin/env bash
# Binarise one direction of a distilled WMT16 EN-RO corpus for fairseq:
#   projects/wmt16_enro_nat/prepare.sh [--force] TEXT_DIR SRC TGT DEST [fairseq-preprocess options]
# TEXT_DIR holds BPE-applied, tokenised text, one sentence a line: train.SRC train.TGT (the
# distilled pairs of this direction), valid.SRC valid.TGT, test.SRC test.TGT. DEST gets a joined
# source-target dictionary (--share-all-embeddings needs one), as in fairseq's NAT examples.
# Distillation differs per direction (an EN->RO teacher rewrites the Romanian side, a RO->EN one
# the English side), so each direction gets its own DEST. An existing, non-empty DEST is left
# alone unless --force is given. Example: prepare.sh wmt16/distill_en-ro en ro data-bin/wmt16_en-ro
set -euo pipefail
usage="usage: $0 [--force] TEXT_DIR SRC TGT DEST [fairseq-preprocess options]"
FORCE=0
if [[ ${1:-} == --force ]]; then
    FORCE=1
    shift
fi
if (( $# < 4 )); then
    echo "$usage" >&2
    exit 2
fi
TEXT_DIR=$1
SRC=$2
TGT=$3
DEST=$4
shift 4
PYTHON=${PYTHON:-python}

if [[ $SRC == "$TGT" ]]; then
    echo "error: SRC and TGT should be two languages (en ro or ro en) but both are '$SRC'" >&2
    exit 2
fi
if [[ ! -d $TEXT_DIR ]]; then
    echo "error: TEXT_DIR should be a directory of BPE-applied text but '$TEXT_DIR' is not one" >&2
    exit 2
fi
missing=()
for split in train valid test; do
    for lang in "$SRC" "$TGT"; do
        [[ -s $TEXT_DIR/$split.$lang ]] || missing+=("$TEXT_DIR/$split.$lang")
    done
done
if (( ${#missing[@]} )); then
    echo "error: expected train, valid and test files for '$SRC' and '$TGT' in '$TEXT_DIR'," \
        "but these are missing or empty: ${missing[*]}" >&2
    exit 2
fi
for split in train valid test; do
    n_src=$(wc -l < "$TEXT_DIR/$split.$SRC")
    n_tgt=$(wc -l < "$TEXT_DIR/$split.$TGT")
    if (( n_src != n_tgt )); then
        echo "error: $split.$SRC and $split.$TGT should be parallel (one line per pair) but" \
            "have $n_src and $n_tgt lines" >&2
        exit 2
    fi
done
if [[ -d $DEST && -n $(ls -A "$DEST") ]]; then
    if (( ! FORCE )); then
        echo "error: '$DEST' exists and is not empty; choose another DEST, or pass --force" \
            "to write over fairseq's files in it" >&2
        exit 2
    fi
    # Only what fairseq-preprocess writes for this pair.
    rm -f "$DEST/dict.$SRC.txt" "$DEST/dict.$TGT.txt" "$DEST/preprocess.log"
    for split in train valid test; do
        rm -f "$DEST/$split.$SRC-$TGT".{"$SRC","$TGT"}.{bin,idx}
    done
fi

# Joined dictionary: fairseq's NAT README ("Make sure to learn a joint vocabulary by passing the
# --joined-dictionary option to fairseq-preprocess"), examples/nonautoregressive_translation.
exec "$PYTHON" -m fairseq_cli.preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$TEXT_DIR/train" --validpref "$TEXT_DIR/valid" --testpref "$TEXT_DIR/test" \
    --destdir "$DEST" --joined-dictionary "$@"
