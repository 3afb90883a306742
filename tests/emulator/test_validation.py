"""vLLM's length rules and exact error texts, current (0.32) and legacy generations."""

from __future__ import annotations

import pytest

from litellm_dualpool.emulator.validation import (
    ApiError,
    ErrorFormat,
    check_prompt_chars,
    check_requested_max_tokens,
    output_budget,
)

CUR, LEG = ErrorFormat.CURRENT, ErrorFormat.LEGACY


@pytest.mark.parametrize(
    ("prompt", "requested", "fmt", "budget"),
    [
        (100, None, CUR, 4096 - 100),  # absent max_tokens: the rest of the window
        (100, 50, CUR, 50),
        (4000, 500, CUR, 96),  # current vLLM silently lowers max_tokens
        (4095, None, CUR, 1),
        (100, None, LEG, 3996),
        (100, 3996, LEG, 3996),  # exactly fills the window: allowed
    ],
)
def test_budgets(prompt: int, requested: int | None, fmt: ErrorFormat, budget: int) -> None:
    assert output_budget(4096, prompt, requested, fmt) == budget


def test_current_prompt_over_window_reports_at_least_l_plus_one() -> None:
    with pytest.raises(ApiError) as info:
        output_budget(4096, 9000, 10, CUR)
    err = info.value
    assert err.status == 400 and err.param == "input_tokens"
    assert err.message == (
        "This model's maximum context length is 4096 tokens. However, your prompt contains at least "
        "4097 input tokens, which exceeds this limit even without any output tokens. Please reduce "
        "the length of the input prompt. (parameter=input_tokens, value=4097)"
    )
    assert err.body(CUR) == {"error": {"message": err.message, "type": "BadRequestError",
                                       "param": "input_tokens", "code": 400}}


def test_current_token_id_prompt_reports_its_exact_length() -> None:
    with pytest.raises(ApiError) as info:
        output_budget(4096, 5000, None, CUR, token_ids_prompt=True)
    assert "your prompt contains 5000 input tokens" in info.value.message


def test_current_prompt_exactly_at_window_leaves_no_output_token() -> None:
    with pytest.raises(ApiError) as info:
        output_budget(4096, 4096, None, CUR)
    assert info.value.message == "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_current_max_tokens_above_window(param: str) -> None:
    with pytest.raises(ApiError) as info:
        check_requested_max_tokens(4096, 5000, param, CUR)
    assert info.value.param == param
    assert info.value.message == (
        f"{param}=5000 cannot be greater than max_model_len=4096. Please request fewer output "
        f"tokens. (parameter={param}, value=5000)"
    )
    check_requested_max_tokens(4096, 5000, param, LEG)  # legacy has no such check


def test_legacy_messages_and_flat_body() -> None:
    with pytest.raises(ApiError) as info:
        output_budget(4096, 4000, 500, LEG)
    err = info.value
    assert err.message == (
        "This model's maximum context length is 4096 tokens. However, you requested 4500 tokens "
        "(4000 in the messages, 500 in the completion). Please reduce the length of the messages "
        "or completion."
    )
    assert err.body(LEG) == {"object": "error", "message": err.message, "type": "BadRequestError",
                             "param": None, "code": 400}
    with pytest.raises(ApiError) as info:
        output_budget(4096, 4096, None, LEG)
    assert info.value.message == (
        "This model's maximum context length is 4096 tokens. However, you requested 4096 tokens in "
        "the messages, Please reduce the length of the messages."
    )


@pytest.mark.parametrize("fmt", [CUR, LEG])
def test_non_positive_max_tokens(fmt: ErrorFormat) -> None:
    with pytest.raises(ApiError, match="max_tokens must be at least 1, got 0"):
        output_budget(4096, 10, 0, fmt)


def test_character_bound_before_tokenizing() -> None:
    check_prompt_chars(100, 128, 12800, CUR)
    with pytest.raises(ApiError) as info:
        check_prompt_chars(100, 128, 12801, CUR)
    assert info.value.param == "input_text"
    assert "your prompt contains 12801 characters (more than 12800 characters" in info.value.message
    check_prompt_chars(100, 128, 12801, LEG)
