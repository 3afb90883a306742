"""Pool limits read from the backends while the proxy starts, and retried for those that did
not answer (limits.py says what an answer means, limits_fetch.py asks).

At start every deployment of a dual-pool group that names an ``api_base`` is asked once, all in
parallel, bounded by ``discovery.timeout_seconds``:

- no ``model_info.max_model_len``: the backend's limit places the deployment in its pool;
- a configured one the backend contradicts: a warning naming both values (the configured one
  is used), or, with ``on_mismatch: error``, the proxy does not start;
- no answer where one was needed: the deployment is left out of routing (the plugin never sends
  it a request) with an error in the log, and asked again every ``retry_seconds``; it joins its
  pool once read. A group that cannot form two pools without it stops the start instead,
  naming the deployments: a gateway cannot route a model it cannot split.

LiteLLM 1.106+ reads the same ``/v1/models`` for its own model info (``max_tokens``/
``max_input_tokens`` in ``/model/info``, refreshed every 5 minutes); this does not touch it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from litellm_dualpool.config import PluginConfig, load_plugin_config
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.limits import LimitTarget, Outcome, Probe, limit_targets
from litellm_dualpool.limits_fetch import fetch_limits

logger = logging.getLogger("litellm_dualpool")

Fetch = Callable[..., list[Probe]]


class LimitDiscovery:
    """The limits read so far for one LiteLLM config, and how to rebuild the plugin's view of it
    when more are read."""

    def __init__(self, raw: Mapping[str, Any], config: PluginConfig, *,
                 fetch: Fetch = fetch_limits) -> None:
        self.raw = raw
        self.config = config
        self.settings = config.settings.discovery
        self.discovered: dict[int, int] = {}
        self._fetch = fetch

    def _targets(self, only: Sequence[int] | None = None) -> list[LimitTarget]:
        groups = [*self.config.groups, *self.config.waiting_groups]
        return limit_targets(self.raw.get("model_list"), groups, only=only)

    def start(self) -> tuple[PluginConfig, list[Probe]]:
        """Ask every deployment once; the config with what was read (ConfigError where the
        plugin cannot start: a mismatch with ``on_mismatch: error``, or a group left without
        two pools)."""
        probes = self._fetch(self._targets(), timeout_seconds=self.settings.timeout_seconds)
        wrong = [p for p in probes if p.outcome is Outcome.MISMATCH]
        for probe in wrong:
            logger.warning("litellm-dualpool: %s (the configured value is used)", probe.describe())
        if wrong and self.settings.on_mismatch == "error":
            raise ConfigError(
                "pool limits disagree with the backends (dualpool_settings.discovery.on_mismatch "
                "is error): " + "; ".join(p.describe() for p in wrong),
                path=f"{wrong[0].target.path}.model_info.max_model_len")
        for probe in probes:
            if probe.outcome is Outcome.UNREACHABLE and probe.target.configured is not None:
                logger.warning("litellm-dualpool: %s; the configured value is used unchecked",
                               probe.describe())
        self._take(probes)
        config = self._rebuild()
        if config.waiting_groups:
            missing = [p.describe() for p in probes if p.outcome is Outcome.UNREACHABLE
                       and p.target.model_group in config.waiting_groups]
            raise ConfigError(
                f"model group(s) {', '.join(map(repr, config.waiting_groups))} cannot form two "
                "pools: the limits of their deployments without model_info.max_model_len could "
                "not be read from the backends (start them first, or set max_model_len): "
                + "; ".join(missing), path=config.source)
        for pending in config.pending:
            found = next((p for p in probes if p.target.index == pending.index), None)
            logger.error("litellm-dualpool: %s; this deployment takes no traffic until its limit "
                         "is read (retried every %g s)",
                         found.describe() if found else pending.path, self.settings.retry_seconds)
        self.config = config
        return config, probes

    def _take(self, probes: Sequence[Probe]) -> None:
        for probe in probes:
            if probe.outcome is Outcome.DISCOVERED and probe.discovered is not None:
                self.discovered[probe.target.index] = probe.discovered

    def _rebuild(self) -> PluginConfig:
        return load_plugin_config(self.raw, source=self.config.source, discovered=self.discovered)

    def retry(self) -> PluginConfig | None:
        """Ask the pending deployments again; the new config when any limit was read."""
        pending = [p.index for p in self.config.pending]
        if not pending:
            return None
        probes = self._fetch(self._targets(only=pending),
                             timeout_seconds=self.settings.timeout_seconds)
        before = dict(self.discovered)
        self._take(probes)
        if self.discovered == before:
            return None
        try:
            config = self._rebuild()
        except ConfigError as error:  # e.g. its limit and its pool label contradict the others
            self.discovered = before
            logger.error("litellm-dualpool: limits read later cannot be used: %s", error)
            return None
        for probe in probes:
            if probe.outcome is Outcome.DISCOVERED:
                logger.warning("litellm-dualpool: %s; the deployment now takes traffic",
                               probe.describe())
        self.config = config
        return config

    async def run_retries(self, on_update: Callable[[PluginConfig], None]) -> None:
        """Retry every ``retry_seconds`` while deployments are pending."""
        while self.config.pending:
            await asyncio.sleep(self.settings.retry_seconds)
            try:
                config = await asyncio.to_thread(self.retry)
            except Exception:  # never let the retry loop die with the proxy still up
                logger.exception("litellm-dualpool: retrying pool limits failed")
                continue
            if config is not None:
                on_update(config)
