"""Optional load signal from the backends themselves: each deployment's vLLM ``/metrics``
(``vllm:num_requests_running`` + ``vllm:num_requests_waiting``), polled in the background.

Why: the plugin's own in-flight counts see only this proxy's requests; with several gateway
replicas or clients calling vLLM directly, the backend's queue is the truth. The pool's load is
its deployments' running+waiting over their capacity (``model_info.max_in_flight``, else
``max_num_seqs``); readings older
than ``stale_after_seconds`` are ignored, so a dead scrape never pins a pool as busy or idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from litellm_dualpool.config import GroupSpec, PoolSpec, VllmMetricsConfig, deployment_capacity

logger = logging.getLogger("litellm_dualpool")

_LOAD_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def parse_vllm_load(text: str) -> int | None:
    """Running + waiting requests summed over all label sets; None when neither metric is there."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(_LOAD_METRICS):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in _LOAD_METRICS:
                try:
                    total += float(line.rsplit(" ", 1)[1])
                except (ValueError, IndexError):
                    continue
                seen = True
    return int(total) if seen else None


def metrics_url(api_base: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port/metrics``."""
    base = api_base.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/metrics"


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    capacity: int


class VllmLoadPoller:
    """Scrapes every deployment of the dual-pool groups; `load` is the engine's LoadSource."""

    def __init__(self, settings: VllmMetricsConfig, *, default_capacity: int,
                 client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._default_capacity = default_capacity
        self._client = client
        self._clock = clock
        self._targets: dict[tuple[str, str], list[_Target]] = {}
        self._readings: dict[str, tuple[float, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def set_targets(self, group: GroupSpec, deployments: Sequence[Mapping[str, Any]],
                    pool_of: Callable[[GroupSpec, Mapping[str, Any]], PoolSpec | None]) -> None:
        for pool in group.pools:
            self._targets[(group.model_group, pool.name)] = []
        for deployment in deployments:
            found = pool_of(group, deployment)
            api_base = (deployment.get("litellm_params") or {}).get("api_base")
            if found is None or not isinstance(api_base, str):
                continue
            pool = found
            capacity = deployment_capacity(deployment.get("model_info"), self._default_capacity,
                                           deployment.get("litellm_params"))
            self._targets[(group.model_group, pool.name)].append(
                _Target(metrics_url(api_base), capacity))

    def load(self, group: str, pool: PoolSpec) -> float | None:
        now, busy, capacity = self._clock(), 0, 0
        for target in self._targets.get((group, pool.name), ()):
            reading = self._readings.get(target.url)
            if reading is not None and now - reading[0] <= self.settings.stale_after_seconds:
                busy += reading[1]
                capacity += target.capacity
        return busy / capacity if capacity else None

    async def poll_once(self) -> None:
        urls = {t.url for targets in self._targets.values() for t in targets}
        client = self._client or httpx.AsyncClient(timeout=self.settings.timeout_seconds)
        try:
            results = await asyncio.gather(*(self._scrape(client, url) for url in sorted(urls)))
        finally:
            if self._client is None:
                await client.aclose()
        now = self._clock()
        for url, value in results:
            if value is not None:
                self._readings[url] = (now, value)

    async def _scrape(self, client: httpx.AsyncClient, url: str) -> tuple[str, int | None]:
        try:
            response = await client.get(url, timeout=self.settings.timeout_seconds)
            response.raise_for_status()
            return url, parse_vllm_load(response.text)
        except httpx.HTTPError as error:
            logger.debug("litellm-dualpool: cannot scrape %s: %s", url, error)
            return url, None

    def start(self) -> None:
        """Poll in the background of the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # the poller must outlive any one bad scrape
                logger.exception("litellm-dualpool: vLLM metrics poll failed")
            await asyncio.sleep(self.settings.interval_seconds)
