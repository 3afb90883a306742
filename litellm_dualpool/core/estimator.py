"""The one call the glue and the simulator make before dispatch: body -> Estimate.

`Estimator.estimate` shapes the body once, picks its calibration key (model group plus the
caller's category, else the content class), asks the calibrator for the conservative prompt
estimate and adds the output budget. `Estimator.learn` feeds the backend's
`usage.prompt_tokens` back under the same key.

Tiers (`core.policy.tier_of`): given the pool limits, `estimate` first reads the body's sizes
only; when the bytes with a wide margin (`Calibrator.estimate_far`) put the budget in one pool,
it decides from them (FAR: no character counts, the O(1)-per-message path). Otherwise it
counts characters as always and marks a request whose optimistic and conservative budgets lie
in different pools AMBIGUOUS (the proxy may then ask the backend for the exact count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from litellm_dualpool.core.budget import TokenBudget, output_budget_tokens, sequence_count
from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.policy import Tier, tier_of
from litellm_dualpool.core.shape import (
    ContentClass,
    RequestShape,
    ShapeDraft,
    bytes_only,
    measure_request,
)
from litellm_dualpool.errors import InvalidRequestError

#: The class that sizes alone cannot tell a request's class from (the far tier spans both).
_NEIGHBOUR_CLASS = {ContentClass.PROSE: ContentClass.CODE.value,
                    ContentClass.CODE: ContentClass.PROSE.value}
#: Entries of the estimator's (model group, class) key cache before it is cleared.
_MAX_CLASS_KEYS = 1024
#: Longest caller-supplied category name kept (longer ones are an error, not a new key).
MAX_CATEGORY_CHARS = 64
#: A limit whose room lies within this fraction of a body's text estimate rules the far tier
#: out before it is tried (`Estimator._surely_not_far`); below the far margin's 30%.
_SURELY_NOT_FAR = 0.25


@dataclass(frozen=True, slots=True)
class Estimate:
    """A request's shape, its calibration key and its token budget: what a plan is made from."""

    shape: RequestShape
    key: CategoryKey
    budget: TokenBudget
    #: how close to a pool limit (NEAR when no limits were given)
    tier: Tier = Tier.NEAR
    #: the walked body, for a FAR estimate (whose shape has no character counts): learning
    #: completes the shape from it, once, only when it learns (`learning_shape`)
    draft: ShapeDraft | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, shape: RequestShape, key: CategoryKey, output_tokens: int, *,
           optimistic: int, point: int, conservative: int, sequences: int = 1,
           tier: Tier = Tier.NEAR) -> Estimate:
        """An estimate from prompt token counts made elsewhere (the calibrator's range, a static
        ratio, the true count of an oracle)."""
        return cls(shape, key, TokenBudget(
            prompt_tokens=conservative, output_tokens=output_tokens, sequences=sequences,
            prompt_tokens_point=point, prompt_tokens_optimistic=optimistic), tier)


def _surely_not_far(text_tokens: float, output_tokens: int, limits: Sequence[int],
                    headroom_fraction: float) -> bool:
    """Whether the far tier cannot decide a request whose text is about `text_tokens` (its
    bytes at its key's latest tokens per byte, `Estimator._remember_ratio`): then the far
    attempt (~7 us at 32 KB: a shape, the calibrator's range, the tier rule) is skipped.

    Why it is safe: the far range is the bytes-only estimate of the text within at least
    +-`FAR_MARGIN_FRACTION` (30%), widened by the neighbour class; a limit whose room for the
    prompt (after headroom and the output budget) lies within +-`_SURELY_NOT_FAR` (25%) of
    that estimate is inside it, so the request is not far. A stale ratio can only skip an
    attempt that would have succeeded: the full estimate then decides, exactly as for any
    NEAR request (more CPU, the same pool rule)."""
    low = text_tokens * (1.0 - _SURELY_NOT_FAR)
    high = text_tokens * (1.0 + _SURELY_NOT_FAR)
    scale = 1.0 + headroom_fraction
    for limit in limits:  # noqa: SIM110 (any() of a generator costs more, on every request)
        if low <= limit / scale - output_tokens <= high:
            return True
    return False


