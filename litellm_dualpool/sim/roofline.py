"""Memory and time of one vLLM instance: KV-cache capacity and the roofline step time.

Capacity (per GPU, as vLLM sizes it at start-up):

    kv_bytes_per_gpu = memory * gpu_memory_utilization - weights / TP - reserve
    kv_capacity_tokens = kv_bytes_per_gpu / kv_bytes_per_token_per_gpu

where a GPU holds ceil(kv_heads / TP) KV heads (heads are replicated when TP > kv_heads), and
``reserve`` stands for what vLLM's memory profiling finds besides weights: CUDA context, NCCL and
CUDA-graph buffers, and the activation peak of a ``max_num_batched_tokens`` forward pass.

Step time (one engine step = one forward pass over the scheduled tokens, per GPU):

    t = max(bytes_read / (bandwidth * MEMORY_EFFICIENCY), flops / (peak * COMPUTE_EFFICIENCY))
        + overhead

bytes_read = the weights touched (all of them for dense; for MoE, shared weights plus the
experts a batch of T tokens reaches) + the KV cache attended to; flops = 2 * active_params * T
+ attention (4 * layers * heads * head_dim per context token). Every quantity is divided by TP.

Tensor parallelism is not free: each layer all-reduces its attention and MLP outputs (T tokens x
hidden x 2 bytes), which vLLM does between the matmuls, not overlapped with them. A ring
all-reduce moves 2 (TP - 1) / TP of the message over each GPU's link, so a step adds

    2 * layers * (latency + 2 (TP - 1) / TP * T * hidden * 2 bytes / (link * ALLREDUCE_EFFICIENCY))

which makes a small TP cheaper per token on PCIe cards and costs an NVLink TP 8 a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from litellm_dualpool.sim.catalog import DType, GpuSpec, ModelSpec

#: Fraction of peak HBM bandwidth that decode kernels (GEMV-like weight streaming, paged
#: attention) reach in practice. Measured vLLM decode lands at 70-85% of the datasheet figure.
MEMORY_EFFICIENCY = 0.80
#: Fraction of the dense tensor peak that prefill and large-batch GEMMs reach under tensor
#: parallelism (model FLOPs utilisation); 50-60% is typical of tuned serving stacks.
COMPUTE_EFFICIENCY = 0.55
#: Per-step host work of vLLM V1 (scheduling, input preparation, sampling, CUDA-graph launch).
BASE_STEP_OVERHEAD_SECONDS = 0.002
#: Latency of one tensor-parallel all-reduce; there are two per layer (attention and MLP).
ALLREDUCE_LATENCY_SECONDS = 10e-6
#: Share of the per-direction link bandwidth a ring all-reduce reaches (NCCL's bus bandwidth
#: on NVLink and PCIe lands at 70-85% of the link figure for messages of a few megabytes).
ALLREDUCE_EFFICIENCY = 0.7
#: Bytes per activation value exchanged by the all-reduce (BF16, also for FP8 checkpoints).
ACTIVATION_BYTES = 2
#: Start-up reserve per GPU besides weights: CUDA context, NCCL buffers, CUDA graphs.
FIXED_RESERVE_BYTES_PER_GPU = 1024**3
#: Activation peak per scheduled token and hidden unit during vLLM's profiling run (bytes):
#: a few BF16 copies of the residual stream plus MLP intermediates, for max_num_batched_tokens.
ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN = 8


def default_step_overhead_seconds(model: ModelSpec, tensor_parallel_size: int) -> float:
    """Host overhead plus 2 all-reduces per layer when the model is split over GPUs."""
    allreduce = 2 * model.num_layers * ALLREDUCE_LATENCY_SECONDS if tensor_parallel_size > 1 else 0.0
    return BASE_STEP_OVERHEAD_SECONDS + allreduce


def allreduce_seconds_per_token(gpu: GpuSpec, model: ModelSpec, tensor_parallel_size: int) -> float:
    """Bandwidth part of the 2 all-reduces per layer, per token in the step (0 without TP)."""
    if tensor_parallel_size <= 1:
        return 0.0
    ring = 2.0 * (tensor_parallel_size - 1) / tensor_parallel_size
    per_layer = ring * model.hidden_size * ACTIVATION_BYTES / (gpu.interconnect_bytes_per_second * ALLREDUCE_EFFICIENCY)
    return 2 * model.num_layers * per_layer


def kv_bytes_per_token_per_gpu(model: ModelSpec, tensor_parallel_size: int, kv_dtype: DType) -> int:
    heads_per_gpu = math.ceil(model.num_kv_heads / tensor_parallel_size)
    return 2 * model.num_layers * heads_per_gpu * model.head_dim * kv_dtype.bytes_per_value


def reserve_bytes_per_gpu(model: ModelSpec, max_num_batched_tokens: int) -> int:
    activations = max_num_batched_tokens * model.hidden_size * ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN
    return FIXED_RESERVE_BYTES_PER_GPU + activations


def kv_bytes_per_gpu(
    gpu: GpuSpec,
    model: ModelSpec,
    *,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    weight_dtype: DType,
    max_num_batched_tokens: int,
) -> int:
    """Bytes left for the KV cache on each GPU (may be negative: the model does not fit)."""
    budget = gpu.memory_bytes * gpu_memory_utilization
    weights = model.total_params * weight_dtype.bytes_per_value / tensor_parallel_size
    return int(budget - weights - reserve_bytes_per_gpu(model, max_num_batched_tokens))


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Roofline step time of one instance; every rate and size is per GPU."""

    model: ModelSpec
    tensor_parallel_size: int
    weight_dtype: DType
    kv_dtype: DType
    bandwidth_bytes_per_second: float  # effective (peak * MEMORY_EFFICIENCY)
    flops_per_second: float  # effective (peak * COMPUTE_EFFICIENCY)
    overhead_seconds: float
    allreduce_seconds_per_token: float = 0.0  # tensor-parallel traffic, serial with the matmuls

    @classmethod
    def build(
        cls,
        gpu: GpuSpec,
        model: ModelSpec,
        *,
        tensor_parallel_size: int,
        weight_dtype: DType,
        kv_dtype: DType,
        overhead_seconds: float,
    ) -> StepTimeModel:
        return cls(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            bandwidth_bytes_per_second=gpu.memory_bandwidth_bytes_per_second * MEMORY_EFFICIENCY,
            flops_per_second=gpu.flops_per_second(weight_dtype) * COMPUTE_EFFICIENCY,
            overhead_seconds=overhead_seconds,
            allreduce_seconds_per_token=allreduce_seconds_per_token(gpu, model, tensor_parallel_size),
        )

    # -- the two sides of the roofline -------------------------------------------------------
    def weight_bytes(self, num_tokens: int) -> float:
        """Weights read per GPU by one forward pass over ``num_tokens`` tokens."""
        m = self.model
        if not m.is_moe:
            params = m.total_params
        else:
            k_over_e = m.experts_per_token / m.num_experts
            touched = 1.0 - (1.0 - k_over_e) ** max(num_tokens, 1)
            params = (m.total_params - m.expert_params) + m.expert_params * touched
        return params * self.weight_dtype.bytes_per_value / self.tensor_parallel_size

    @property
    def kv_bytes_per_context_token(self) -> float:
        return kv_bytes_per_token_per_gpu(self.model, self.tensor_parallel_size, self.kv_dtype)

    @property
    def linear_flops_per_token(self) -> float:
        return 2.0 * self.model.active_params / self.tensor_parallel_size

    @property
    def attention_flops_per_context_token(self) -> float:
        return self.model.attention_flops_per_context_token() / self.tensor_parallel_size

    def step_seconds(
        self, num_decode_tokens: int, decode_context_tokens: int, prefill_chunks: Iterable[tuple[int, int]]
    ) -> float:
        """One step: ``num_decode_tokens`` decodes attending to ``decode_context_tokens`` in
        total, plus prefill chunks given as (tokens already computed, chunk tokens)."""
        tokens = num_decode_tokens
        kv_read = decode_context_tokens
        attended = decode_context_tokens
        for offset, size in prefill_chunks:
            tokens += size
            kv_read += offset + size
            attended += size * offset + size * (size + 1) // 2
        if tokens == 0:
            return 0.0
        memory = self.weight_bytes(tokens) + self.kv_bytes_per_context_token * kv_read
        flops = self.linear_flops_per_token * tokens + self.attention_flops_per_context_token * attended
        return (
            max(memory / self.bandwidth_bytes_per_second, flops / self.flops_per_second)
            + self.overhead_seconds + self.allreduce_seconds_per_token * tokens
        )

    def decode_run_seconds(self, num_decodes: int, first_context_tokens: int, steps: int) -> float:
        """Total time of ``steps`` consecutive pure-decode steps of ``num_decodes`` requests,
        where step j (1-based) attends to ``first_context_tokens + num_decodes * (j - 1)``.

        Both roofline sides grow linearly with j, so the sum of their maximum is two
        arithmetic series split where the lines cross; O(1) whatever ``steps`` is.
        """
        if steps <= 0:
            return 0.0
        n = num_decodes
        mem0 = (self.weight_bytes(n) + self.kv_bytes_per_context_token * first_context_tokens)
        mem0 /= self.bandwidth_bytes_per_second
        mem_slope = self.kv_bytes_per_context_token * n / self.bandwidth_bytes_per_second
        cmp0 = self.linear_flops_per_token * n + self.attention_flops_per_context_token * first_context_tokens
        cmp0 /= self.flops_per_second
        cmp_slope = self.attention_flops_per_context_token * n / self.flops_per_second
        total = _sum_of_max_lines(mem0, mem_slope, cmp0, cmp_slope, steps)
        return total + (self.overhead_seconds + self.allreduce_seconds_per_token * n) * steps


def _series(a: float, b: float, first: int, last: int) -> float:
    """sum_{i=first}^{last} (a + b*i) for integer i, 0 when empty."""
    if last < first:
        return 0.0
    count = last - first + 1
    return a * count + b * (first + last) * count / 2.0


def _sum_of_max_lines(a1: float, b1: float, a2: float, b2: float, steps: int) -> float:
    """sum_{i=0}^{steps-1} max(a1 + b1*i, a2 + b2*i)."""
    last = steps - 1
    if b1 == b2:
        return _series(max(a1, a2), b1, 0, last)
    # line 1 is above line 2 for i > cross when b1 > b2 (and below it when b1 < b2)
    cross = (a2 - a1) / (b1 - b2)
    split = min(max(math.floor(cross), -1), last)  # i <= split on one side, i > split on the other
    low, high = ((a2, b2), (a1, b1)) if b1 > b2 else ((a1, b1), (a2, b2))
    return _series(*low, 0, split) + _series(*high, split + 1, last)
