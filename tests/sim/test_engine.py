"""The engine model against hand-computed cases: KV capacity, admission, preemption, step time."""

from __future__ import annotations

import dataclasses
import random

import pytest

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.sim import roofline
from litellm_dualpool.sim.catalog import (
    MIB,
    DType,
    get_gpu,
    get_model,
    vllm_default_scheduler_flags,
)
from litellm_dualpool.sim.engine import AdmissionStatus, Engine, EngineConfig, RequestState


def tiny(blocks: int, **kw: object) -> EngineConfig:
    """Llama-3.1-8B on one H100 with a KV cache of ``blocks`` 16-token blocks."""
    base = dict(max_model_len=min(blocks * 16, 256), max_num_seqs=8, max_num_batched_tokens=256,
                num_gpu_blocks_override=blocks)
    base.update(kw)
    return EngineConfig("h100", "llama-3.1-8b", **base)  # type: ignore[arg-type]


def run_until_idle(engine: Engine, now: float = 0.0, max_steps: int = 1) -> tuple[float, dict]:
    finished = {}
    while engine.has_work:
        result = engine.advance(now, max_steps)
        now = result.end_time
        finished.update({f.request_id: f for f in result.finished})
    return now, finished


# -- KV capacity -------------------------------------------------------------------------------

def test_llama3_70b_kv_bytes_per_token_is_320_kib() -> None:
    assert get_model("llama-3-70b").kv_bytes_per_token(DType.BF16) == 320 * 1024
    assert get_model("Meta-Llama-3-70B").kv_bytes_per_token(DType.FP8) == 160 * 1024
    assert get_model("qwen3-235b-a22b").kv_bytes_per_token(DType.BF16) == 188 * 1024


def test_kv_capacity_llama3_70b_bf16_on_4_a100() -> None:
    cfg = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=65536,
                       max_num_seqs=16, max_num_batched_tokens=8192, gpu_memory_utilization=0.9)
    # by hand, per GPU: 0.9 * 81920 MiB - 70.55e9 * 2 B / 4 - (1 GiB + 8192 tokens * 8192 * 8 B)
    per_gpu = 0.9 * 81920 * MIB - 70.55e9 * 2 / 4 - (1024**3 + 8192 * 8192 * 8)
    # a GPU holds 8/4 = 2 of the 8 KV heads: 320 KiB / 4 = 80 KiB per token, 16 tokens a block
    blocks = int(per_gpu) // (80 * 1024 * 16)
    assert cfg.num_gpu_blocks == blocks
    assert cfg.kv_capacity_tokens == blocks * 16
    assert 480_000 < cfg.kv_capacity_tokens < 500_000  # ~37.6 GiB per GPU of cache


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    # Qwen3-235B has 4 KV heads; at TP 8 each GPU still holds one whole head.
    cfg = EngineConfig("mi300x", "qwen3-235b-a22b", tensor_parallel_size=8, dtype="fp8",
                       max_model_len=32768, max_num_batched_tokens=8192)
    per_token_per_gpu = 2 * 94 * 1 * 128 * 1
    per_gpu = 0.9 * 192 * 1024**3 - 235.1e9 / 8 - (1024**3 + 8192 * 4096 * 8)
    assert cfg.num_gpu_blocks == int(per_gpu) // (per_token_per_gpu * 16)


def test_config_refuses_what_vllm_refuses() -> None:
    with pytest.raises(ConfigError, match="does not fit") as info:
        EngineConfig("a100", "llama-3-70b", tensor_parallel_size=1)
    assert info.value.path == "tensor_parallel_size"
    with pytest.raises(ConfigError, match="larger than the KV cache") as info:
        EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=1_000_000)
    assert info.value.path == "max_model_len"
    with pytest.raises(ConfigError) as info:
        EngineConfig("h100", "llama-3.1-8b", max_num_seqs=512, max_num_batched_tokens=256)
    assert info.value.path == "max_num_batched_tokens"
    with pytest.raises(ConfigError, match="unknown gpu"):
        EngineConfig("tpu-v5", "llama-3.1-8b")


