"""Who a request is from, as the core sees it: an opaque tenant id and how far its observations
are trusted. Resolving them from API keys and teams is :mod:`litellm_dualpool.tenancy`'s job."""

from __future__ import annotations

from enum import StrEnum

#: The tenant of requests that carry no key or team (a proxy without auth, the bare Router).
ANONYMOUS_TENANT = "anonymous"


class ObservationTrust(StrEnum):
    """How a tenant's finished requests feed the shared bytes-per-token state.

    trusted: always learned from (the operator's own applications).
    normal: learned from within the per-tenant influence limits (see state/guard.py).
    none: never learned from (public or unknown keys).
    """

    TRUSTED = "trusted"
    NORMAL = "normal"
    NONE = "none"
