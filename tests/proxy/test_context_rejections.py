"""Context-length rejections: only a backend's own, anchored rejection counts, teaches and is
recovered; a 400 that quotes the client's text (a validation error) is none of these.

Bodies come from the emulator's vLLM rules (matched against vLLM 0.32.0), the engines' own
wordings (vLLM legacy, OpenAI, SGLang, TGI) and vLLM's request-validation handler; the errors
are LiteLLM's real exception classes, formatted as LiteLLM formats them."""

from __future__ import annotations

import json
from typing import Any

import litellm
import pytest
from litellm.types.utils import CallTypes
from plugin_env import LONG_LEN, SHORT_LEN, model_list
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import load_plugin_config
from litellm_dualpool.emulator.validation import (
    ApiError,
    ErrorFormat,
    check_prompt_chars,
    output_budget,
)
from litellm_dualpool.errors import InvalidRequestError, RecoveryRefusedError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.callback import check_user_parts, last_failure_text
from litellm_dualpool.proxy.engine import DualPoolEngine
from litellm_dualpool.proxy.recovery import map_context_rejections
from litellm_dualpool.proxy.rejections import parse_context_rejection
from litellm_dualpool.tenancy import TenantPolicy
from tests.prometheus_text import registry_value
from tests.shared_prompts import mt_bench_prose

pytestmark = [pytest.mark.litellm_compat]

SENTENCE = ("This model's maximum context length is 2048 tokens. However, you requested 5000 "
            "tokens (230 in the messages, 4770 in the completion). Please reduce the length of "
            "the messages or completion.")


def emulated(fmt: ErrorFormat, limit: int, prompt: int, requested: int | None) -> dict[str, Any]:
    """The body the emulator (vLLM 0.32's rules) answers for this prompt."""
    with pytest.raises(ApiError) as raised:
        output_budget(limit, prompt, requested, fmt)
    return raised.value.body(fmt)


def chars_body() -> dict[str, Any]:
    """vLLM's pre-tokenization refusal: characters over the window's bound, no token count."""
    with pytest.raises(ApiError) as raised:
        check_prompt_chars(4096, 4, 20_000, ErrorFormat.CURRENT)
    return raised.value.body(ErrorFormat.CURRENT)


def validation_body(value: str, *, vllm_032: bool = True) -> dict[str, Any]:
    """vLLM's answer to a non-number `temperature`: pydantic's errors, each quoting the input
    (vLLM 0.32 formats each error as a dict; older releases printed the list)."""
    error = {"type": "float_parsing", "loc": ("body", "temperature"),
             "msg": "Input should be a valid number, unable to parse string as a number",
             "input": value}
    message = f"1 validation error:\n  {error}" if vllm_032 else str([error])
    return {"error": {"message": message, "type": "Bad Request", "param": "temperature",
                      "code": 400}}


def litellm_error(body: dict[str, Any] | str, *, mapped: bool = True) -> Exception:
    """The exception LiteLLM raises for a hosted_vllm 400 with this body."""
    text = body if isinstance(body, str) else json.dumps(body)
    if mapped:
        return litellm.ContextWindowExceededError(
            message=f"ContextWindowExceededError: Hosted_vllmException - {text}", model="m",
            llm_provider="hosted_vllm")
    return litellm.BadRequestError(message=f"Hosted_vllmException - {text}", model="m",
                                   llm_provider="hosted_vllm")


SGLANG_CURRENT = {"object": "error", "message": (
    "Requested token count exceeds the model's maximum context length of 4096 tokens. You "
    "requested a total of 5000 tokens: 4000 tokens from the input messages and 1000 tokens for "
    "the completion. Please reduce the number of tokens in the input messages or the completion "
    "to fit within the limit."), "type": "BadRequest", "param": None, "code": 400}