# -- admission ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("prompt", "max_tokens", "status", "effective"),
    [
        (8192, None, AdmissionStatus.ACCEPTED, 1),       # fills the window: one token
        (8193, None, AdmissionStatus.PROMPT_TOO_LONG, 0),
        (100, 9000, AdmissionStatus.MAX_TOKENS_TOO_LARGE, 9000),
        (8000, 1000, AdmissionStatus.ACCEPTED, 192),      # lowered silently, as current vLLM
        (100, 50, AdmissionStatus.ACCEPTED, 50),
        (100, None, AdmissionStatus.ACCEPTED, 8092),
    ],
)
def test_admission(prompt: int, max_tokens: int | None, status: AdmissionStatus, effective: int) -> None:
    engine = Engine(EngineConfig("h100", "llama-3.1-8b", max_model_len=8192))
    admission = engine.submit("r", prompt, max_tokens, 0.0)
    assert admission.status is status
    assert admission.accepted == (status is AdmissionStatus.ACCEPTED)
    assert admission.max_tokens == effective
    assert engine.num_waiting == (1 if admission.accepted else 0)
    assert engine.num_refused_total == (0 if admission.accepted else 1)


def test_output_stops_at_eos_or_lowered_max_tokens() -> None:
    engine = Engine(tiny(64, max_model_len=256))
    engine.submit("eos", 10, 100, 0.0, output_tokens=7)
    engine.submit("cut", 200, 100, 0.0, output_tokens=90)  # only 56 tokens of room
    _, finished = run_until_idle(engine)
    assert finished["eos"].output_tokens == 7
    assert finished["cut"].output_tokens == 56


# -- scheduling and preemption -----------------------------------------------------------------

def test_prefill_then_one_token_per_step() -> None:
    engine = Engine(tiny(64))
    engine.submit("a", 40, 5, 0.0)
    first = engine.step(0.0)
    assert first.first_tokens == ("a",) and first.num_prefill_tokens == 40
    assert engine.generated_tokens("a") == 1
    assert engine.request_state("a") is RequestState.DECODE
    for expected in (2, 3, 4):
        engine.step(0.0)
        assert engine.generated_tokens("a") == expected
    last = engine.step(0.0)
    assert [f.request_id for f in last.finished] == ["a"]
    assert engine.request_state("a") is None and engine.num_used_blocks == 0


def test_chunked_prefill_respects_token_budget_and_max_num_seqs() -> None:
    engine = Engine(tiny(200, max_model_len=256, max_num_batched_tokens=100, max_num_seqs=2))
    engine.submit("a", 150, 3, 0.0)
    engine.submit("b", 30, 3, 0.0)
    engine.submit("c", 10, 3, 0.0)
    s1 = engine.step(0.0)
    assert s1.num_prefill_tokens == 100 and s1.first_tokens == ()  # a's first chunk only
    assert engine.num_running == 1 and engine.num_waiting == 2
    s2 = engine.step(s1.end_time)
    assert s2.num_prefill_tokens == 80  # a's last 50, then b's 30; c waits: max_num_seqs=2
    assert s2.first_tokens == ("a", "b")
    assert engine.num_running == 2 and engine.num_waiting == 1


def test_long_prefill_token_threshold_lets_a_short_prompt_share_the_step() -> None:
    # vLLM V1: num_new_tokens of a prefill is capped at the threshold before the step's budget
    capped = Engine(tiny(200, max_model_len=256, max_num_batched_tokens=100, long_prefill_token_threshold=60))
    plain = Engine(tiny(200, max_model_len=256, max_num_batched_tokens=100))
    for engine in (capped, plain):
        engine.submit("long", 150, 3, 0.0)
        engine.submit("short", 30, 3, 0.0)
    c1, p1 = capped.step(0.0), plain.step(0.0)
    assert c1.num_prefill_tokens == 90 and c1.first_tokens == ("short",)  # 60 of long + all of short
    assert p1.num_prefill_tokens == 100 and p1.first_tokens == ()  # long takes the whole budget
    c2 = capped.step(c1.end_time)
    assert c2.num_prefill_tokens == 60 and c2.num_decode_tokens == 1  # beside short's decode
    c3 = capped.step(c2.end_time)
    assert c3.first_tokens == ("long",)  # 150 = 60 + 60 + 30


def test_long_prefill_token_threshold_is_checked() -> None:
    with pytest.raises(ConfigError, match="long_prefill_token_threshold"):
        tiny(64, long_prefill_token_threshold=-1)


