#!/usr/bin/env bash
# The demo at a GPU-sized shape in bf16 on CUDA: about 1.3 B parameters (24 layers, hidden
# 2048, 16 heads, seq 1024, GPT-2's vocabulary size padded to 50,304), micro batch 4.
# Prints the card's measured bf16 matmul peak (megatron-flops peak, beside the datasheet's),
# then two demo runs with MFU/HFU against the datasheet peak of the card
# (torch.cuda.get_device_name): 1. no recompute (MFU = HFU), 2. --checkpoint-activations
# (full recompute: HFU > MFU), 3. fused attention (--attention sdpa) with two iterations
# profiled (--profile: the trace, the per-component table and its picture in $PROFILE_DIR).
# About 2-3 minutes and ~40 GB of GPU memory on an H100/H200.
#
#   bash benchmarks/gpu_demo.sh              run it (PYTHON=python3, MICRO=4, ITERS=100,
#                                            PROFILE_DIR=gpu_profile)
#   SMOKE=1 bash benchmarks/gpu_demo.sh      the same commands at a tiny shape on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
MICRO=${MICRO:-4}
ITERS=${ITERS:-100}
DEVICE=cuda
SHAPE=(--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 1024
       --max-position-embeddings 1024 --vocab-size 50257 --micro-batch-size "$MICRO")
PEAK_SIZES=(--size 4096 --size 8192)
RECOMPUTE_ITERS=40
SDPA_ITERS=30
PROFILE_DIR=${PROFILE_DIR:-gpu_profile}
if [[ "${SMOKE:-0}" == 1 ]]; then
    DEVICE=cpu ITERS=4 RECOMPUTE_ITERS=4 SDPA_ITERS=4
    SHAPE=(--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64
           --max-position-embeddings 64 --vocab-size 50257 --micro-batch-size 2)
    PEAK_SIZES=(--size 128)
else
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")'

echo "== measured dense matmul peak (megatron-flops peak) =="
"$PYTHON" -m megatron_flops peak --device "$DEVICE" --dtype bf16 "${PEAK_SIZES[@]}"

COMMON=("${SHAPE[@]}" --bf16 --device "$DEVICE" --log-interval 10 --lr 3e-4 --min-lr 3e-5
        --lr-warmup-iters 10)
echo "== demo, bf16 autocast, no recompute =="
"$PYTHON" -m megatron_flops demo "${COMMON[@]}" --train-iters "$ITERS"

echo "== demo, bf16 autocast, --checkpoint-activations (full recompute) =="
"$PYTHON" -m megatron_flops demo "${COMMON[@]}" --train-iters "$RECOMPUTE_ITERS" \
    --checkpoint-activations

echo "== demo, bf16 autocast, fused attention (sdpa), iterations 11-12 profiled =="
"$PYTHON" -m megatron_flops demo "${COMMON[@]}" --train-iters "$SDPA_ITERS" --attention sdpa \
    --profile --profile-start "$((SDPA_ITERS > 12 ? 11 : 2))" --profile-iters 2 \
    --profile-dir "$PROFILE_DIR"
