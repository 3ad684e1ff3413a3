#!/usr/bin/env bash
# Train with torchrun, torchtitan style: check the input in one process, then launch.
#
#   launch/run_train.sh CONFIG [--section.key value ...]
#   NPROC=2 launch/run_train.sh configs/demo.toml --train.steps 100         # one node, 2 ranks
#   NNODES=2 MASTER_ADDR=node0 RDZV_ID=run7 launch/run_train.sh CONFIG     # on every node
#
# First `python -m dint.train --config CONFIG ... --check` runs in one process, so a bad
# config or store gives one line on stderr and exit 2 instead of torchrun's per-rank
# failure report; then torchrun starts the ranks with the same arguments.
#
# Environment:
#   NPROC        ranks per node (default auto: one per GPU, or one per CPU core without GPUs)
#   NNODES       nodes (default 1: --standalone, a private rendezvous on this host)
#   MASTER_ADDR  with NNODES > 1: the host of the c10d rendezvous (required)
#   MASTER_PORT  its port (default 29500)
#   RDZV_ID      rendezvous id, the same on every node (default $SLURM_JOB_ID, else "dint")
#   PYTHON       interpreter (default: the repository's .venv if present, else python3)
#   TORCHRUN     launcher command (default: "$PYTHON -m torch.distributed.run")
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: launch/run_train.sh CONFIG [--section.key value ...]" >&2
    exit 2
fi
CONFIG=$1
shift

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then
        PYTHON=$REPO/.venv/bin/python
    else
        PYTHON=python3
    fi
fi
if [[ -n ${TORCHRUN:-} ]]; then
    read -r -a torchrun <<<"$TORCHRUN"
else
    torchrun=("$PYTHON" -m torch.distributed.run)
fi
# dint importable from anywhere; paths in CONFIG stay relative to the caller's directory.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

NPROC=${NPROC:-auto}
NNODES=${NNODES:-1}
if [[ ! $NNODES =~ ^[1-9][0-9]*$ ]]; then
    echo "launch/run_train.sh: NNODES=$NNODES is not a positive whole number" >&2
    exit 2
fi
if [[ $NNODES -gt 1 ]]; then
    if [[ -z ${MASTER_ADDR:-} ]]; then
        echo "launch/run_train.sh: NNODES=$NNODES needs MASTER_ADDR, the rendezvous host" >&2
        exit 2
    fi
    nodes=(--nnodes "$NNODES" --rdzv_backend c10d
           --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}"
           --rdzv_id "${RDZV_ID:-${SLURM_JOB_ID:-dint}}")
else
    nodes=(--standalone --nnodes 1)
fi

# One process, one line on error (dint.train exits 2 for bad input).
"$PYTHON" -m dint.train --config "$CONFIG" "$@" --check

exec "${torchrun[@]}" "${nodes[@]}" --nproc_per_node "$NPROC" -m dint.train --config "$CONFIG" "$@"