def test_preemption_takes_the_last_admitted_request_and_recomputes_it() -> None:
    engine = Engine(tiny(6, max_model_len=96))
    engine.submit("A", 32, 10, 0.0)  # 2 full blocks: its first decode needs a third
    engine.submit("B", 20, 10, 0.0)  # A ends at 41 tokens (3 blocks), B at 29 (2 blocks)
    engine.submit("C", 20, 10, 0.0)
    s1 = engine.step(0.0)
    assert s1.first_tokens == ("A", "B", "C") and engine.num_used_blocks == 6
    s2 = engine.step(s1.end_time)
    # A needs a block, none is free: vLLM V1 pops the last-admitted running request (C).
    assert s2.preempted == ("C",)
    assert engine.num_preemptions_total == 1
    assert engine.request_state("C") is RequestState.WAITING and engine.num_waiting == 1
    assert engine.generated_tokens("C") == 1  # kept; will be recomputed with the prompt
    assert engine.num_used_blocks == 5  # A 3 + B 2
    _, finished = run_until_idle(engine, s2.end_time)
    assert {k: f.num_preemptions for k, f in finished.items()} == {"A": 0, "B": 0, "C": 1}
    assert all(f.output_tokens == 10 for f in finished.values())
    assert finished["C"].finish_time > max(finished["A"].finish_time, finished["B"].finish_time)
    assert engine.num_used_blocks == 0


def test_requester_preempting_itself_stops_the_step() -> None:
    engine = Engine(tiny(4, max_model_len=64))
    engine.submit("A", 20, 30, 0.0)
    engine.submit("B", 32, 30, 0.0)  # B is last and is the one needing a block
    s1 = engine.step(0.0)
    assert engine.num_used_blocks == 4
    s2 = engine.step(s1.end_time)
    assert s2.preempted == ("B",) and s2.num_prefill_tokens == 0  # no admission after a preemption
    assert engine.num_running == 1


@pytest.mark.parametrize("reserve_full_isl", [True, False])
def test_admission_checks_the_whole_prompt_as_vllm_scheduler_reserve_full_isl(reserve_full_isl: bool) -> None:
    """vLLM's default (scheduler_reserve_full_isl): a waiting prompt is admitted only when the free
    blocks hold all of it, not just its first chunk. Without the check, B's first chunk fits, its
    later chunks do not, and B is preempted and re-admitted over and over (vLLM PR 37307)."""
    engine = Engine(tiny(10, max_model_len=160, max_num_batched_tokens=64, max_num_seqs=4,
                         scheduler_reserve_full_isl=reserve_full_isl))
    engine.submit("A", 64, 40, 0.0)
    s1 = engine.step(0.0)
    engine.submit("B", 100, 5, s1.end_time)  # 7 blocks; 5 free once A's first decode has its block
    s2 = engine.step(s1.end_time)
    _, finished = run_until_idle(engine, s2.end_time)
    assert finished.keys() == {"A", "B"} and engine.num_used_blocks == 0
    if reserve_full_isl:
        assert s2.num_prefill_tokens == 0 and engine.num_preemptions_total == 0
        assert finished["B"].first_token_time > finished["A"].finish_time - 1e-12  # waited for A's blocks
    else:
        assert s2.num_prefill_tokens == 63  # B's first chunk (the budget minus A's decode)
        assert engine.num_preemptions_total == finished["B"].num_preemptions > 1


def test_abort_frees_blocks() -> None:
    engine = Engine(tiny(64))
    engine.submit("a", 40, 50, 0.0)
    engine.submit("b", 40, 50, 0.0)
    engine.step(0.0)
    assert engine.abort("a") and not engine.abort("a")
    assert engine.num_running == 1 and engine.num_used_blocks == 3
    assert engine.abort("b") and engine.num_used_blocks == 0 and not engine.has_work


@pytest.mark.parametrize("reserve_full_isl", [True, False])
def test_decode_runs_equal_single_steps(reserve_full_isl: bool) -> None:
    """The fleet's fast path (k identical decode steps at once) changes nothing but speed."""
    cfg = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=8192,
                       max_num_seqs=32, max_num_batched_tokens=8192, num_gpu_blocks_override=900,
                       scheduler_reserve_full_isl=reserve_full_isl)
    rng = random.Random(7)
    jobs = [(i, rng.randint(1, 3000), rng.randint(1, 600), rng.uniform(0, 30)) for i in range(120)]

    def run(max_steps: int) -> tuple[dict, int]:
        engine = Engine(cfg)
        pending = sorted(jobs, key=lambda j: j[3])
        now, out = 0.0, {}
        while pending or engine.has_work:
            while pending and pending[0][3] <= now:
                rid, prompt, output, at = pending.pop(0)
                engine.submit(rid, prompt, output, at)
            if not engine.has_work:
                now = pending[0][3]
                continue
            steps = max_steps
            if pending and max_steps > 1:  # stop the run at the next arrival, as the fleet does
                steps = max(1, engine.decode_steps_started_within(pending[0][3] - now,
                                                                  engine.decode_run_length()))
            result = engine.advance(now, steps)
            now = result.end_time
            out.update({f.request_id: f for f in result.finished})
        return out, engine.num_preemptions_total

    single, single_preemptions = run(1)
    fast, fast_preemptions = run(10**9)
    assert single_preemptions == fast_preemptions > 0
    assert single.keys() == fast.keys() and len(single) == 120
    for rid, f in single.items():
        assert fast[rid].finish_time == pytest.approx(f.finish_time, rel=1e-9, abs=1e-9)
        assert fast[rid].first_token_time == pytest.approx(f.first_token_time, rel=1e-9, abs=1e-9)
        assert fast[rid].num_preemptions == f.num_preemptions


