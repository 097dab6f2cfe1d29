#!/usr/bin/env bash
# Both directions with both criteria, then a BLEU table:
#   projects/wmt16_enro_nat/run_all.sh TEXT_EN_RO TEXT_RO_EN WORK_DIR [fairseq-train options]
# TEXT_EN_RO, TEXT_RO_EN: the distilled text of each direction, as prepare.sh takes it. Writes
# WORK_DIR/data-bin/{en-ro,ro-en} (kept if there), WORK_DIR/{nat_loss,reloss_nat}_{en-ro,ro-en}/
# (checkpoints; a run resumes from its checkpoint_last.pt) and evaluates each checkpoint_last.pt:
# the two criteria optimise different losses, so fairseq's checkpoint_best.pt (lowest validation
# loss) would pick by different measures. The four runs go one after the other.
set -euo pipefail
if (( $# < 3 )); then
    echo "usage: $0 TEXT_EN_RO TEXT_RO_EN WORK_DIR [fairseq-train options]" >&2
    exit 2
fi
declare -A TEXT=([en-ro]=$1 [ro-en]=$2)
WORK_DIR=$3
shift 3
HERE=$(dirname "${BASH_SOURCE[0]}")

for pair in en-ro ro-en; do
    data_bin=$WORK_DIR/data-bin/$pair
    if [[ -f $data_bin/train.$pair.${pair%-*}.idx ]]; then
        echo "using $data_bin"
    else
        bash "$HERE/prepare.sh" "${TEXT[$pair]}" "${pair%-*}" "${pair#*-}" "$data_bin"
    fi
done
for pair in en-ro ro-en; do
    for criterion in nat_loss reloss_nat; do
        bash "$HERE/train.sh" "$WORK_DIR/data-bin/$pair" "$WORK_DIR/${criterion}_$pair" \
            "$criterion" "${pair%-*}" "${pair#*-}" "$@"
    done
done
results=()
for pair in en-ro ro-en; do
    for criterion in nat_loss reloss_nat; do
        log=$WORK_DIR/${criterion}_$pair/evaluate.log
        bash "$HERE/evaluate.sh" "$WORK_DIR/data-bin/$pair" \
            "$WORK_DIR/${criterion}_$pair/checkpoint_last.pt" "${pair%-*}" "${pair#*-}" \
            | tee "$log"
        bleu=$(sed -n 's/^Generate .*BLEU4 = \([0-9.]*\),.*/\1/p' "$log")
        results+=("| $pair | $criterion | $bleu |")
    done
done
echo
echo "| direction | criterion | BLEU4 (fairseq, tokenised) |"
echo "|---|---|---|"
printf '%s\n' "${results[@]}"
