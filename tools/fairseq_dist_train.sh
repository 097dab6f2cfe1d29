#!/usr/bin/env bash
# fairseq-train on NPROC processes of this machine, started by torchrun, each joining fairseq's
# distributed training with its own flags (rank from torchrun's environment):
#   tools/fairseq_dist_train.sh NPROC DATA_BIN [fairseq-train options]
# Add --cpu --distributed-backend gloo to train on CPUs (fairseq spawns one process per GPU
# itself, so a single GPU machine does not need this; on CPUs fairseq cannot spawn, and its
# torchrun detection divides by the GPU count). Several machines: set NNODES, NODE_RANK,
# MASTER_ADDR (and PORT) on each.
set -euo pipefail
if (( $# < 2 )); then
    echo "usage: $0 NPROC DATA_BIN [fairseq-train options]" >&2
    exit 2
fi
NPROC=$1
shift
PYTHON=${PYTHON:-python}
# bash -c expands RANK, LOCAL_RANK and WORLD_SIZE in each process that torchrun starts.
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" --no-python \
    bash -c 'exec "$0" -m fairseq_cli.train "$@" --distributed-init-method env:// \
        --distributed-no-spawn --distributed-world-size "$WORLD_SIZE" \
        --distributed-rank "$RANK" --device-id "$LOCAL_RANK"' "$PYTHON" "$@"
