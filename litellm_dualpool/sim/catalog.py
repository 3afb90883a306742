"""Catalogue of GPUs and models: the public datasheet numbers the engine model is built from.

Sources: vendor datasheets (REFERENCE.md §4) and the models' published configurations. Memory
sizes are the totals the driver reports (nvidia-smi / rocm-smi), because that is what vLLM's
``gpu_memory_utilization`` multiplies. Prices: A100, H100 and MI300X are the anchors the paper
used; L40S and L4 are RunPod's on-demand rates of March 2026 (deploybase.ai, "RunPod GPU Pricing:
2026 Comprehensive Pricing Guide", which lists A100 SXM at $2.45 and H100 SXM at $4.76 beside
them, so the anchors are ~10-15% below that market); ``None`` where no anchor exists. Prices move
and differ by provider: override them (``GpuSpec.with_price``, ``plan --price``).

Interconnect: the per-direction bandwidth one GPU has for tensor-parallel all-reduces, from the
datasheets: NVLink 3 (A100 SXM) 600 GB/s and NVLink 4 (H100/H200 SXM) 900 GB/s bidirectional,
AMD Infinity Fabric (MI300X/MI325X) 7 links x 128 GB/s bidirectional, PCIe Gen4 x16 (L40S, L4,
no NVLink) 64 GB/s bidirectional.

vLLM's scheduler defaults (:func:`vllm_default_scheduler_flags`) are those its engine arguments
set for the OpenAI API server, by GPU memory and name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from litellm_dualpool.errors import ConfigError

GIB = 1024**3
MIB = 1024**2
#: PCIe Gen4 x16: 64 GB/s bidirectional, 32 GB/s each way (GPUs without NVLink or xGMI).
PCIE4_X16_BYTES_PER_SECOND = 32e9


class DType(StrEnum):
    """Weight / KV-cache number formats the model knows."""

    BF16 = "bfloat16"
    FP8 = "fp8"

    @property
    def bytes_per_value(self) -> int:
        return 2 if self is DType.BF16 else 1


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One accelerator. ``bf16_flops_per_second`` is the dense (no sparsity) tensor peak.

    fp8_compute: the GPU has FP8 tensor cores (2x the BF16 rate). Without them (A100) vLLM runs
    FP8 checkpoints weight-only (Marlin W8A16): memory halves, compute stays at the BF16 rate.
    """

    name: str
    vendor: str
    memory_bytes: int
    memory_bandwidth_bytes_per_second: float
    bf16_flops_per_second: float
    fp8_compute: bool
    usd_per_gpu_hour: float | None
    gpus_per_node: int = 8
    #: per-direction GPU-to-GPU bandwidth a ring all-reduce runs at (NVLink, xGMI or PCIe)
    interconnect_bytes_per_second: float = PCIE4_X16_BYTES_PER_SECOND

    def flops_per_second(self, dtype: DType) -> float:
        """Dense tensor peak for matmuls whose operands are ``dtype``."""
        if dtype is DType.FP8 and self.fp8_compute:
            return 2.0 * self.bf16_flops_per_second
        return self.bf16_flops_per_second

    def with_price(self, usd_per_gpu_hour: float) -> GpuSpec:
        return dataclasses.replace(self, usd_per_gpu_hour=usd_per_gpu_hour)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer, dense or mixture-of-experts.

    total_params: every weight (what must sit in memory).
    active_params: weights one token passes through (== total for dense; shared + top-k experts
        for MoE); FLOPs per token are 2 * active_params.
    expert_params: weights of all routed experts together (0 for dense). A decode batch of T
        tokens touches, per layer, E * (1 - (1 - k/E)^T) distinct experts in expectation; only
        those are read from memory.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    total_params: float
    active_params: float
    num_experts: int = 0
    experts_per_token: int = 0
    expert_params: float = 0.0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def kv_bytes_per_token(self, kv_dtype: DType) -> int:
        """K and V for every layer and KV head, one token, on the whole (unsharded) model."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype.bytes_per_value

    def attention_flops_per_context_token(self) -> float:
        """FLOPs one new token spends per token of context it attends to (QK^T and AV)."""
        return 4.0 * self.num_layers * self.num_attention_heads * self.head_dim


GPUS: dict[str, GpuSpec] = {
    spec.name: spec
    for spec in (
        GpuSpec("a100", "nvidia", 81920 * MIB, 2.039e12, 312e12, False, 2.21, 8, 300e9),
        GpuSpec("h100", "nvidia", 81559 * MIB, 3.35e12, 989e12, True, 4.02, 8, 450e9),
        GpuSpec("h200", "nvidia", 143771 * MIB, 4.8e12, 989e12, True, None, 8, 450e9),
        GpuSpec("mi300x", "amd", 192 * GIB, 5.3e12, 1307e12, True, 3.67, 8, 448e9),
        GpuSpec("mi325x", "amd", 256 * GIB, 6.0e12, 1307e12, True, None, 8, 448e9),
        # Ada Lovelace PCIe cards: 362 / 121 TFLOPS dense BF16 (733 / 242 FP8), GDDR6
        GpuSpec("l40s", "nvidia", 46068 * MIB, 864e9, 362e12, True, 1.40, 8, PCIE4_X16_BYTES_PER_SECOND),
        GpuSpec("l4", "nvidia", 23034 * MIB, 300e9, 121e12, True, 0.78, 8, PCIE4_X16_BYTES_PER_SECOND),
    )
}

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("llama-3-70b", 80, 8192, 64, 8, 128, 70.55e9, 70.55e9),
        ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 8.03e9, 8.03e9),
        # 128 experts of 3 * 4096 * 1536 weights in each of 94 layers = 227.1e9 expert weights;
        # attention, embeddings and routers make up the other ~8.0e9.
        ModelSpec("qwen3-235b-a22b", 94, 4096, 64, 4, 128, 235.1e9, 22.2e9,
                  num_experts=128, experts_per_token=8, expert_params=227.1e9),
    )
}

_ALIASES = {
    "l40s-48gb": "l40s", "l4-24gb": "l4",
    "a100-sxm": "a100", "a100-80gb": "a100", "h100-sxm": "h100", "mi300": "mi300x",
    "llama3-70b": "llama-3-70b", "meta-llama-3-70b": "llama-3-70b", "llama-3.1-70b": "llama-3-70b",
    "llama3.1-8b": "llama-3.1-8b", "llama-3-8b": "llama-3.1-8b", "qwen3-235b": "qwen3-235b-a22b",
}


def _lookup(table: dict, name: str, what: str):  # type: ignore[type-arg, no-untyped-def]  # one lookup for the GPU and the model tables (values of either type)
    key = name.strip().lower().split("/")[-1]
    key = _ALIASES.get(key, key)
    if key not in table:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}", path=what)
    return table[key]


def get_gpu(name: str) -> GpuSpec:
    """Case-insensitive lookup with a few aliases; ConfigError naming the choices otherwise."""
    spec: GpuSpec = _lookup(GPUS, name, "gpu")
    return spec


#: vLLM's high-memory threshold for its larger scheduler defaults.
_VLLM_LARGE_GPU_BYTES = 70 * GIB


def vllm_default_scheduler_flags(gpu: GpuSpec) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM picks for the OpenAI API server when neither
    flag is given: 1024 / 8192 on GPUs with >= 70 GiB whose name does not contain "a100" (H100,
    H200, MI300X), 256 / 2048 on all others, A100 included (vllm/engine/arg_utils.py,
    ``EngineArgs._set_default_args``; the A100 exception is vLLM PR #17885, where larger batches
    lowered A100 throughput)."""
    if gpu.memory_bytes >= _VLLM_LARGE_GPU_BYTES and "a100" not in gpu.name.lower():
        return 1024, 8192
    return 256, 2048


def get_model(name: str) -> ModelSpec:
    spec: ModelSpec = _lookup(MODELS, name, "model")
    return spec
