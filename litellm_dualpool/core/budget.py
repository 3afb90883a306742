"""Output budget: the tokens a request may generate, counted as vLLM counts them against
max_model_len.

vLLM admits a sequence when `prompt_tokens + max_tokens <= max_model_len`, and it checks each
of the `n` (or `best_of`) sequences of a request on its own: they share the prompt, each may
generate `max_tokens`. So `n` does not enlarge the per-sequence budget that must fit a pool; it
multiplies the work (KV cache, decode steps), which is why it is exposed as `sequences` for the
load signal but left out of `total_tokens`.

When a request names no limit, vLLM lets it generate up to `max_model_len - prompt_tokens`:
such a request "fits" any pool its prompt fits, but would be cut short in a small pool. A
configured default per model group (the expected output length, e.g. a p99) is the trade-off:
too small and long generations are truncated in the short pool (finish_reason="length"); too
large and short requests are sent to the long pool for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litellm_dualpool.errors import InvalidRequestError

#: Body fields naming the output limit, in order of precedence (Chat, legacy, Responses).
OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """Estimated prompt tokens plus the output budget: what must fit in max_model_len.

    sequences: parallel sequences the request asks for (max of `n` and `best_of`); each one must
        fit on its own, so it does not enter `total_tokens`, but it multiplies the load.
    prompt_tokens_point: the calibrator's point estimate (prompt_tokens is the conservative one
        used for routing); None when not known.
    prompt_tokens_optimistic: the calibrator's optimistic estimate (the point estimate less the
        margin, never below the prompt's bytes at ``max_bytes_per_token``); None: no error model,
        the conservative estimate is the only one.
    """

    prompt_tokens: int
    output_tokens: int
    sequences: int = 1
    prompt_tokens_point: int | None = None
    prompt_tokens_optimistic: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def refusal_floor_tokens(self) -> int:
        """The least window a backend needs for this request: refuse only above it. The prompt
        is the optimistic estimate (see `Calibrator.estimate_range`: it keeps a floor however
        wide the learned spread); then one output token, or the output budget when that is
        larger. Not prompt + output: current vLLM lowers a max_tokens that overflows only
        together with the prompt and serves the request; it refuses a prompt that fills the
        window, and a max_tokens above it."""
        optimistic = (self.prompt_tokens if self.prompt_tokens_optimistic is None
                      else self.prompt_tokens_optimistic)
        return max(optimistic + 1, self.output_tokens)


def _non_negative_int(body: Mapping[str, Any], field: str, minimum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int:  # bool and float are rejected on purpose
        raise InvalidRequestError(f"must be an integer, got {value!r}", field=field)
    if value < minimum:
        raise InvalidRequestError(f"must be >= {minimum}, got {value}", field=field)
    return value


def output_budget_tokens(body: Mapping[str, Any], default_output_tokens: int, *,
                         embedding: bool = False) -> int:
    """`max_completion_tokens`, else `max_tokens`, else `max_output_tokens` (Responses), else the
    default. Raises InvalidRequestError for negative or non-integer values. Embeddings generate
    nothing (0)."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the request body must be a JSON object", field="body")
    if not embedding and type(default_output_tokens) is int and default_output_tokens >= 0:
        # the usual body: one limit field at most, a valid integer (checked as below)
        present = [field for field in OUTPUT_LIMIT_FIELDS if body.get(field) is not None]
        if not present:
            return default_output_tokens
        if len(present) == 1:
            value = body[present[0]]
            if type(value) is int and value >= 0:
                return value
    found: int | None = None
    for field in OUTPUT_LIMIT_FIELDS:
        value = _non_negative_int(body, field, 0)
        if found is None and value is not None:
            found = value
    if embedding:
        return 0
    if found is not None:
        return found
    if type(default_output_tokens) is not int or default_output_tokens < 0:
        raise InvalidRequestError(
            f"default output tokens must be a non-negative integer, got {default_output_tokens!r}",
            field="default_output_tokens")
    return default_output_tokens


def sequence_count(body: Mapping[str, Any]) -> int:
    """max(`n`, `best_of`), 1 when absent; InvalidRequestError for values below 1."""
    if body.get("n") is None and body.get("best_of") is None:  # the usual body
        return 1
    n = _non_negative_int(body, "n", 1) or 1
    best_of = _non_negative_int(body, "best_of", 1) or 1
    return max(n, best_of)
