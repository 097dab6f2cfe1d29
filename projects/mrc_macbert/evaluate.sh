#!/usr/bin/env bash
# Score answers against a SQuAD-format dev set: CMRC 2018 EM/F1 and DuReader ROUGE-L/BLEU-4.
#   projects/mrc_macbert/evaluate.sh PREDICTIONS_JSON DEV_JSON [tools/evaluate_qa.py options]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 PREDICTIONS_JSON DEV_JSON [--out scores.json]" >&2
    exit 2
fi
PYTHON=${PYTHON:-python}
PREDICTIONS=$(realpath "$1")
DEV=$(realpath "$2")
shift 2
cd "$(dirname "$0")/../.."
exec "$PYTHON" -m tools.evaluate_qa "$PREDICTIONS" "$DEV" "$@"
