"""Output budget: the tokens a request may generate, counted as vLLM counts them against
max_model_len.

CONTRACT (filled in by the core issue).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """Estimated prompt tokens plus the output budget: what must fit in max_model_len."""

    prompt_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def output_budget_tokens(body: Mapping[str, Any], default_output_tokens: int) -> int:
    """`max_completion_tokens`, else `max_tokens`, else the default. Raises InvalidRequestError
    for negative or non-integer values."""
    raise NotImplementedError