# -- step time ---------------------------------------------------------------------------------

def test_step_time_memory_bound_single_decode() -> None:
    cfg = EngineConfig("h100", "llama-3.1-8b", max_model_len=8192)
    t = cfg.step_time.step_seconds(1, 1000, [])
    weights = 8.03e9 * 2
    kv = 1000 * 2 * 32 * 8 * 128 * 2
    expected = (weights + kv) / (3.35e12 * roofline.MEMORY_EFFICIENCY) + roofline.BASE_STEP_OVERHEAD_SECONDS
    assert t == pytest.approx(expected, rel=1e-12)
    assert 0.006 < t < 0.010  # ~8 ms on an H100


def test_step_time_compute_bound_prefill() -> None:
    cfg = EngineConfig("h100", "llama-3.1-8b", max_model_len=8192)
    t = cfg.step_time.step_seconds(0, 0, [(0, 8192)])
    flops = 2 * 8.03e9 * 8192 + 4 * 32 * 32 * 128 * (8192 * 8193 // 2)
    memory = (8.03e9 * 2 + 8192 * 131072) / (3.35e12 * roofline.MEMORY_EFFICIENCY)
    compute = flops / (989e12 * roofline.COMPUTE_EFFICIENCY)
    assert compute > 10 * memory
    assert t == pytest.approx(compute + roofline.BASE_STEP_OVERHEAD_SECONDS, rel=1e-12)


def test_tensor_parallel_splits_work_and_adds_allreduce_latency() -> None:
    tp1 = EngineConfig("h100", "llama-3.1-8b", tensor_parallel_size=1)
    tp2 = EngineConfig("h100", "llama-3.1-8b", tensor_parallel_size=2)
    busy1 = tp1.step_time.step_seconds(1, 0, []) - tp1.step_time.overhead_seconds
    busy2 = (tp2.step_time.step_seconds(1, 0, []) - tp2.step_time.overhead_seconds
             - tp2.step_time.allreduce_seconds_per_token)
    assert busy2 == pytest.approx(busy1 / 2)
    assert tp2.step_time.overhead_seconds == pytest.approx(0.002 + 2 * 32 * 10e-6)
    assert tp1.step_time.allreduce_seconds_per_token == 0.0


@pytest.mark.parametrize(("gpu", "tp", "link_bytes_per_second"), [
    ("h100", 2, 450e9), ("h100", 8, 450e9), ("l40s", 4, 32e9), ("a100", 4, 300e9)])
def test_tensor_parallel_allreduce_moves_a_ring_share_of_the_activations(
        gpu: str, tp: int, link_bytes_per_second: float) -> None:
    """Llama-3.1-8B: 32 layers x 2 all-reduces of 4096 BF16 values per token; a ring moves
    2 (TP - 1) / TP of each over the link at ALLREDUCE_EFFICIENCY. By hand for H100 TP 2:
    64 * 1 * 8192 B / (450e9 * 0.7) = 1.66 us per token."""
    cfg = EngineConfig(gpu, "llama-3.1-8b", tensor_parallel_size=tp)
    per_token = 64 * (2 * (tp - 1) / tp) * 4096 * 2 / (link_bytes_per_second * roofline.ALLREDUCE_EFFICIENCY)
    st = cfg.step_time
    assert st.allreduce_seconds_per_token == pytest.approx(per_token)
    # a step of 512 prefill tokens pays it 512 times on top of the roofline and the overhead
    without = dataclasses.replace(st, allreduce_seconds_per_token=0.0)
    assert st.step_seconds(0, 0, [(0, 512)]) - without.step_seconds(0, 0, [(0, 512)]) == pytest.approx(512 * per_token)
    # and a run of decode steps pays it per decode, step after step
    assert st.decode_run_seconds(8, 1000, 5) - without.decode_run_seconds(8, 1000, 5) == pytest.approx(
        5 * 8 * per_token)


def test_pcie_all_reduce_makes_a_wide_l40s_instance_slower_per_gpu_than_nvlink() -> None:
    """The same 70B prefill chunk on 4 PCIe L40S spends almost half a step in all-reduces; on 4
    NVLink A100 a small share: a smaller TP is not free, nor penalised by fiat."""
    shares = {}
    for gpu in ("l40s", "a100"):
        st = EngineConfig(gpu, "llama-3-70b", tensor_parallel_size=4, max_model_len=8192).step_time
        step = st.step_seconds(0, 0, [(0, 1024)])
        shares[gpu] = 1024 * st.allreduce_seconds_per_token / step
    assert shares["a100"] < 0.15 < 0.4 < shares["l40s"]


def test_moe_reads_only_touched_experts_and_computes_active_params() -> None:
    cfg = EngineConfig("h100", "qwen3-235b-a22b", tensor_parallel_size=8, dtype="fp8",
                       max_model_len=8192)
    st = cfg.step_time
    m = cfg.model
    dense_part = m.total_params - m.expert_params
    # one token touches 8 of 128 experts per layer
    assert st.weight_bytes(1) == pytest.approx((dense_part + m.expert_params * 8 / 128) / 8)
    # a big batch touches nearly all of them, never more than the whole model
    assert st.weight_bytes(4096) == pytest.approx(m.total_params / 8, rel=1e-6)
    assert st.weight_bytes(4096) <= m.total_params / 8
    # FLOPs follow active parameters: 22.2e9, not 235e9
    assert st.linear_flops_per_token == pytest.approx(2 * 22.2e9 / 8)
    # so one decode of a 235B MoE is far cheaper than a dense model of the same size would be
    assert st.step_seconds(1, 0, []) < 0.5 * (m.total_params / 8) / st.bandwidth_bytes_per_second


def test_fp8_halves_weight_bytes_and_doubles_compute_only_with_fp8_tensor_cores() -> None:
    bf16 = EngineConfig("h100", "llama-3.1-8b")
    fp8 = EngineConfig("h100", "llama-3.1-8b", dtype="fp8")
    assert fp8.step_time.weight_bytes(1) == pytest.approx(bf16.step_time.weight_bytes(1) / 2)
    assert fp8.step_time.flops_per_second == pytest.approx(2 * bf16.step_time.flops_per_second)
    a100_bf16 = EngineConfig("a100", "llama-3.1-8b")
    a100_fp8 = EngineConfig("a100", "llama-3.1-8b", dtype="fp8")
    assert a100_fp8.step_time.flops_per_second == a100_bf16.step_time.flops_per_second
    assert fp8.kv_capacity_tokens > bf16.kv_capacity_tokens  # weights take half the memory
    assert get_gpu("a100").flops_per_second(DType.FP8) == 312e12


def test_decode_run_seconds_matches_sum_of_single_steps() -> None:
    cfg = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=8192, max_num_seqs=128,
                       max_num_batched_tokens=16384)
    st = cfg.step_time
    n, ctx = 128, 128 * 1500  # crosses from memory- to compute-bound or back within the run
    total = sum(st.step_seconds(n, ctx + n * j, []) for j in range(300))
    assert st.decode_run_seconds(n, ctx, 300) == pytest.approx(total, rel=1e-12)


