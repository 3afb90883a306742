"""The HTTP of limit discovery (limits.py decides what the answers mean): every target's
``GET /v1/models`` at once, each bounded by one timeout and `limits.MAX_RESPONSE_BYTES`.

Synchronous on purpose: the proxy asks while it builds the plugin, before it serves anything
(its event loop is not ours to block), and ``check-config --probe`` is a command. Threads keep
the whole round to about one timeout however many deployments there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from litellm_dualpool.limits import (
    MAX_RESPONSE_BYTES,
    LimitError,
    LimitTarget,
    Probe,
    parse_models_body,
)

#: Backends asked at the same time.
MAX_PARALLEL = 16


def fetch_limit(target: LimitTarget, *, timeout_seconds: float,
                client: httpx.Client | None = None) -> Probe:
    """Ask one backend; a Probe with the limit, or with the reason it has none."""
    try:
        own = client is None
        http = client or httpx.Client(timeout=timeout_seconds, follow_redirects=False)
        try:
            with http.stream("GET", target.url, headers=target.headers(),
                             timeout=timeout_seconds) as response:
                if response.status_code != 200:
                    return Probe(target, None, f"GET {target.url} answered HTTP {response.status_code}")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise LimitError(f"model list larger than {MAX_RESPONSE_BYTES} bytes")
        finally:
            if own:
                http.close()
        return Probe(target, parse_models_body(body, target.served_model))
    except LimitError as error:
        return Probe(target, None, str(error))
    except httpx.TimeoutException:
        return Probe(target, None, f"no answer from {target.url} within {timeout_seconds:g} s")
    except httpx.HTTPError as error:
        return Probe(target, None, f"GET {target.url} failed: {type(error).__name__}: {error}")


def fetch_limits(targets: Sequence[LimitTarget], *, timeout_seconds: float) -> list[Probe]:
    """Ask every target in parallel; the probes in the targets' order."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets))) as pool:
        return list(pool.map(lambda t: fetch_limit(t, timeout_seconds=timeout_seconds), targets))
