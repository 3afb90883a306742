"""The one call the glue and the simulator make before dispatch: body -> Estimate.

`Estimator.estimate` shapes the body once, picks its calibration key (model group plus the
caller's category, else the content class), asks the calibrator for the conservative prompt
estimate and adds the output budget. `Estimator.learn` feeds the backend's
`usage.prompt_tokens` back under the same key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litellm_dualpool.core.budget import TokenBudget, output_budget_tokens, sequence_count
from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.shape import RequestShape, shape_request
from litellm_dualpool.errors import InvalidRequestError

#: Longest caller-supplied category name kept (longer ones are an error, not a new key).
MAX_CATEGORY_CHARS = 64


@dataclass(frozen=True, slots=True)
class Estimate:
    """A request's shape, its calibration key and its token budget: what a plan is made from."""

    shape: RequestShape
    key: CategoryKey
    budget: TokenBudget

    @classmethod
    def of(cls, shape: RequestShape, key: CategoryKey, output_tokens: int, *,
           optimistic: int, point: int, conservative: int, sequences: int = 1) -> Estimate:
        """An estimate from prompt token counts made elsewhere (the calibrator's range, a static
        ratio, the true count of an oracle)."""
        return cls(shape, key, TokenBudget(
            prompt_tokens=conservative, output_tokens=output_tokens, sequences=sequences,
            prompt_tokens_point=point, prompt_tokens_optimistic=optimistic))


def category_key(model_group: str, shape: RequestShape, category: str | None = None) -> CategoryKey:
    """(model group, caller category or the content class). InvalidRequestError for a bad name."""
    if category is None:
        return CategoryKey(model_group, shape.content_class.value)
    if not isinstance(category, str) or not category or len(category) > MAX_CATEGORY_CHARS:
        raise InvalidRequestError(
            f"category must be a non-empty string of at most {MAX_CATEGORY_CHARS} characters",
            field="category")
    return CategoryKey(model_group, category)


class Estimator:
    """Shapes a body, picks its category key and estimates its total token budget."""

    def __init__(self, calibrator: Calibrator, *, default_output_tokens: int = 1024) -> None:
        if type(default_output_tokens) is not int or default_output_tokens < 0:
            raise ValueError("default_output_tokens must be a non-negative integer")
        self.calibrator = calibrator
        self.default_output_tokens = default_output_tokens

    def estimate(
        self,
        body: Mapping[str, Any],
        model_group: str,
        *,
        category: str | None = None,
        default_output_tokens: int | None = None,
        embedding: bool = False,
    ) -> Estimate:
        """category: a caller-supplied category (bounded by the calibrator's key limit).
        embedding: the body is an embeddings request (no output budget)."""
        shape = shape_request(body)
        default = self.default_output_tokens if default_output_tokens is None else (
            default_output_tokens)
        output_tokens = output_budget_tokens(body, default, embedding=embedding)
        key = category_key(model_group, shape, category)
        return self.estimate_shape(shape, key, output_tokens, sequences=sequence_count(body))

    def estimate_shape(self, shape: RequestShape, key: CategoryKey, output_tokens: int, *,
                       sequences: int = 1) -> Estimate:
        """The estimate of a request already measured (the simulator's requests)."""
        optimistic, point, conservative = self.calibrator.estimate_range(key, shape)
        return Estimate.of(shape, key, output_tokens, optimistic=optimistic, point=point,
                           conservative=conservative, sequences=sequences)

    def learn(self, estimate: Estimate, prompt_tokens: int) -> bool:
        """Feed the backend-reported prompt token count of a finished request."""
        return self.calibrator.observe(estimate.key, estimate.shape, prompt_tokens)
