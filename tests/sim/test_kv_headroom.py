"""The KV check (sim.kv_headroom) against a hand case and against the engine model itself."""

from __future__ import annotations

import numpy as np
import pytest

from litellm_dualpool.sim.capacity import saturation_throughput
from litellm_dualpool.sim.engine import EngineConfig
from litellm_dualpool.sim.kv_headroom import kv_headroom


def tiny(blocks: int, max_model_len: int, max_num_seqs: int) -> EngineConfig:
    return EngineConfig("h100", "llama-3.1-8b", max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max(512, max_num_seqs), num_gpu_blocks_override=blocks)


def test_constant_lengths_by_hand() -> None:
    # one output token: a running request holds exactly its 100-token prompt = 7 blocks
    cfg = tiny(200, 256, 64)
    kv = kv_headroom(cfg, np.full(50, 100), np.full(50, 1))
    assert kv.kv_capacity_tokens == 3200 and kv.worst_case_max_num_seqs == 3200 // 256
    assert kv.safe_max_num_seqs == 200 // 7  # 28 requests of 7 blocks fit, 29 do not
    assert kv.p99_demand_tokens == 64 * 7 * 16 and kv.can_preempt
    assert kv.to_dict()["can_preempt"] is True
    assert not kv_headroom(cfg.replace(max_num_seqs=28), np.full(50, 100), np.full(50, 1)).can_preempt


def test_requests_beyond_max_model_len_are_left_out() -> None:
    kv = kv_headroom(tiny(200, 256, 8), np.array([100, 5000]), np.array([1, 10]))
    assert kv.safe_max_num_seqs == 200 // 7


@pytest.fixture(scope="module")
def lengths() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    prompt = np.minimum(rng.lognormal(5.5, 0.8, 400).astype(np.int64) + 1, 1500)
    output = np.minimum(rng.lognormal(4.5, 0.7, 400).astype(np.int64) + 1, 500)
    return prompt, output


def test_engine_preempts_above_the_safe_count_and_never_at_the_worst_case(lengths) -> None:  # type: ignore[no-untyped-def]
    prompt, output = lengths
    base = tiny(600, 2048, 8)  # 9,600 tokens of KV
    kv = kv_headroom(base, prompt, output)
    assert kv.worst_case_max_num_seqs == 4 and kv.safe_max_num_seqs > kv.worst_case_max_num_seqs

    def preemptions(seqs: int) -> float:
        return saturation_throughput(base.replace(max_num_seqs=seqs), prompt, output,
                                     requests=300).preemptions_per_1000

    assert preemptions(kv.worst_case_max_num_seqs) == 0.0  # guaranteed: every context <= max_model_len
    above = preemptions(3 * kv.safe_max_num_seqs)
    assert above > 0.0
    assert preemptions(kv.safe_max_num_seqs) < above
