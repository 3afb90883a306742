"""bench/profile_plugin.py measures the tier each scenario names: far pools decide by bytes
alone, the issue's 8,192 pool puts the settled 32 KB request in the near tier, a short pool at
the body's exact budget makes it ambiguous, and there the stub answers as vLLM's /tokenize so
that every request is arbitrated (not sent to an address where nothing listens)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import profile_plugin  # noqa: E402


def _measure(size: str, scenario: str) -> dict[str, Any]:
    # 600 warm-up requests: the key settles (512 observations), as in the bench's default
    return asyncio.run(profile_plugin.measure(size, 32, None, "admin", 600, scenario))


def test_far_scenario_decides_every_size_by_bytes_alone() -> None:
    for size, pool in (("32KB", "short"), ("256KB", "long")):
        result = _measure(size, "far")
        assert result["tiers"] == {"far": 32.0}
        assert result["pools"] == {pool: 32}
        assert result["arbitrations"] == {} and result["callback_errors"] == 0


def test_near_scenario_is_the_issue_pools_32kb_case() -> None:
    result = _measure("32KB", "near")
    assert result["pool_limits"] == [8192, 131072]
    assert result["tiers"] == {"near": 32.0}
    assert result["arbitrations"] == {}


def test_ambiguous_scenarios_arbitrate_only_with_the_stub() -> None:
    off = _measure("32KB", "ambiguous-off")
    assert off["tiers"] == {"ambiguous": 32.0} and off["arbitrations"] == {}
    stub = _measure("32KB", "ambiguous-stub")
    assert stub["pool_limits"] == off["pool_limits"] and stub["pool_limits"][0] < 8192
    assert stub["tiers"] == {"ambiguous": 32.0}
    assert stub["arbitrations"] == {"exact": 32.0}  # every one answered, none failed
    assert stub["callback_errors"] == 0
