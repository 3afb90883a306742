"""Fixtures of the multi-worker / multi-tenant tests (helpers live in plain modules beside it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import PrivateRedis, private_redis, shared_prefix


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh key prefix on the machine's Redis (127.0.0.1:6379), deleted afterwards."""
    with shared_prefix(request.node.name[:40]) as value:
        yield value


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own on a free port (the test may stop and restart it)."""
    with private_redis(tmp_path) as server:
        yield server