def category_key(model_group: str, shape: RequestShape, category: str | None = None) -> CategoryKey:
    """(model group, caller category or the content class). InvalidRequestError for a bad name."""
    if category is None:
        return CategoryKey(model_group, shape.content_class.value)
    return _caller_key(model_group, category)


def _caller_key(model_group: str, category: object) -> CategoryKey:
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
        self._keys: dict[tuple[str, ContentClass], tuple[CategoryKey, CategoryKey | None]] = {}
        #: tokens per byte of each far key's latest estimate (`_surely_not_far`), by
        #: (model group, category)
        self._ratios: dict[tuple[str, str], float] = {}

    def estimate(
        self,
        body: Mapping[str, Any],
        model_group: str,
        *,
        category: str | None = None,
        default_output_tokens: int | None = None,
        embedding: bool = False,
        limits: Sequence[int] | None = None,
        headroom_fraction: float = 0.0,
    ) -> Estimate:
        """category: a caller-supplied category (bounded by the calibrator's key limit).
        embedding: the body is an embeddings request (no output budget).
        limits: the pools' max_model_len, ascending; with them the estimate is tiered (see the
        module docstring), without them it is always the full (NEAR) one."""
        draft = measure_request(body)
        default = self.default_output_tokens if default_output_tokens is None else (
            default_output_tokens)
        output_tokens = output_budget_tokens(body, default, embedding=embedding)
        sequences = sequence_count(body)
        far_key: CategoryKey | None = None
        text_bytes: int | None = None
        if limits:
            if category is None:
                far_key, neighbour = self._class_keys(model_group, draft.bytes_class())
            else:
                far_key, neighbour = _caller_key(model_group, category), None
            text_bytes = draft.text_only_bytes
            # keyed by the key's two strings: a tuple of str hashes in C, the dataclass in Python
            ratio = self._ratios.get((far_key.model_group, far_key.category)) if text_bytes else None
            if text_bytes is None or ratio is None or not _surely_not_far(
                    text_bytes * ratio, output_tokens, limits, headroom_fraction):
                far = self._far(draft.bytes_shape(), far_key, neighbour, output_tokens, limits,
                                headroom_fraction, sequences, draft)
                if far is not None:
                    return far
        shape = draft.shape()
        key = category_key(model_group, shape, category)
        estimate = self.estimate_shape(shape, key, output_tokens, sequences=sequences,
                                       limits=limits, headroom_fraction=headroom_fraction)
        if far_key is not None and text_bytes:
            self._remember_ratio(far_key, estimate.budget.prompt_tokens_point, text_bytes)
        return estimate

    def estimate_far(self, shape: RequestShape, key: CategoryKey, output_tokens: int,
                     limits: Sequence[int], headroom_fraction: float, *, sequences: int = 1,
                     caller_category: bool = False,
                     draft: ShapeDraft | None = None) -> Estimate | None:
        """The FAR estimate of a shape without character counts, or None when its wide range
        may reach another pool. A prose class read from sizes may be code (and the reverse):
        without a caller category, the range spans both keys'."""
        neighbour = _NEIGHBOUR_CLASS.get(shape.content_class)
        return self._far(shape, key, None if neighbour is None or caller_category
                         else CategoryKey(key.model_group, neighbour), output_tokens, limits,
                         headroom_fraction, sequences, draft)

    def _far(self, shape: RequestShape, key: CategoryKey, neighbour: CategoryKey | None,
             output_tokens: int, limits: Sequence[int], headroom_fraction: float,
             sequences: int, draft: ShapeDraft | None) -> Estimate | None:
        low, optimistic, point, conservative, high = self.calibrator.estimate_far(
            key, shape, neighbour)
        if tier_of(low + output_tokens, high + output_tokens, limits, headroom_fraction,
                   wide=True) is not Tier.FAR:
            return None
        return Estimate(shape, key, TokenBudget(conservative, output_tokens, sequences, point,
                                                optimistic), Tier.FAR, draft)

    def _remember_ratio(self, key: CategoryKey, point_tokens: int | None,
                        text_bytes: int) -> None:
        """Keep the far key's latest full point estimate per byte of a text-only body, for
        `_surely_not_far`. Only requests the far tier did not decide set it: a request it skips
        is estimated in full and corrects the ratio, so a stale one cannot persist, and a
        far request pays nothing for it. Bounded like the class keys."""
        if point_tokens:
            slot = (key.model_group, key.category)
            if len(self._ratios) >= _MAX_CLASS_KEYS and slot not in self._ratios:
                self._ratios.clear()
            self._ratios[slot] = point_tokens / text_bytes

    def _class_keys(self, model_group: str,
                    content_class: ContentClass) -> tuple[CategoryKey, CategoryKey | None]:
        """(the class's key, its neighbour's key or None), kept per (group, class): building
        and validating them per request costs about a microsecond. Bounded: cleared beyond
        `_MAX_CLASS_KEYS` entries (model groups are a handful)."""
        found = self._keys.get((model_group, content_class))
        if found is None:
            if len(self._keys) >= _MAX_CLASS_KEYS:
                self._keys.clear()
            neighbour = _NEIGHBOUR_CLASS.get(content_class)
            found = self._keys[(model_group, content_class)] = (
                CategoryKey(model_group, content_class.value),
                None if neighbour is None else CategoryKey(model_group, neighbour))
        return found

    def estimate_measured(self, shape: RequestShape, key: CategoryKey, output_tokens: int, *,
                          sequences: int = 1, limits: Sequence[int] | None = None,
                          headroom_fraction: float = 0.0) -> Estimate:
        """`estimate` for a shape measured already (the simulator's requests): the same tiers.
        A key whose category is the shape's own content class is taken as no caller category
        (the far tier then keys by the class read from sizes, as the proxy does)."""
        if limits:
            caller = key.category != shape.content_class.value
            bytes_shape = bytes_only(shape)
            far_key = key if caller else CategoryKey(key.model_group,
                                                     bytes_shape.content_class.value)
            far = self.estimate_far(bytes_shape, far_key, output_tokens, limits,
                                    headroom_fraction, sequences=sequences,
                                    caller_category=caller)
            if far is not None:
                return far
        return self.estimate_shape(shape, key, output_tokens, sequences=sequences,
                                   limits=limits, headroom_fraction=headroom_fraction)

    def estimate_shape(self, shape: RequestShape, key: CategoryKey, output_tokens: int, *,
                       sequences: int = 1, limits: Sequence[int] | None = None,
                       headroom_fraction: float = 0.0) -> Estimate:
        """The estimate of a request already measured (the simulator's requests); with
        `limits`, its tier (NEAR or AMBIGUOUS)."""
        optimistic, point, conservative = self.calibrator.estimate_range(key, shape)
        tier = Tier.NEAR
        if limits:
            tier = tier_of(optimistic + output_tokens, conservative + output_tokens, limits,
                           headroom_fraction, wide=False)
        return Estimate.of(shape, key, output_tokens, optimistic=optimistic, point=point,
                           conservative=conservative, sequences=sequences, tier=tier)

    def learn(self, estimate: Estimate, prompt_tokens: int) -> bool:
        """Feed the backend-reported prompt token count of a finished request (a FAR estimate's
        shape is completed first: `learning_shape`)."""
        shape, key = learning_shape(estimate.shape, estimate.key, estimate.draft)
        return self.calibrator.observe(key, shape, prompt_tokens)


def learning_shape(shape: RequestShape, key: CategoryKey,
                   draft: ShapeDraft | None) -> tuple[RequestShape, CategoryKey]:
    """The shape and key a finished request teaches: a FAR request's shape completed with its
    character counts (computed here, once), under the key of its full content class unless the
    caller named the category. Other requests: as planned."""
    if draft is None or shape.char_counts is not None:
        return shape, key
    full = draft.shape()
    if key.category == shape.content_class.value:  # the class was the key, not the caller
        key = CategoryKey(key.model_group, full.content_class.value)
    return full, key
