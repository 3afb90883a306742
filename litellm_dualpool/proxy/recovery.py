"""Misroute recovery wired into LiteLLM's router: a hidden recovery group per dual-pool group and
a context-window fallback to it.

- Both versions have ``add_deployment`` and an assignable ``context_window_fallbacks``, which is
  how the hidden recovery group is wired in (a fallback to another group runs the filter again;
  a fallback to the same group does not, on either version).
- Both map a backend's 400 to ``ContextWindowExceededError`` (what ``context_window_fallbacks``
  act on) with ``ExceptionCheckers.is_error_str_context_window_exceeded``, a substring test.
  1.106 misses SGLang's current wording, both miss SGLang's "Input length ... maximum allowed
  length" and TGI's "must have less than": ``map_context_rejections`` adds the plugin's own,
  anchored recognition to it (it only ever adds; what LiteLLM maps stays mapped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from litellm_dualpool.proxy.rejections import parse_rejection_text

if TYPE_CHECKING:
    from litellm_dualpool.proxy.engine import DualPoolEngine

logger = logging.getLogger("litellm_dualpool")

#: model_info keys LiteLLM sets per deployment; a copy into the recovery group gets its own.
_PER_DEPLOYMENT_INFO = frozenset({"id", "db_model", "updated_at", "created_at"})


def _deployments(router: Any, model_name: str) -> list[dict[str, Any]]:
    found = router.get_model_list(model_name=model_name) or []
    return [d if isinstance(d, dict) else dict(d) for d in found]


def add_recovery_groups(router: Any, engine: DualPoolEngine) -> list[str]:
    """Add each dual-pool group's hidden recovery group (copies of its larger pools' deployments)
    and a context-window fallback from the group to it. Idempotent; returns the groups added."""
    from litellm.types.router import Deployment

    added = []
    existing = {d.get("model_name") for d in router.model_list or []}
    for recovery, name in engine.recovery_groups.items():
        group = engine.groups[name]
        if recovery in existing:
            continue
        for deployment in _deployments(router, name):
            pool = engine.pool_of(group, deployment)
            if pool is not None and pool.name == group.pools[0].name:
                continue  # (a deployment whose limit is not read yet is copied: it may be larger)
            info = {k: v for k, v in (deployment.get("model_info") or {}).items()
                    if k not in _PER_DEPLOYMENT_INFO}
            router.add_deployment(Deployment(model_name=recovery,
                                             litellm_params=dict(deployment["litellm_params"]),
                                             model_info=info))
        added.append(recovery)
    if added:
        router.context_window_fallbacks = _with_fallbacks(
            router.context_window_fallbacks, {engine.recovery_groups[r]: r for r in added})
    return added


def _with_fallbacks(current: Sequence[Mapping[str, Any]] | None,
                    wanted: Mapping[str, str]) -> list[dict[str, Any]]:
    """The user's context_window_fallbacks with each group's recovery group tried first."""
    result: list[dict[str, Any]] = []
    pending = dict(wanted)
    for entry in current or []:
        entry = dict(entry)
        for group, targets in list(entry.items()):
            if group in pending:
                recovery = pending.pop(group)
                entry[group] = [recovery, *[t for t in targets if t != recovery]]
        result.append(entry)
    result.extend({group: [recovery]} for group, recovery in pending.items())
    return result


def map_context_rejections() -> bool:
    """Make LiteLLM raise ``ContextWindowExceededError`` for every context-length rejection the
    plugin recognises (``rejections.parse_rejection_text``), so that the recovery group is
    reached for those it does not map itself. Idempotent; False (logged) where this LiteLLM has
    no such checker, and then those rejections are counted as misroutes but not recovered."""
    checkers: Any = None
    try:
        from litellm.litellm_core_utils import exception_mapping_utils

        checkers = getattr(exception_mapping_utils, "ExceptionCheckers", None)
    except ImportError:
        pass
    litellm_check = getattr(checkers, "is_error_str_context_window_exceeded", None)
    if not callable(litellm_check):
        logger.warning("litellm-dualpool: this LiteLLM has no context-window error checker; "
                       "SGLang's and TGI's rejections will not be recovered")
        return False
    if getattr(litellm_check, "_dualpool", False):
        return True
    def check(error_str: str) -> bool:
        return bool(litellm_check(error_str)) or (
            isinstance(error_str, str) and parse_rejection_text(error_str) is not None)

    check._dualpool = True  # type: ignore[attr-defined]  # a marker on the wrapper (idempotent install)
    checkers.is_error_str_context_window_exceeded = staticmethod(check)
    return True
