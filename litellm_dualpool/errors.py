"""The exception tree of litellm-dualpool. Every error carries the numbers that explain it.

    DualPoolError
    ├── InvalidRequestError        the request body cannot be shaped (client's fault -> 400)
    ├── ConfigError                plugin settings or pool declarations are wrong (start-up)
    └── NoPoolFitsError            the estimated budget exceeds every pool's limit (-> 400)
        ├── PoolNotAllowedError    a pool that fits exists but the tenant's policy forbids it
        └── RecoveryRefusedError   no larger pool is tried: the failure was no context-length
                                   rejection (the client keeps the backend's own 400)
"""

from __future__ import annotations


class DualPoolError(Exception):
    """Base class of every error raised by litellm-dualpool."""


class InvalidRequestError(DualPoolError, ValueError):
    """A request body that cannot be shaped; ``field`` names where (e.g. ``messages[2].content``)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message if field is None else f"{field}: {message}")
        self.field = field


class ConfigError(DualPoolError, ValueError):
    """Invalid configuration; ``path`` names the offending key (e.g. ``model_list[3].model_info``)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = path


class NoPoolFitsError(DualPoolError):
    """The request's estimated token budget is larger than the largest pool's max_model_len."""

    def __init__(self, *, model_group: str, budget_tokens: int, largest_limit_tokens: int,
                 message: str | None = None) -> None:
        self.model_group = model_group
        self.budget_tokens = budget_tokens
        self.largest_limit_tokens = largest_limit_tokens
        super().__init__(
            message
            or (
                f"litellm-dualpool: request needs an estimated {budget_tokens} tokens "
                f"(prompt + max output) but the largest pool of model group {model_group!r} "
                f"serves at most {largest_limit_tokens} tokens (max_model_len). "
                "Shorten the prompt or lower max_tokens."
            )
        )


class PoolNotAllowedError(NoPoolFitsError):
    """Only a pool the caller's key/team policy forbids (e.g. the long pool) would fit."""

    def __init__(self, *, model_group: str, budget_tokens: int, largest_limit_tokens: int,
                 message: str | None = None) -> None:
        super().__init__(
            model_group=model_group, budget_tokens=budget_tokens,
            largest_limit_tokens=largest_limit_tokens,
            message=message or (
                f"litellm-dualpool: request needs an estimated {budget_tokens} tokens (prompt + "
                f"max output) but the pools of model group {model_group!r} that this API key "
                f"may use serve at most {largest_limit_tokens} tokens (max_model_len); a larger "
                "pool exists but the key's policy (dualpool_policy) does not allow it. Shorten "
                "the prompt, lower max_tokens, or ask for a key with long-pool access."))


class RecoveryRefusedError(NoPoolFitsError):
    """The recovery hop is refused: the attempt that failed was no context-length rejection (its
    error is not the backend's own rejection, or the request is too small to have overflowed the
    pool). A NoPoolFitsError because the filter answers both the same way, with a 400; LiteLLM
    then re-raises the first attempt's error to the client."""

    def __init__(self, *, model_group: str, pool: str, budget_tokens: int,
                 largest_limit_tokens: int, why: str) -> None:
        self.pool = pool
        super().__init__(
            model_group=model_group, budget_tokens=budget_tokens,
            largest_limit_tokens=largest_limit_tokens,
            message=f"litellm-dualpool: not retried in a larger pool of model group "
                    f"{model_group!r}: pool {pool!r} failed the request, but {why}. See the "
                    "backend's error.")
