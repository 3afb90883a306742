"""Misroute recovery when the larger pool itself fails, through the real proxy on emulated pools.

A cold plugin takes base64 for prose (4 bytes/token where it takes ~1.4) and sends 12 KB of it to
the 4096-token pool, whose context-length 400 sends it on to the hidden recovery group. There:
- the long pool fails once: LiteLLM's retry of the recovery hop is served by the long pool (the
  plan keeps naming the pool that rejected it, so the retry does not look for a pool larger
  than the long one);
- the long pool is down: the client gets a 5xx saying that the larger pool failed, not a 400
  "no larger pool", and no message names the hidden group.
Each case has a model group of its own, so each starts cold.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from plugin_stack import Proxy
from reliability_stack import deployment, proxy_config, start_proxies, total

from litellm_dualpool.emulator.testing import RunningEmulator, start_emulators

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHORT_LEN, LONG_LEN = 4096, 32768
GROUPS = ("once", "errors", "refused")


@dataclass
class Fleet:
    proxy: Proxy
    short: dict[str, RunningEmulator]
    long: dict[str, RunningEmulator]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("recovery")
    flags: list[dict[str, Any]] = []
    for _ in GROUPS:
        for limit in (SHORT_LEN, LONG_LEN):
            flags.append({"instant": True, "max_model_len": limit, "seed": len(flags),
                          "output_len_dist": "fixed:8"})
    with start_emulators(*flags) as emulators:
        rest = iter(emulators)
        short, long, models = {}, {}, []
        for group in GROUPS:
            short[group], long[group] = next(rest), next(rest)
            models += [deployment(group, short[group], SHORT_LEN),
                       deployment(group, long[group], LONG_LEN)]
        config = proxy_config(models, dualpool_settings={"default_output_tokens": 64},
                              router_settings={"num_retries": 2, "timeout": 5, "retry_after": 0})
        with start_proxies([config], logs) as (proxy,):
            yield Fleet(proxy, short, long)


def misrouted_blob() -> str:
    """~8.5K real tokens that a cold plugin estimates at ~3.7K (see the module's docstring)."""
    return base64.b64encode(random.Random(7).randbytes(9000)).decode()


def test_a_retry_of_the_recovery_hop_stays_in_the_long_pool(fleet: Fleet) -> None:
    long = fleet.long["once"]
    long.set_faults(fail_next=1)
    response = fleet.proxy.chat("once", misrouted_blob(), max_tokens=16)
    assert response.status_code == 200, response.text
    assert response.headers.get("x-litellm-model-api-base") == long.openai_base_url
    assert long.faults()["fail_next"] == 0  # the long pool did fail once first
    metrics = fleet.proxy.metrics()
    assert total(metrics, "dualpool_misroutes_total", model_group="once") == 1
    assert total(metrics, "dualpool_misroutes_recovered_total", model_group="once",
                 from_pool="short", to_pool="long") == 1


@pytest.mark.parametrize(("group", "faults"), [
    ("errors", {"error_rate": 1.0}),
    ("refused", {"refuse": "connection", "refuse_seconds": 30}),
])
def test_a_recovery_whose_long_pool_is_down_answers_5xx(fleet: Fleet, group: str,
                                                        faults: dict[str, Any]) -> None:
    fleet.long[group].set_faults(**faults)
    response = fleet.proxy.chat(group, misrouted_blob(), max_tokens=16)
    message = response.json()["error"]["message"]
    assert response.status_code == 503, message
    assert "larger pool 'long' failed" in message
    assert "no larger pool" not in message
    assert "dualpool-recovery" not in response.text