def test_saturation_throughput_short_beats_long_on_short_requests() -> None:
    import numpy as np

    from litellm_dualpool.sim.capacity import saturation_throughput

    prompts = np.full(200, 300)
    outputs = np.full(200, 100)
    short = EngineConfig("h100", "llama-3.1-8b", max_model_len=4096, max_num_seqs=128,
                         max_num_batched_tokens=8192)
    long = short.replace(max_model_len=32768, max_num_seqs=8)
    fast = saturation_throughput(short, prompts, outputs, requests=600)
    slow = saturation_throughput(long, prompts, outputs, requests=600)
    assert fast.requests_per_second > 3 * slow.requests_per_second
    assert slow.mean_running <= 8.0 and fast.mean_running > 50
    assert fast.output_tokens_per_second == pytest.approx(100 * fast.requests_per_second)
    with pytest.raises(ValueError, match="no request"):
        saturation_throughput(short, np.array([5000]), np.array([10]))


@pytest.mark.parametrize(("gpu", "expected"), [
    ("a100", (256, 2048)), ("h100", (1024, 8192)), ("h200", (1024, 8192)), ("mi300x", (1024, 8192)),
    ("l40s", (256, 2048)), ("l4", (256, 2048))])
def test_vllm_default_scheduler_flags_follow_its_engine_arguments(gpu: str, expected: tuple[int, int]) -> None:
    """>= 70 GiB and not an A100: 1024 / 8192; otherwise 256 / 2048 (vLLM's API-server defaults)."""
    assert vllm_default_scheduler_flags(get_gpu(gpu)) == expected
