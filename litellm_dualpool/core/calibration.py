"""Online bytes-per-token calibration per (model group, category) key.

CONTRACT (filled in by the core issue).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litellm_dualpool.core.shape import RequestShape


@dataclass(frozen=True, slots=True)
class CategoryKey:
    """Calibration key: each model group has its own tokenizer, each category its own ratio."""

    model_group: str
    category: str


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    """Knobs of the calibrator (validated by config.py)."""

    cold_start_bytes_per_token: float = 4.0
    ema_beta: float = 0.95
    gamma: float = 2.0
    min_bytes_per_token: float = 1.0
    max_bytes_per_token: float = 8.0
    max_step_fraction: float = 0.25
    max_keys: int = 256
    image_tokens: int = 1024
    audio_tokens: int = 512


@dataclass(frozen=True, slots=True)
class RatioView:
    """The learned state of one key, for metrics and reports."""

    bytes_per_token: float
    conservative_bytes_per_token: float
    samples: int


class Calibrator:
    """Learns bytes-per-token online from backend-reported prompt token counts.

    Thread safe. `estimate_prompt_tokens` is what routing uses (conservative: rounds up);
    `observe` learns from one finished request; `snapshot`/`restore` persist the whole state.
    """

    def __init__(self, settings: CalibrationSettings | None = None) -> None:
        raise NotImplementedError

    def estimate_prompt_tokens(self, key: CategoryKey, shape: RequestShape) -> int:
        raise NotImplementedError

    def observe(self, key: CategoryKey, shape: RequestShape, prompt_tokens: int) -> bool:
        """Learn from one observation; returns False when it was rejected (outlier, media)."""
        raise NotImplementedError

    def ratio(self, key: CategoryKey) -> RatioView:
        raise NotImplementedError

    def keys(self) -> list[CategoryKey]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """A small, versioned, JSON-serialisable copy of the whole state."""
        raise NotImplementedError

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        raise NotImplementedError
