#!/usr/bin/env bash
# vLLM (V1, 0.10+) serve command lines for the pools of proxy_config/amd-qwen3-235b-mi300x.yaml on AMD
# Instinct MI300X (ROCm build of vLLM, e.g. the rocm/vllm container). One node (8 GPUs) per
# instance. Flags per pool:
#
#                            short pool                long pool
#   --max-model-len          8192                      131072 (YaRN x4 over the native 32K)
#   --max-num-seqs           256                       16
#   --max-num-batched-tokens 16384                     8192
#   --gpu-memory-utilization 0.90                      0.90
#   --tensor-parallel-size   8                         8
#   --kv-cache-dtype         fp8                       fp8
#
# Usage: examples/vllm-serve-rocm.sh short|long [port]
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-235B-A22B-FP8}
POOL=${1:?usage: $0 short|long [port]}
PORT=${2:-8000}
# ROCm: AITER kernels for MoE and attention on MI300X
export VLLM_ROCM_USE_AITER=${VLLM_ROCM_USE_AITER:-1}
COMMON=(--served-model-name "$MODEL" --host 0.0.0.0 --port "$PORT"
        --api-key "${VLLM_API_KEY:?set VLLM_API_KEY}" --tensor-parallel-size 8
        --gpu-memory-utilization 0.90 --kv-cache-dtype fp8 --enable-prefix-caching)
case "$POOL" in
  short)
    exec vllm serve "$MODEL" "${COMMON[@]}" --max-model-len 8192 --max-num-seqs 256 \
      --max-num-batched-tokens 16384 ;;
  long)
    exec vllm serve "$MODEL" "${COMMON[@]}" --max-model-len 131072 --max-num-seqs 16 \
      --max-num-batched-tokens 8192 \
      --hf-overrides '{"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000}}' ;;
  *) echo "unknown pool: $POOL (short|long)" >&2; exit 2 ;;
esac
