#!/usr/bin/env bash
# The demo at a GPU-sized shape in bf16 on CUDA: about 1.3 B parameters (24 layers, hidden
# 2048, 16 heads, seq 1024, GPT-2's vocabulary size padded to 50,304), micro batch 8.
# Prints the measured matmul peak of the card, then two runs' lines and summaries with
# MFU/HFU against the datasheet peak of the card (torch.cuda.get_device_name):
#   1. no recompute (MFU = HFU), 2. --checkpoint-activations (HFU > MFU).
# About 1-2 minutes on an H100/H200; needs about 75 GB of GPU memory at MICRO=8
# (MICRO=4 for an 80 GB card if it runs out).  Run from the repository root:
#   bash benchmarks/gpu_demo.sh            (PYTHON=python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
MICRO=${MICRO:-8}
ITERS=${ITERS:-60}
SHAPE=(--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 1024
       --max-position-embeddings 1024 --vocab-size 50257 --micro-batch-size "$MICRO")

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

echo "== measured dense matmul peak (megatron-flops peak) =="
"$PYTHON" -m megatron_flops peak --device cuda --dtype bf16 --size 4096 --size 8192

echo "== demo, bf16 autocast, no recompute =="
"$PYTHON" -m megatron_flops demo "${SHAPE[@]}" --bf16 --device cuda \
    --train-iters "$ITERS" --log-interval 10 --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 10

echo "== demo, bf16 autocast, --checkpoint-activations (full recompute) =="
"$PYTHON" -m megatron_flops demo "${SHAPE[@]}" --bf16 --device cuda --checkpoint-activations \
    --train-iters 30 --log-interval 10 --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 10
