"""Fault knobs of the emulated server: set from the command line, changed at run time.

Every knob is a field of :class:`Faults`; ``POST /admin/faults`` with a JSON object of some
fields changes them (unknown fields or bad values -> 400 naming the field), ``GET
/admin/faults`` shows them. Faults apply to ``/v1/chat/completions`` and ``/v1/completions``;
``refuse`` applies to every route except ``/admin/*``.

error_rate      fraction of requests answered HTTP 500 (vLLM's InternalServerError body)
fail_next       the next N requests are answered HTTP 500, whatever error_rate says (a
                deterministic "fails once": the knob counts down to 0)
latency_seconds wall-clock delay added before a request is handled
hang_rate       fraction of requests never answered (held until the client gives up)
drop_rate       fraction of requests whose connection is cut: no response at all for
                non-streaming requests (the socket is aborted), a few chunks then the cut
                for streaming ones
refuse          "none" | "503" (every route answers 503, /health included) | "connection"
                (the listening socket is closed: new connections are refused)
refuse_seconds  if set, ``refuse`` reverts to "none" after this many seconds (the way back
                from "connection", since the admin route is then unreachable too)
stall           the engine makes no progress: requests queue up (``vllm:num_requests_waiting``
                grows), nothing is generated until it is lifted; /health still answers 200
no_usage        responses carry no usage (no ``usage`` field, no usage chunk in streams)
error_format    "current" | "legacy": which vLLM generation's error bodies to give
tokenize_latency_seconds  delay before ``POST /tokenize`` answers (a slow tokenizer)
tokenize_missing          ``POST /tokenize`` answers 404, as a server without the route
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

from litellm_dualpool.emulator.validation import ErrorFormat


class Refuse(StrEnum):
    NONE = "none"
    HTTP_503 = "503"
    CONNECTION = "connection"


class FaultAction(StrEnum):
    """What happens to one request, drawn when it arrives."""

    SERVE = "serve"
    ERROR = "error"
    HANG = "hang"
    DROP = "drop"


_RATES = ("error_rate", "hang_rate", "drop_rate")


@dataclass
class Faults:
    error_rate: float = 0.0
    fail_next: int = 0
    latency_seconds: float = 0.0
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    refuse: Refuse = Refuse.NONE
    refuse_seconds: float | None = None
    stall: bool = False
    no_usage: bool = False
    error_format: ErrorFormat = ErrorFormat.CURRENT
    tokenize_latency_seconds: float = 0.0
    tokenize_missing: bool = False

    def __post_init__(self) -> None:
        self.update(asdict(self))

    def update(self, changes: dict[str, Any]) -> None:
        """Validate all of ``changes`` first, then apply them (all or nothing)."""
        known = {f.name for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"{name}: unknown fault knob (known: {', '.join(sorted(known))})")
            clean[name] = _check(name, value)
        for name, value in clean.items():
            setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        out["refuse"] = str(self.refuse)
        out["error_format"] = str(self.error_format)
        return out

    def draw(self, rng: random.Random) -> FaultAction:
        """The fate of one request: checked in the order hang, drop, error."""
        if self.hang_rate and rng.random() < self.hang_rate:
            return FaultAction.HANG
        if self.drop_rate and rng.random() < self.drop_rate:
            return FaultAction.DROP
        if self.fail_next > 0:
            self.fail_next -= 1
            return FaultAction.ERROR
        if self.error_rate and rng.random() < self.error_rate:
            return FaultAction.ERROR
        return FaultAction.SERVE


def _check(name: str, value: Any) -> Any:
    if name in _RATES:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: must be a number between 0 and 1, got {value!r}")
        return float(value)
    if name == "fail_next":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**6:
            raise ValueError(f"{name}: must be an integer between 0 and 1000000, got {value!r}")
        return value
    if name in ("latency_seconds", "tokenize_latency_seconds"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name}: must be a number >= 0, got {value!r}")
        return float(value)
    if name == "refuse_seconds":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{name}: must be null or a number > 0, got {value!r}")
        return float(value)
    if name in ("no_usage", "stall", "tokenize_missing"):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be true or false, got {value!r}")
        return value
    if name == "refuse":
        try:
            return Refuse(str(value))
        except ValueError:
            raise ValueError(f"{name}: must be one of {[r.value for r in Refuse]}, got {value!r}") from None
    if name == "error_format":
        try:
            return ErrorFormat(str(value))
        except ValueError:
            raise ValueError(f"{name}: must be one of {[f.value for f in ErrorFormat]}, got {value!r}") from None
    raise ValueError(f"{name}: unknown fault knob")  # pragma: no cover - fields handled above
