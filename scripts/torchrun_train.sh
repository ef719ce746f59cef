#!/usr/bin/env bash
# Multi-node training with torchrun (no SLURM). Run the same command on every node:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_train.sh --model.arch resnext50_32x4d
# Lightning reads the ranks that torchrun sets (TorchElasticEnvironment). Every rank must name
# the same run: RUN_ID (the same on every node; required with NNODES > 1) names it, else a new
# one is drawn here. RUN_ID=<id> again resumes that run from its last.ckpt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${RUN_ID:-}" ]; then
  if [ "${NNODES:-1}" != 1 ]; then
    echo "error: set RUN_ID, the same on every node (a new one: .venv/bin/python -c" \
      "'from resnext_lit.run_identity import new_run_id; print(new_run_id())')" >&2
    exit 2
  fi
  RUN_ID=$(.venv/bin/python -c 'from resnext_lit.run_identity import new_run_id; print(new_run_id())')
fi
# GPUs: torch's count (no nvidia-smi needed). Port: MASTER_PORT, else a free one on a single
# node (two runs on one node must not share it); several nodes must agree, so 29500 there.
GPUS=${GPUS:-$(.venv/bin/python -c 'import torch; print(torch.cuda.device_count())')}
if [ "$GPUS" = 0 ]; then echo "error: no GPU visible; set GPUS (and --trainer.accelerator cpu)" >&2; exit 2; fi
if [ "${NNODES:-1}" = 1 ]; then
  MASTER_PORT=${MASTER_PORT:-$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
fi
.venv/bin/torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --nproc_per_node "$GPUS" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m resnext_lit fit --config configs/imagenet_paper.yaml --config configs/trainer/ddp.yaml \
  --trainer.num_nodes "${NNODES:-1}" --trainer.devices "$GPUS" --run_id "$RUN_ID" "$@"