# (id, error, (limit, prompt, prompt exact, engine))
RECORDED: list[tuple[str, Any, tuple[int | None, int | None, bool, str]]] = [
    ("vllm current", litellm_error(emulated(ErrorFormat.CURRENT, 4096, 5000, 64)),
     (4096, 4097, False, "vllm")),
    ("vllm current token ids", "This model's maximum context length is 4096 tokens. However, "
     "your prompt contains 5000 input tokens, which exceeds this limit even without any output "
     "tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=5000)",
     (4096, 5000, True, "vllm")),
    ("vllm current chars", litellm_error(chars_body()), (4096, None, True, "vllm")),
    ("vllm legacy", litellm_error(emulated(ErrorFormat.LEGACY, 4096, 4000, 1000)),
     (4096, 4000, True, "vllm")),
    ("vllm legacy without max_tokens", litellm_error(emulated(ErrorFormat.LEGACY, 4096, 4100,
                                                              None)),
     (4096, 4100, True, "vllm")),
    ("vllm 0.6 max_tokens", litellm_error({"error": {"message": (
        "'max_tokens' or 'max_completion_tokens' is too large: 5000. This model's maximum "
        "context length is 4096 tokens and your request has 30 input tokens (5000 > 4096 - 30)."),
        "type": "BadRequestError", "param": "max_tokens", "code": 400}}),
     (4096, 30, True, "vllm")),
    ("openai wording", litellm_error({"error": {"message": (
        "This model's maximum context length is 8192 tokens. However, your messages resulted in "
        "9000 tokens. Please reduce the length of the messages."), "type":
        "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
     (8192, 9000, True, "vllm")),
    ("openai code", litellm_error({"error": {"message": "Your input exceeds the context window "
                                             "of this model.", "type": "invalid_request_error",
                                             "param": "input",
                                             "code": "context_length_exceeded"}}),
     (None, None, True, "openai")),
    ("sglang current (unmapped)", litellm_error(SGLANG_CURRENT, mapped=False),
     (4096, 4000, True, "sglang")),
    ("sglang older", litellm_error({"object": "error", "message": "The input (5000 tokens) is "
                                    "longer than the model's context length (4096 tokens).",
                                    "type": "BadRequest", "param": None, "code": 400}),
     (4096, 5000, True, "sglang")),
    ("sglang input length", litellm_error({"object": "error", "message": (
        "Input length (5000 tokens) exceeds the maximum allowed length (4096 tokens). Use a "
        "shorter input or enable --allow-auto-truncate."), "type": "BadRequest", "param": None,
        "code": 400}, mapped=False), (4096, 5000, True, "sglang")),
    ("tgi", litellm_error({"error": "Input validation error: `inputs` tokens + `max_new_tokens` "
                           "must be <= 4096. Given: 4000 `inputs` tokens and 1000 "
                           "`max_new_tokens`", "error_type": "validation"}),
     (4096, 4000, True, "tgi")),
    ("tgi inputs only", litellm_error({"error": "Input validation error: `inputs` must have less "
                                       "than 4096 tokens. Given: 5000",
                                       "error_type": "validation"}, mapped=False),
     (4096, 5000, True, "tgi")),
    ("openai provider form", litellm.ContextWindowExceededError(
        message=f"ContextWindowExceededError: OpenAIException - {SENTENCE}", model="m",
        llm_provider="openai"), (2048, 230, True, "vllm")),
    ("hyphenated provider (breadcrumb text)", "litellm.ContextWindowExceededError: "
     "litellm.BadRequestError: ContextWindowExceededError: Text-completion-openaiException - "
     + json.dumps(emulated(ErrorFormat.LEGACY, 4096, 4000, 1000)), (4096, 4000, True, "vllm")),
    ("openai sdk form", "Error code: 400 - " + repr(emulated(ErrorFormat.LEGACY, 4096, 4000, 1000)),
     (4096, 4000, True, "vllm")),
    ("bare message (tests/realvllm)", emulated(ErrorFormat.CURRENT, 512, 900, 8)["error"]["message"],
     (512, 513, False, "vllm")),
]


@pytest.mark.parametrize(("error", "expected"), [(e, x) for _, e, x in RECORDED],
                         ids=[name for name, _, _ in RECORDED])
def test_recorded_rejections_are_recognised(error: Any, expected: tuple[Any, ...]) -> None:
    rejection = parse_context_rejection(error)
    assert rejection is not None
    assert (rejection.limit_tokens, rejection.prompt_tokens, rejection.prompt_tokens_exact,
            rejection.engine) == expected
    # the same text, as LiteLLM's retry breadcrumb records it, reads the same
    assert parse_context_rejection(error if isinstance(error, str) else str(error)) == rejection


FAKES: list[tuple[str, Any]] = [
    ("vllm 0.32 validation error quoting it", litellm_error(validation_body(SENTENCE))),
    ("older vllm validation error quoting it",
     litellm_error(validation_body(SENTENCE, vllm_032=False))),
    ("quoted after a validation message", litellm_error(
        {"error": {"message": f"Invalid value for temperature: {SENTENCE}", "type": "Bad Request",
                   "param": "temperature", "code": 400}})),
    ("in another string field", litellm_error({"error": {"message": "temperature must be a "
                                                         "number", "type": SENTENCE,
                                                         "param": SENTENCE, "code": 400}})),
    ("a quoted envelope", litellm_error(validation_body(json.dumps({"error": {
        "message": SENTENCE, "code": "context_length_exceeded"}})))),
    ("a quoted LiteLLM prefix", litellm_error(validation_body(
        f"Hosted_vllmException - {SENTENCE}"))),
    ("openai provider form of the validation error", litellm.ContextWindowExceededError(
        message="ContextWindowExceededError: OpenAIException - 1 validation error:\n  "
                f"{{'type': 'float_parsing', 'input': \"{SENTENCE}\"}}", model="m",
        llm_provider="openai")),
    ("an unknown envelope", litellm_error({"detail": SENTENCE})),
    ("not an error body", litellm_error("not json " + SENTENCE)),
    ("oversized", litellm_error({"error": {"message": SENTENCE + " " + "x" * 70_000}})),
]


@pytest.mark.parametrize("error", [e for _, e in FAKES], ids=[name for name, _ in FAKES])
def test_fakes_are_not_rejections(error: Any) -> None:
    assert parse_context_rejection(error) is None
    assert parse_context_rejection(str(error)) is None


def test_only_a_400_is_a_rejection() -> None:
    """The class is checked where there is one (a breadcrumb's text reaches the recovery hop
    only through context_window_fallbacks, which LiteLLM takes for a ContextWindowExceededError
    alone)."""
    error = litellm.InternalServerError(message=f"Hosted_vllmException - {SENTENCE}", model="m",
                                        llm_provider="hosted_vllm")
    assert parse_context_rejection(error) is None
    assert parse_context_rejection(RuntimeError(SENTENCE)) is None


def test_litellm_is_taught_the_wordings_it_does_not_map() -> None:
    from litellm.litellm_core_utils.exception_mapping_utils import ExceptionCheckers

    assert map_context_rejections() and map_context_rejections()  # idempotent
    check = ExceptionCheckers.is_error_str_context_window_exceeded
    assert check(json.dumps(SGLANG_CURRENT))
    assert check(json.dumps({"object": "error", "message": "Input length (5000 tokens) exceeds "
                             "the maximum allowed length (4096 tokens).", "code": 400}))
    assert not check(json.dumps({"error": {"message": "temperature must be a number"}}))


# -- the engine: what a rejection counts, teaches and recovers --------------------------------


@pytest.fixture
def engine() -> DualPoolEngine:
    config = load_plugin_config({"model_list": model_list(), "dualpool_settings": {
        "tenancy": {"default_observation_trust": "trusted"}}})
    return DualPoolEngine(config, metrics=DualPoolMetrics(CollectorRegistry()))


def plan(engine: DualPoolEngine, content: str, max_tokens: int = 64) -> dict[str, Any]:
    group = engine.groups["llama"]
    stash = engine.plan({"messages": [{"role": "user", "content": content}],
                         "max_tokens": max_tokens}, group, TenantPolicy())
    assert stash.progress.pool == "short"
    return stash


def sample(engine: DualPoolEngine, name: str, **labels: str) -> float:
    return registry_value(engine.metrics.registry, name, model_group="llama", **labels)


SHORT = {"max_model_len": SHORT_LEN}
#: ~4.4 KB of prose: estimated short (~1,000 tokens), able to overflow 4096 by its bytes.
BIG = mt_bench_prose(4_400)


def test_a_genuine_rejection_counts_and_teaches(engine: DualPoolEngine) -> None:
    stash = plan(engine, BIG)
    # (a backend whose window is smaller than declared: the numbers are its own)
    engine.on_failure(stash, SHORT, litellm_error(emulated(ErrorFormat.LEGACY, 1_000, 1_100, 64)))
    assert sample(engine, "dualpool_misroutes_total", pool="short") == 1
    assert sample(engine, "dualpool_learning_samples_total", outcome="learned") == 1


def test_a_fake_counts_and_teaches_nothing(engine: DualPoolEngine) -> None:
    stash = plan(engine, BIG)
    engine.on_failure(stash, SHORT, litellm_error(validation_body(SENTENCE)))
    assert sample(engine, "dualpool_misroutes_total", pool="short") == 0
    assert sample(engine, "dualpool_learning_samples_total", outcome="learned") == 0
    assert not stash.progress.learned


@pytest.mark.parametrize(("limit", "prompt_tokens"), [(SHORT_LEN, 9_000), (300, 400)],
                         ids=["above bytes", "far below bytes"])
def test_a_count_the_request_cannot_produce_teaches_nothing(engine: DualPoolEngine, limit: int,
                                                            prompt_tokens: int) -> None:
    stash = plan(engine, BIG)
    engine.on_failure(stash, SHORT, litellm_error(emulated(ErrorFormat.LEGACY, limit,
                                                           prompt_tokens, 64)))
    assert sample(engine, "dualpool_misroutes_total", pool="short") == 1  # still a rejection
    assert sample(engine, "dualpool_learning_samples_total", outcome="learned") == 0
    assert sample(engine, "dualpool_learning_samples_total", outcome="rejected") == 1


def test_a_rejection_of_a_request_too_small_to_overflow_is_ignored(engine: DualPoolEngine) -> None:
    stash = plan(engine, "Say hi.", max_tokens=16)
    engine.on_failure(stash, SHORT, litellm_error(emulated(ErrorFormat.LEGACY, SHORT_LEN, 5_000,
                                                           16)))
    assert sample(engine, "dualpool_misroutes_total", pool="short") == 0
    assert sample(engine, "dualpool_learning_samples_total", outcome="learned") == 0


def test_the_recovery_hop_needs_a_genuine_rejection(engine: DualPoolEngine) -> None:
    group = engine.groups["llama"]
    genuine = str(litellm_error(emulated(ErrorFormat.CURRENT, SHORT_LEN, 5_000, 64)))
    fake = str(litellm_error(validation_body(SENTENCE)))
    engine.check_recoverable(group, plan(engine, BIG), genuine)
    engine.check_recoverable(group, plan(engine, BIG), None)  # no breadcrumb: the size decides
    with pytest.raises(RecoveryRefusedError, match="not the backend's own") as refused:
        engine.check_recoverable(group, plan(engine, BIG), fake)
    with pytest.raises(RecoveryRefusedError, match="cannot exceed that pool's 4096"):
        engine.check_recoverable(group, plan(engine, "Say hi.", 16), genuine)
    message = str(refused.value)
    assert "'llama'" in message and "recovery" not in message  # the hidden group stays hidden


def test_a_refused_recovery_places_nothing(engine: DualPoolEngine) -> None:
    stash = plan(engine, BIG)
    long = {"model_name": "llama::dualpool-recovery",
            "model_info": {"id": "l", "max_model_len": LONG_LEN}}
    with pytest.raises(RecoveryRefusedError):
        engine.choose("llama::dualpool-recovery", [long], stash,
                      last_failure=str(litellm_error(validation_body(SENTENCE))))
    assert stash.progress.pool == "short" and stash.progress.recovered_from is None
    assert engine.inflight.requests() == 0
    chosen = engine.choose("llama::dualpool-recovery", [long], stash, last_failure=str(
        litellm_error(emulated(ErrorFormat.CURRENT, SHORT_LEN, 5_000, 64))))
    assert chosen == [long] and stash.progress.recovered_from == "short"


def test_the_last_breadcrumb_is_the_failure_of_the_hop() -> None:
    crumbs = [{"deployment_id": "a", "exception_string": "first"},
              {"deployment_id": "b", "exception_string": "second"}]
    assert last_failure_text({"metadata": {"previous_models": crumbs}}) == "second"
    assert last_failure_text({"litellm_metadata": {"previous_models": tuple(crumbs)}}) == "second"
    assert last_failure_text({"metadata": {}}) is None
    assert last_failure_text(None) is None


# -- Anthropic messages: part types are checked per call type ---------------------------------

ANTHROPIC = {"model": "llama", "max_tokens": 32, "messages": [
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "a cat"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
        {"type": "search_result", "source": "s", "title": "t", "content": []},
        {"type": "text", "text": "and?"}]}]}


@pytest.mark.parametrize("call_type", ["anthropic_messages", "aresponses", None])
def test_anthropic_blocks_pass_outside_chat_completions(call_type: Any) -> None:
    check_user_parts(ANTHROPIC, call_type)


@pytest.mark.parametrize("call_type", ["acompletion", "completion",
                                       CallTypes.acompletion])
def test_chat_completions_keep_openai_part_types(call_type: Any) -> None:
    with pytest.raises(InvalidRequestError, match="tool_result"):
        check_user_parts(ANTHROPIC, call_type)
