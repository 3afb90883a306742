"""Pool limits read from the backends: which deployments to ask, where, and what their answer
means. Pure (no I/O): `limits_fetch` does the HTTP, the proxy and ``check-config --probe`` use
both.

vLLM's ``GET /v1/models`` lists the served models, each with its ``max_model_len`` (the window
``--max-model-len`` set). A deployment of a dual-pool group that has no
``model_info.max_model_len`` takes it from there; one that has it is cross-checked against it.
A backend is an untrusted source: its answer is size-bounded, must be an OpenAI model list, must
name the deployment's served model, and its limit must be a positive integer within the same
bound as a configured one.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The largest max_model_len accepted from a YAML or a backend (the config's own bound).
MAX_MODEL_LEN_BOUND = 100_000_000
#: A model list larger than this is refused unread (vLLM's is a few hundred bytes per model).
MAX_RESPONSE_BYTES = 1 << 20
#: LiteLLM provider prefixes of OpenAI-compatible deployments; the rest of ``model`` is the name
#: the backend serves (``hosted_vllm/meta-llama/Llama-3-70B`` -> ``meta-llama/Llama-3-70B``).
PROVIDER_PREFIXES = frozenset({"hosted_vllm", "openai", "openai_like", "text-completion-openai",
                               "vllm", "custom_openai"})
_ENV_PREFIX = "os.environ/"


class LimitError(ValueError):
    """A backend's answer gives no usable max_model_len for the deployment (the message says why)."""


class Outcome(enum.StrEnum):
    """What probing one deployment found."""

    DISCOVERED = "discovered"    # no configured limit; the backend's is used
    MATCH = "match"              # configured and discovered agree
    MISMATCH = "mismatch"        # configured and discovered differ
    UNREACHABLE = "unreachable"  # no usable answer (down, refused, malformed, model not served)


@dataclass(frozen=True, slots=True)
class LimitTarget:
    """One deployment whose backend is asked for its limit."""

    index: int                     # position in model_list (errors name model_list[index])
    model_group: str
    served_model: str              # the id to find in the backend's model list
    url: str                       # the backend's GET /v1/models
    key: tuple[str, str]           # (litellm_params.model, api_base): finds the deployment again
    configured: int | None         # model_info.max_model_len, when set
    api_key: str | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return f"model_list[{self.index}]"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True, slots=True)
class Probe:
    """The answer for one target: the limit read, or why there is none."""

    target: LimitTarget
    discovered: int | None
    error: str | None = None

    @property
    def outcome(self) -> Outcome:
        if self.discovered is None:
            return Outcome.UNREACHABLE
        if self.target.configured is None:
            return Outcome.DISCOVERED
        return Outcome.MATCH if self.target.configured == self.discovered else Outcome.MISMATCH

    def describe(self) -> str:
        t = self.target
        where = f"{t.path} ({t.model_group!r}, {t.served_model!r} at {t.url})"
        match self.outcome:
            case Outcome.UNREACHABLE:
                return f"{where}: max_model_len could not be read: {self.error}"
            case Outcome.MISMATCH:
                return (f"{where}: model_info.max_model_len is {t.configured} but the backend "
                        f"serves max_model_len {self.discovered}")
            case _:
                return f"{where}: max_model_len {self.discovered}"


def resolve_env(value: object) -> object:
    """LiteLLM's ``os.environ/NAME`` convention (None when the variable is unset)."""
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        return os.environ.get(value[len(_ENV_PREFIX):])
    return value


def served_model_name(model: str) -> str:
    """The name the backend serves: ``litellm_params.model`` without its provider prefix."""
    prefix, sep, rest = model.partition("/")
    return rest if sep and prefix in PROVIDER_PREFIXES and rest else model


def models_url(api_base: str) -> str:
    """``GET /v1/models`` of an OpenAI-compatible base URL given with or without ``/v1``."""
    base = api_base.rstrip("/")
    return base + "/models" if base.endswith("/v1") else base + "/v1/models"


def deployment_key(litellm_params: object) -> tuple[str, str] | None:
    """What identifies a deployment's backend in the YAML and in LiteLLM's router alike:
    (model, api_base without a trailing slash), environment references resolved."""
    if not isinstance(litellm_params, Mapping):
        return None
    model, base = resolve_env(litellm_params.get("model")), resolve_env(litellm_params.get("api_base"))
    if not isinstance(model, str) or not isinstance(base, str) or not base:
        return None
    return model, base.rstrip("/")


def limit_target(index: int, entry: Mapping[str, Any]) -> LimitTarget | None:
    """The target for one model_list entry, or None when it names no backend to ask."""
    params = entry.get("litellm_params")
    key = deployment_key(params)
    if key is None or not isinstance(params, Mapping):
        return None
    info = entry.get("model_info")
    configured = info.get("max_model_len") if isinstance(info, Mapping) else None
    api_key = resolve_env(params.get("api_key"))
    return LimitTarget(index=index, model_group=str(entry.get("model_name")),
                       served_model=served_model_name(key[0]), url=models_url(key[1]), key=key,
                       configured=configured if type(configured) is int else None,
                       api_key=api_key if isinstance(api_key, str) and api_key else None)


def limit_targets(model_list: object, groups: Sequence[str], *,
                  only: Sequence[int] | None = None) -> list[LimitTarget]:
    """The deployments of the dual-pool `groups` that name a backend (all, or the model_list
    indices in `only`)."""
    if not isinstance(model_list, Sequence) or isinstance(model_list, str | bytes):
        return []
    wanted = set(groups)
    chosen = set(only) if only is not None else None
    targets = []
    for index, entry in enumerate(model_list):
        if not isinstance(entry, Mapping) or entry.get("model_name") not in wanted:
            continue
        if chosen is not None and index not in chosen:
            continue
        target = limit_target(index, entry)
        if target is not None:
            targets.append(target)
    return targets


def parse_models_body(body: bytes, served_model: str) -> int:
    """The ``max_model_len`` of `served_model` in a ``/v1/models`` body; LimitError otherwise."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise LimitError(f"model list larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise LimitError("the answer is not JSON") from None
    cards = data.get("data") if isinstance(data, dict) else None
    if not isinstance(cards, list):
        raise LimitError("the answer is not an OpenAI model list (no 'data' list)")
    ids = [c.get("id") for c in cards if isinstance(c, dict)]
    card = next((c for c in cards if isinstance(c, dict) and c.get("id") == served_model), None)
    if card is None:
        shown = ", ".join(repr(i) for i in ids[:5] if isinstance(i, str))
        raise LimitError(f"the backend does not serve {served_model!r} (it serves {shown or 'nothing'})")
    value = card.get("max_model_len")
    if value is None:
        raise LimitError(f"the model card of {served_model!r} has no max_model_len (not a vLLM "
                         "server?); set model_info.max_model_len")
    if type(value) is not int or not 0 < value <= MAX_MODEL_LEN_BOUND:
        raise LimitError(f"max_model_len {str(value)[:32]!r} is not an integer in "
                         f"[1, {MAX_MODEL_LEN_BOUND}]")
    return value


def mismatches(probes: Sequence[Probe]) -> list[Probe]:
    return [p for p in probes if p.outcome is Outcome.MISMATCH]


def unreachable(probes: Sequence[Probe]) -> list[Probe]:
    return [p for p in probes if p.outcome is Outcome.UNREACHABLE]
