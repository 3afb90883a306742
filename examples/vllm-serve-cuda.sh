#!/usr/bin/env bash
# vLLM (V1, 0.10+) serve command lines for the two pools of proxy_config/nvidia-llama3-70b.yaml (CUDA).
# One instance per command; run as many short instances as the planner says
# (litellm-dualpool plan --gpu a100 --model llama-3-70b ...). Flags per pool:
#
#                            short pool (A100 x4)      long pool (H100 x4)
#   --max-model-len          8192                      65536
#   --max-num-seqs           128                       16
#   --max-num-batched-tokens 16384                     8192
#   --gpu-memory-utilization 0.92                      0.92
#   --tensor-parallel-size   4                         4
#   --kv-cache-dtype         auto (BF16)               fp8 (halves KV: 2x the long contexts)
#
# Usage: examples/vllm-serve-cuda.sh short|long [port]
set -euo pipefail
MODEL=${MODEL:-meta-llama/Meta-Llama-3-70B-Instruct}
POOL=${1:?usage: $0 short|long [port]}
PORT=${2:-8000}
COMMON=(--served-model-name "$MODEL" --host 0.0.0.0 --port "$PORT"
        --api-key "${VLLM_API_KEY:?set VLLM_API_KEY}" --tensor-parallel-size 4
        --gpu-memory-utilization 0.92 --enable-prefix-caching)
case "$POOL" in
  short)  # A100-SXM-80GB x4: many concurrent short sequences
    exec vllm serve "$MODEL" "${COMMON[@]}" --max-model-len 8192 --max-num-seqs 128 \
      --max-num-batched-tokens 16384 --kv-cache-dtype auto ;;
  long)   # H100-SXM-80GB x4: few long sequences (chunked prefill, on by default in vLLM V1, keeps decodes moving)
    exec vllm serve "$MODEL" "${COMMON[@]}" --max-model-len 65536 --max-num-seqs 16 \
      --max-num-batched-tokens 8192 --kv-cache-dtype fp8 ;;
  *) echo "unknown pool: $POOL (short|long)" >&2; exit 2 ;;
esac
