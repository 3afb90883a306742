"""The one call the glue and the simulator make before dispatch: body -> Estimate.

CONTRACT (filled in by the core issue).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litellm_dualpool.core.budget import TokenBudget
from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.shape import RequestShape


@dataclass(frozen=True, slots=True)
class Estimate:
    shape: RequestShape
    key: CategoryKey
    budget: TokenBudget


class Estimator:
    """Shapes a body, picks its category key and estimates its total token budget."""

    def __init__(self, calibrator: Calibrator, *, default_output_tokens: int = 1024) -> None:
        raise NotImplementedError

    def estimate(
        self,
        body: Mapping[str, Any],
        model_group: str,
        *,
        category: str | None = None,
        default_output_tokens: int | None = None,
    ) -> Estimate:
        """category: a caller-supplied category (bounded by the calibrator's key limit)."""
        raise NotImplementedError

    def learn(self, estimate: Estimate, prompt_tokens: int) -> bool:
        """Feed the backend-reported prompt token count of a finished request."""
        raise NotImplementedError
