"""Small parts of the glue: rejection parsing, in-flight counting, tenant policy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from litellm_dualpool.config import DualPoolSettings
from litellm_dualpool.proxy.inflight import InFlight
from litellm_dualpool.proxy.policy import TenantPolicy, TenantPolicyError, resolve_policy
from litellm_dualpool.proxy.rejections import parse_context_rejection


class BadRequestError(Exception):
    pass


class ContextWindowExceededError(BadRequestError):
    pass


@pytest.mark.parametrize(("text", "limit", "prompt"), [
    ("This model's maximum context length is 4096 tokens. However, your prompt contains at least "
     "4097 input tokens, which exceeds this limit even without any output tokens.", 4096, 4097),
    ("This model's maximum context length is 4096 tokens. However, you requested 512 output tokens "
     "and your prompt contains at least 3700 input tokens, for a total of at least 4212 tokens.",
     4096, 3700),
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
     "(4000 in the messages, 1000 in the completion).", 4096, 4000),
    ("'max_tokens' or 'max_completion_tokens' is too large: 5000. This model's maximum context "
     "length is 4096 tokens and your request has 30 input tokens (5000 > 4096 - 30).", 4096, 30),
])
@pytest.mark.parametrize("cls", [BadRequestError, ContextWindowExceededError])
def test_every_vllm_wording_is_recognised(text: str, limit: int, prompt: int, cls: type) -> None:
    rejection = parse_context_rejection(cls(f'Hosted_vllmException - {{"error":{{"message":"{text}"}}}}'))
    assert rejection is not None
    assert (rejection.limit_tokens, rejection.prompt_tokens) == (limit, prompt)
    # current vLLM truncates at max_model_len + 1: "at least N" is a bound, not a sample
    assert rejection.prompt_tokens_exact is ("at least" not in text.split("input tokens")[0])


def test_other_errors_are_not_rejections() -> None:
    assert parse_context_rejection(BadRequestError("invalid temperature")) is None
    assert parse_context_rejection(RuntimeError("maximum context length is 5 tokens")) is None
    assert parse_context_rejection(None) is None


def test_in_flight_counts_by_pool_and_deployment() -> None:
    inflight = InFlight()
    inflight.open("r1", "g", "short")
    inflight.assign("r1", "d1")
    inflight.open("r1", "g", "long", "d2")  # a recovery hop opened before the first closed
    assert (inflight.pool("g", "short"), inflight.pool("g", "long")) == (1, 1)
    assert inflight.close("r1", pool="long", deployment_id="d2") == "long"  # the pool closed
    assert (inflight.pool("g", "short"), inflight.deployment("d1"), inflight.deployment("d2")) == (
        1, 1, 0)
    assert inflight.close("r1", pool="long") == "short"  # none open there: the oldest
    assert inflight.close("r1") is None
    assert inflight.requests() == 0 and inflight.deployment("d1") == 0


def test_lost_attempts_are_swept() -> None:
    now = [0.0]
    inflight = InFlight(ttl_seconds=60, clock=lambda: now[0])
    inflight.open("lost", "g", "short")
    now[0] = 120.0
    inflight.open("fresh", "g", "short")  # opening sweeps what is older than the TTL
    assert inflight.pool("g", "short") == 1


def test_policy_defaults_then_team_then_key() -> None:
    settings = DualPoolSettings()
    assert resolve_policy(SimpleNamespace(), settings) == TenantPolicy()
    auth = SimpleNamespace(
        team_metadata={"dualpool_policy": {"allow_force_pool": True, "allowed_pools": ["short"]}},
        metadata={"dualpool_policy": {"allow_category": False, "default_output_tokens": 64}})
    policy = resolve_policy(auth, settings)
    assert policy == TenantPolicy(allow_force_pool=True, allow_category=False,
                                  allowed_pools=frozenset({"short"}), default_output_tokens=64)
    wrong = SimpleNamespace(metadata={"dualpool_policy": {"allow_force_pool": "yes"}})
    with pytest.raises(TenantPolicyError, match="allow_force_pool"):  # refused, never guessed
        resolve_policy(wrong, settings)


def test_vllm_load_is_read_from_its_metrics() -> None:
    from litellm_dualpool.proxy.vllm_load import metrics_url, parse_vllm_load

    text = ('vllm:num_requests_running{model_name="m"} 3.0\n'
            'vllm:num_requests_waiting{model_name="m"} 4.0\n'
            'vllm:num_requests_running_total 99\nvllm:kv_cache_usage_perc 0.5\n')
    assert parse_vllm_load(text) == 7
    assert parse_vllm_load("other 1\n") is None
    assert metrics_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/metrics"
