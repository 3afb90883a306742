"""The LiteLLM callback: plan in the proxy's pre-call hook, narrow to a pool in
``async_filter_deployments`` (the gateway's own routing_strategy then picks inside the pool),
learn in the success event and in the streaming iterator, count misroutes in the failure event.

Hooks used (same on LiteLLM 1.106 and 1.110):
- ``async_pre_call_hook`` (proxy, once per request): estimate + decide (an ambiguous request
  asks the smaller pool's /tokenize first, proxy/arbitration.py), keep the plan in the
  request metadata, refuse what fits no pool with OpenAI's context-length 400
  (``code: context_length_exceeded``, proxy/client_errors.py).
- ``async_filter_deployments`` (every attempt, fallback hops included): keep the planned pool;
  on the hidden recovery group, the next larger pool.
- ``async_log_success_event`` / ``async_log_failure_event`` (every attempt): close in-flight
  counts, learn from usage reported by the backend, learn from a context-length rejection.
- ``async_post_call_streaming_iterator_hook`` (proxy streams): learn from the backend's own
  usage chunk when the stream ends. LiteLLM counts tokens itself (another tokenizer) when a
  backend sends none, so the usage it logs for a stream cannot be trusted; the raw chunks can.
- ``async_post_call_failure_hook`` (proxy, once per failed request): close its in-flight count.
- ``async_post_call_response_headers_hook``: ``x-dualpool-pool``, ``x-dualpool-count``
  (estimated | exact | arbitrated); ``x-dualpool-budget-tokens`` where the caller's policy
  exposes it (the proxy admin's by default).
- ``async_filter_listed_models``: hide the recovery groups from ``/v1/models``.

Only the pre-call hook and the filter may fail a request, and only with the plugin's own 400
(no pool fits; a body it cannot shape) or 403 (malformed tenant policy); everything else
catches at its boundary, logs and counts ``dualpool_callback_errors_total``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from litellm_dualpool.config import PluginConfig, load_plugin_config, read_yaml
from litellm_dualpool.core.affinity import session_id_of
from litellm_dualpool.core.calibration import Calibrator
from litellm_dualpool.core.plan import RecoveryFailure
from litellm_dualpool.core.tenant import ObservationTrust
from litellm_dualpool.errors import ConfigError, InvalidRequestError, NoPoolFitsError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.arbitration import Arbiter
from litellm_dualpool.proxy.backend_limits import LimitDiscovery
from litellm_dualpool.proxy.discovery import proxy_config_path, proxy_router
from litellm_dualpool.proxy.engine import DualPoolEngine, LoadSource
from litellm_dualpool.proxy.inflight import InFlight
from litellm_dualpool.proxy.install import install
from litellm_dualpool.proxy.policy import (
    PolicyResolver,
    TenantPolicy,
    TenantPolicyError,
    resolve_policy,
)
from litellm_dualpool.proxy.record import STASH_KEY, PlanRecord, record_in
from litellm_dualpool.proxy.rejections import parse_context_rejection
from litellm_dualpool.proxy.vllm_load import VllmLoadPoller
from litellm_dualpool.state import StateStore, build_store

logger = logging.getLogger("litellm_dualpool")

#: How long the start-up task waits for the proxy to build its router.
_ROUTER_WAIT_SECONDS = 120.0
_ROUTER_POLL_SECONDS = 0.05
HEADER_POOL = "x-dualpool-pool"
HEADER_BUDGET = "x-dualpool-budget-tokens"
HEADER_COUNT = "x-dualpool-count"
#: The answer to a direct call of a hidden recovery group; it names no internal group.
_RESERVED_NAME_MESSAGE = ("this model name is reserved for the plugin's internal routing; call "
                          "the model group itself")


def _metadata(container: dict[str, Any] | None, *, create: bool) -> dict[str, Any] | None:
    """The request's metadata dict (``litellm_metadata`` on the routes that use it)."""
    if container is None:
        return None
    key = "litellm_metadata" if isinstance(container.get("litellm_metadata"), dict) else "metadata"
    found = container.get(key)
    if isinstance(found, dict):
        return found
    if create:
        created: dict[str, Any] = {}
        container[key] = created
        return created
    return None


def _read_metadata(container: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The request's metadata for reading (no copy of the request: the filter runs on every
    attempt, and copying LiteLLM's ~30-key kwargs twice per call showed in its profile)."""
    if not container:
        return {}
    found = container.get("litellm_metadata")
    if not isinstance(found, dict):
        found = container.get("metadata")
    return found if isinstance(found, dict) else {}


def _event_record(kwargs: Mapping[str, Any]) -> tuple[PlanRecord | None, Mapping[str, Any]]:
    params = kwargs.get("litellm_params") or {}
    for key in ("metadata", "litellm_metadata"):
        record = record_in(params.get(key))
        if record is not None:
            return record, params.get("model_info") or {}
    return None, {}


def _prompt_tokens(usage: Any) -> int | None:
    if usage is None:
        return None
    # LiteLLM's Usage (an object) first: isinstance(x, Mapping) of a non-mapping walks the ABC's
    # registry (~1 us per success event)
    value = usage.get("prompt_tokens") if type(usage) is dict or (
        not hasattr(usage, "prompt_tokens") and isinstance(usage, Mapping)) else getattr(
        usage, "prompt_tokens", None)
    return value if type(value) is int and value > 0 else None


def backend_prompt_tokens(kwargs: Mapping[str, Any], response: Any) -> int | None:
    """A non-streaming response's prompt tokens, if the backend's own body carried usage."""
    tokens = _prompt_tokens(getattr(response, "usage", None))
    raw = kwargs.get("original_response")
    if isinstance(raw, bytes) and b"prompt_tokens" not in raw:
        return None
    if isinstance(raw, str) and "prompt_tokens" not in raw:
        return None
    if isinstance(raw, Mapping) and "usage" not in raw:
        return None
    return tokens


def stream_prompt_tokens(stream: Any) -> int | None:
    """The prompt tokens of the last usage chunk the backend itself sent in `stream`."""
    for chunk in reversed(getattr(stream, "chunks", None) or ()):
        usage = chunk.get("usage") if isinstance(chunk, Mapping) else getattr(chunk, "usage", None)
        tokens = _prompt_tokens(usage)
        if tokens is not None:
            return tokens
    return None


def failed_deployment_ids(request_kwargs: Mapping[str, Any] | None) -> frozenset[str]:
    """Deployments that already failed this request: LiteLLM's retry breadcrumbs
    (``metadata.previous_models``, written before the retry is routed; absent on a first try)."""
    crumbs = _read_metadata(request_kwargs).get("previous_models")
    if not isinstance(crumbs, list | tuple):
        return frozenset()
    return frozenset(c["deployment_id"] for c in crumbs
                     if isinstance(c, Mapping) and isinstance(c.get("deployment_id"), str))


def last_failure_text(request_kwargs: Mapping[str, Any] | None) -> str | None:
    """The error text of the attempt that failed last (``exception_string`` of LiteLLM's last
    retry breadcrumb, recorded before a retry or fallback hop is routed), or None."""
    crumbs = _read_metadata(request_kwargs).get("previous_models")
    if not crumbs:  # a first attempt
        return None
    last = crumbs[-1] if isinstance(crumbs, list | tuple) else None
    text = last.get("exception_string") if isinstance(last, Mapping) else None
    return text if isinstance(text, str) else None


#: The call types whose bodies are vLLM's chat or completions shapes (/tokenize takes them);
#: Anthropic Messages, Responses and embeddings are not arbitrated.
_ARBITRATED_CALL_TYPES = frozenset({"completion", "acompletion", "text_completion",
                                    "atext_completion"})


#: LiteLLM's mark on a session id it generated for one request (``general_settings.
#: missing_session_id: generate``): such an id names no conversation (constants.py, 1.106/1.110).
_SESSION_ID_GENERATED = "litellm_session_id_generated"


def request_session_id(data: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> str | None:
    """The caller's conversation id as LiteLLM's proxy records it: ``metadata.session_id``
    (from the ``x-litellm-session-id`` header or the body's metadata), else the body's
    ``litellm_session_id``; None when absent or generated for this request alone."""
    found = session_id_of(metadata, _SESSION_ID_GENERATED)
    if found is not None or (metadata or {}).get(_SESSION_ID_GENERATED):
        return found
    value = data.get("litellm_session_id")
    return value[:256] if isinstance(value, str) and value else None


#: The call types of OpenAI chat completions, whose user content parts LiteLLM validates.
_CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})


@functools.cache
def _valid_user_part_types() -> Any:
    """LiteLLM's list of user content part types (imported once: an import statement per
    request costs ~1 us)."""
    from litellm.types.llms.openai import ValidUserMessageContentTypes

    return ValidUserMessageContentTypes


def _permission_denied(message: str, model: str) -> Exception:
    """LiteLLM's 403 (its exceptions want an httpx response to carry the status)."""
    import httpx
    import litellm

    response = httpx.Response(403, request=httpx.Request("POST", "http://litellm-dualpool"))
    error: Exception = litellm.PermissionDeniedError(
        message=message, llm_provider="litellm_dualpool", model=model, response=response)
    return error


def check_user_parts(data: Mapping[str, Any], call_type: Any = "acompletion") -> None:
    """InvalidRequestError for a user content part of a type LiteLLM's own message validation
    refuses (it answers those with a 500 after its retries; the plugin refuses them with a 400).

    Chat completions only: that validation is OpenAI's list of part types. Anthropic's
    ``/v1/messages`` (call type ``anthropic_messages``) has its own blocks (``tool_result``,
    ``image``, ``document``, ``thinking``, ...), which LiteLLM translates and serves (unknown
    ones it drops): no check there, nor for other call types."""
    if str(getattr(call_type, "value", call_type)) not in _CHAT_CALL_TYPES:
        return
    messages = data.get("messages")
    if not isinstance(messages, list):
        return
    valid = _valid_user_part_types()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") not in valid:
                raise InvalidRequestError(f"content part type {str(part.get('type'))[:64]!r} is "
                                          "not supported", field=f"messages[{i}].content[{j}].type")


class DualPoolCallback(CustomLogger):  # type: ignore[misc]  # LiteLLM is not followed by mypy (Any base)
    """The plugin as LiteLLM sees it. Build it with a PluginConfig; the proxy's YAML names the
    module-level instance built by `from_proxy_environment`."""

    def __init__(self, config: PluginConfig, *, metrics: DualPoolMetrics | None = None,
                 engine: DualPoolEngine | None = None, policy_resolver: PolicyResolver = resolve_policy,
                 router_provider: Callable[[], Any | None] = proxy_router,
                 load_source: LoadSource | None = None, inflight: InFlight | None = None,
                 store: StateStore | None = None, discovery: LimitDiscovery | None = None) -> None:
        super().__init__()
        polling = config.settings.spillover.vllm_metrics
        self.poller = VllmLoadPoller(
            polling, default_capacity=config.settings.spillover.default_max_in_flight_per_deployment
        ) if polling.enabled else None
        if load_source is None and self.poller is not None:
            load_source = self.poller.load
        self.engine = engine or DualPoolEngine(config, metrics=metrics, load_source=load_source,
                                               inflight=inflight, store=store)
        self.settings = config.settings
        self.metrics = self.engine.metrics
        self.policy_resolver = policy_resolver
        self.router_provider = router_provider
        self._prepared_router: Any | None = None
        self._startup_task: asyncio.Task[None] | None = None
        self._state_started = False
        self._state_task: asyncio.Task[None] | None = None
        #: limits read from the backends; retried for the deployments still pending
        self.discovery = discovery
        self._limits_task: asyncio.Task[None] | None = None
        #: exact counts for ambiguous requests (proxy/arbitration.py); None when disabled
        self.arbiter = (Arbiter(config.settings.arbitration, self.metrics)
                        if config.settings.arbitration.enabled else None)

    @classmethod
    def from_proxy_environment(cls, *, metrics: DualPoolMetrics | None = None) -> DualPoolCallback:
        """Validate the proxy's YAML and build the plugin; ConfigError (aborting the proxy's
        start) when the file cannot be found or is invalid."""
        path = proxy_config_path()
        if path is None:
            raise ConfigError("litellm-dualpool cannot find the proxy's config file: start the "
                              "proxy with --config FILE or set LITELLM_DUALPOOL_CONFIG")
        raw = read_yaml(path)
        config = load_plugin_config(raw, source=path)
        discovery = None
        if config.settings.discovery.enabled:
            discovery = LimitDiscovery(raw, config)
            config, _ = discovery.start()  # bounded: one timeout for all backends
        if not config.groups:
            raise ConfigError("no model group declares pools: set model_info.max_model_len (or "
                              "model_info.pool, the limit then read from the backend) on the "
                              "deployments of at least one model group", path=path)
        metrics = metrics or DualPoolMetrics()
        store = build_store(config.settings.state,
                            Calibrator(config.settings.calibration.to_core()), metrics=metrics,
                            router_settings=config.router_settings)
        store.restore_blocking()  # learned state before the first request (bounded wait)
        plugin = cls(config, metrics=metrics, store=store, discovery=discovery)
        plugin.count_pending(config)
        plugin.start_preparing()
        groups = ", ".join(f"{g.model_group}: " + " < ".join(
            f"{p.name}({p.max_model_len})" for p in g.pools) for g in config.groups.values())
        logger.warning("litellm-dualpool: routing %s", groups)
        return plugin

    # -- router preparation ----------------------------------------------------------------
    def start_preparing(self) -> None:
        """In a running event loop (the proxy's start-up), prepare the router once it exists."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._startup_task = loop.create_task(self._prepare_when_ready())
        if self.discovery is not None and self.discovery.config.pending:
            self._limits_task = loop.create_task(self.discovery.run_retries(self.limits_updated))

    def limits_updated(self, config: PluginConfig) -> None:
        """More limits were read from the backends: rebuild the pools and map the router's
        deployments that can now take traffic."""
        self.engine.update_config(config)
        if self._prepared_router is not None:
            self._map_deployments(self._prepared_router)
        self.count_pending(config)

    def count_pending(self, config: PluginConfig) -> None:
        """``dualpool_deployments_without_limit`` per dual-pool group."""
        for name in config.groups:
            self.metrics.deployments_without_limit.labels(name).set(
                sum(p.model_group == name for p in config.pending))

    async def _prepare_when_ready(self) -> None:
        waited = 0.0
        while waited < _ROUTER_WAIT_SECONDS:
            if self.ensure_prepared():
                return
            await asyncio.sleep(_ROUTER_POLL_SECONDS)
            waited += _ROUTER_POLL_SECONDS

    def ensure_prepared(self) -> bool:
        """Prepare the proxy's current router if not done yet (it may be rebuilt at run time)."""
        self._start_state()
        router = self.router_provider()
        if router is None:
            return False
        if router is not self._prepared_router:
            self.prepare(router)
        return True

    def _start_state(self) -> None:
        """Start the state store's background sync once, in the proxy's event loop."""
        if self._state_started:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._state_started = True
        self._state_task = loop.create_task(self.engine.store.start())

    def _map_deployments(self, router: Any) -> None:
        """The router's deployments whose limit was read from their backend, by id (the
        hidden recovery copies included); the poller's targets follow."""
        if self.engine.config.discovered_limits:
            self.engine.learn_deployment_ids(
                d if isinstance(d, dict) else dict(d) for d in router.model_list or [])
        if self.poller is not None:
            for name, group in self.engine.groups.items():
                deployments = [dict(d) for d in router.get_model_list(model_name=name) or []]
                self.poller.set_targets(group, deployments, self.engine.pool_of)

    def prepare(self, router: Any) -> None:
        self._map_deployments(router)  # the recovery copies take the pools of their originals
        install(router, self)
        self._prepared_router = router
        self._map_deployments(router)  # again, for the copies install() added
        if self.poller is not None:
            try:
                self.poller.start()
            except RuntimeError:  # no running loop (a bare Router in synchronous code)
                logger.warning("litellm-dualpool: vLLM metrics polling needs a running event loop")

    # -- hooks -----------------------------------------------------------------------------
    def _count_error(self, hook: str, error: BaseException) -> None:
        self.metrics.callback_errors.labels(hook).inc()
        logger.exception("litellm-dualpool: %s failed (request continues): %s", hook, error)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        try:
            self.ensure_prepared()
            self.check_model_name(data.get("model"))
            group = self.engine.groups.get(data.get("model"))  # type: ignore[arg-type]  # a client's model: any JSON value
            metadata = _metadata(data, create=group is not None)
            if metadata is not None:
                metadata.pop(STASH_KEY, None)  # never trust a client-sent plan
            if group is None or metadata is None:
                return data
            check_user_parts(data, call_type)
            policy = self.policy_resolver(user_api_key_dict, self.settings)
            user_metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            record = self.engine.plan(data, group, policy, metadata=user_metadata,
                                      embedding="embed" in str(call_type),
                                      stream=bool(data.get("stream")),
                                      session_id=request_session_id(data, metadata))
            if (record.plan.arbiter_pool is not None and self.arbiter is not None
                    and str(getattr(call_type, "value", call_type)) in _ARBITRATED_CALL_TYPES):
                record = await self.arbitrate(record, data, group)
            if record.plan.arbiter_pool is not None:  # no exact count: the estimate's pool pins
                self.engine.pin_estimated(record)
            metadata[STASH_KEY] = record
        except NoPoolFitsError as error:  # OpenAI's context-length 400 (client_errors.py)
            from litellm_dualpool.proxy.client_errors import refusal_error

            headers = ({HEADER_BUDGET: str(error.budget_tokens)}
                       if self.settings.response_headers and self._exposes_budget(user_api_key_dict)
                       else None)
            raise refusal_error(error, headers=headers) from None
        except InvalidRequestError as error:
            # A body the plugin cannot shape breaks the OpenAI schema (LiteLLM would pass it on
            # and answer some of these with a 500): refuse it here, naming the field.
            from fastapi import HTTPException

            raise HTTPException(status_code=400, detail={
                "error": f"litellm-dualpool: invalid request: {error}"}) from None
        except TenantPolicyError as error:  # the key's/team's dualpool_policy is malformed
            from fastapi import HTTPException

            raise HTTPException(status_code=403, detail={
                "error": f"litellm-dualpool: invalid tenant policy: {error}"}) from None
        except Exception as error:
            self._count_error("pre_call", error)
        return data

    async def arbitrate(self, record: PlanRecord, data: Mapping[str, Any],
                        group: Any) -> PlanRecord:
        """An AMBIGUOUS request's record decided by the smaller pool's exact count, or the
        estimate's record when no count came (proxy/arbitration.py), also when arbitration
        itself fails (counted as a callback error of hook "arbitration"). NoPoolFitsError
        when the exact count fits no pool."""
        arbiter = self.arbiter
        pool = record.plan.arbiter_pool
        router = self.router_provider()
        if arbiter is None or pool is None or router is None:
            return record
        try:
            deployments = [d for d in router.get_model_list(model_name=group.model_group) or []
                           if (spec := self.engine.pool_of(group, d)) is not None
                           and spec.name == pool]
            _, count = await arbiter.count(group.model_group, deployments, data)
            if count is None:
                return record
            return self.engine.arbitrated(record, count)
        except NoPoolFitsError:
            raise
        except Exception as error:
            self._count_error("arbitration", error)
            return record

    async def async_filter_deployments(self, model: str, healthy_deployments: list[dict[str, Any]],
                                       messages: Any, request_kwargs: dict[str, Any] | None = None,
                                       parent_otel_span: Any = None) -> list[dict[str, Any]]:
        return self.narrow(model, healthy_deployments, messages, request_kwargs)

    def narrow(self, model: str, deployments: list[dict[str, Any]], messages: Any,
               request_kwargs: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The deployments of the pool this request's plan names (the filter's work, also the
        routing strategy's on LiteLLM's synchronous path). The plugin's refusals become
        LiteLLM's 400 (403 for a malformed tenant policy); any other error is counted and
        leaves the list as it was."""
        try:
            group = self.engine.group_for(model)
            if group is None or not deployments:
                return deployments
            record = self.plan_for_filter(group, messages, request_kwargs,
                                          recovery=model in self.engine.recovery_groups)
            if record is None:
                return deployments
            return self.engine.choose(model, deployments, record,
                                      failed_deployment_ids(request_kwargs),
                                      last_failure=last_failure_text(request_kwargs))
        except (NoPoolFitsError, InvalidRequestError) as error:
            import litellm

            raise litellm.BadRequestError(message=str(error), model=self._public_name(model),
                                          llm_provider="litellm_dualpool") from None
        except TenantPolicyError as error:
            raise _permission_denied(f"litellm-dualpool: invalid tenant policy: {error}",
                                     self._public_name(model)) from None
        except Exception as error:
            self._count_error("filter", error)
            return deployments

    def plan_for_filter(self, group: Any, messages: Any, request_kwargs: dict[str, Any] | None,
                        *, recovery: bool = False) -> PlanRecord | None:
        """The pre-call hook's plan; else (a model alias, a bare Router) a plan made here with the
        caller's own policy. A recovery group is never planned here: it is reachable only as
        the fallback hop of a request that carries a plan (InvalidRequestError otherwise)."""
        if request_kwargs is None:
            return None
        metadata = _metadata(request_kwargs, create=True)
        if metadata is None:
            return None
        record = record_in(metadata)
        if record is not None:
            return record
        if recovery:
            raise InvalidRequestError(_RESERVED_NAME_MESSAGE, field="model")
        body = dict(request_kwargs)
        if messages is not None:
            body["messages"] = messages
        try:
            record = self.engine.plan(body, group, self.caller_policy(metadata), metadata=metadata,
                                      stream=bool(request_kwargs.get("stream")),
                                      session_id=request_session_id(request_kwargs, metadata))
        except InvalidRequestError:
            return None
        metadata[STASH_KEY] = record
        return record

    def caller_policy(self, metadata: Mapping[str, Any]) -> TenantPolicy:
        """The policy of whoever sent a request that reached the router without the pre-call
        hook's plan: from LiteLLM's own auth object in the metadata (a client cannot send one:
        JSON makes no UserAPIKeyAuth). In a proxy without one, the most restrictive default
        (the default policy, no overrides, observations untrusted); outside a proxy (a bare
        Router: the operator's own code) the anonymous caller's policy."""
        auth = metadata.get("user_api_key_auth")
        if auth is not None and type(auth).__name__ == "UserAPIKeyAuth":
            return self.policy_resolver(auth, self.settings)
        anonymous = self.policy_resolver(None, self.settings)
        if self.router_provider() is None:
            return anonymous
        return dataclasses.replace(anonymous, allow_force_pool=False, allow_category=False,
                                   observation_trust=ObservationTrust.NONE)

    def check_model_name(self, model: object) -> None:
        """InvalidRequestError for a name the plugin cannot route with the caller's policy: a
        hidden recovery group called directly, or a comma-separated list (LiteLLM's batch
        route, where no plan is made per model) that names a dual-pool group."""
        if not isinstance(model, str):
            return
        names = [name.strip() for name in model.split(",")] if "," in model else [model]
        if any(name in self.engine.recovery_groups for name in names):
            raise InvalidRequestError(_RESERVED_NAME_MESSAGE, field="model")
        if len(names) > 1:
            routed = sorted({name for name in names if name in self.engine.groups})
            if routed:
                raise InvalidRequestError(
                    f"a comma-separated model list cannot include a dual-pool model group "
                    f"({', '.join(map(repr, routed))}); send one request per model",
                    field="model")

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        try:
            record, model_info = _event_record(kwargs)
            if record is None:
                return
            streamed = bool(kwargs.get("stream")) or record.progress.stream
            tokens = None if streamed else backend_prompt_tokens(kwargs, response_obj)
            self.engine.on_success(record, model_info, tokens)
        except Exception as error:
            self._count_error("success", error)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        try:
            record, model_info = _event_record(kwargs)
            if record is not None:
                self.engine.on_failure(record, model_info, kwargs.get("exception"))
        except Exception as error:
            self._count_error("failure", error)

    async def log_failure_fallback_event(self, original_model_group: str, kwargs: dict[str, Any],
                                         original_exception: Exception) -> None:
        """A fallback hop failed for good (LiteLLM awaits this before it answers, on both
        versions; the attempts' failure events are logged once per request, so they do not see
        it). On the recovery hop: remember whether the larger pool rejected the request for its
        length, from the hop's last exception in the request's logging object."""
        try:
            if kwargs.get("model") not in self.engine.recovery_groups:
                return
            record = record_in(_metadata(kwargs, create=False))
            if record is None:
                return
            details = getattr(kwargs.get("litellm_logging_obj"), "model_call_details", None)
            latest = details.get("exception") if isinstance(details, dict) else None
            rejected = (isinstance(latest, BaseException) and latest is not original_exception
                        and parse_context_rejection(latest) is not None)
            self.engine.recovery_failed(record, context_rejected=rejected)
        except Exception as error:
            self._count_error("fallback_failure", error)

    async def async_post_call_failure_hook(self, request_data: dict[str, Any],
                                           original_exception: Exception, user_api_key_dict: Any,
                                           traceback_str: str | None = None) -> Any:
        """The proxy answers the client with an error: nothing of this request is in flight any
        more (an attempt that failed before reaching a backend may log no failure event)."""
        try:
            record = record_in(_metadata(request_data, create=False))
            if record is not None:
                self.engine.close_request(record)
            return self._client_error(record, original_exception)
        except Exception as error:
            self._count_error("post_call_failure", error)
        return None

    def _client_error(self, record: PlanRecord | None, error: BaseException) -> Any:
        """What the client is told instead of LiteLLM's error, or None to keep it: a recovery
        that ends for the request's length (no larger pool, or it rejected the request too) is
        OpenAI's context-length 400; a recovery hop whose larger pool failed otherwise is a 503
        saying so; no message names a hidden recovery group."""
        from fastapi import HTTPException

        length_error = self._recovery_length_error(record)
        if length_error is not None:
            return length_error
        text = str(error)
        status = getattr(error, "status_code", None)
        status = status if isinstance(status, int) and 400 <= status <= 599 else 500
        progress = record.progress if record is not None else None
        if record is not None and progress is not None and progress.recovered_from and (
                progress.recovery_failure is RecoveryFailure.ERROR
                or (progress.recovery_failure is None and status >= 500)):
            return HTTPException(status_code=503, detail={"error": (
                f"litellm-dualpool: pool {progress.recovered_from!r} of model group "
                f"{record.plan.group!r} rejected the request for its context length and the "
                f"larger pool {progress.pool!r} failed: {self._public_text(text)}")})
        if any(name in text for name in self.engine.recovery_groups):
            return HTTPException(status_code=status, detail={"error": self._public_text(text)})
        return None

    def _recovery_length_error(self, record: PlanRecord | None) -> Any:
        """OpenAI's context-length 400 when misroute recovery ended for the request's length
        (headers: LiteLLM adds the response-header hook's to it), else None."""
        from litellm_dualpool.proxy.client_errors import no_larger_pool_error

        if record is None:
            return None
        plan, progress = record.plan, record.progress
        group = self.engine.groups.get(plan.group)
        if record.refusal is not None:
            return no_larger_pool_error(
                model_group=plan.group, pool=progress.recovered_from or progress.pool,
                limit_tokens=record.refusal.largest_limit_tokens, budget_tokens=plan.total_tokens)
        if (progress.recovered_from and progress.recovery_failure is RecoveryFailure.CONTEXT
                and group is not None):
            larger = group.pool(progress.pool)
            return no_larger_pool_error(
                model_group=plan.group, pool=progress.recovered_from, larger_pool=progress.pool,
                limit_tokens=larger.max_model_len if larger else group.largest.max_model_len,
                budget_tokens=plan.total_tokens)
        return None

    def _public_name(self, model: str) -> str:
        return self.engine.recovery_groups.get(model, model)

    def _public_text(self, text: str) -> str:
        """`text` with each hidden recovery group's name replaced by its public group's."""
        for recovery, group in self.engine.recovery_groups.items():
            text = text.replace(recovery, group)
        return text

    async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: Any,
            request_data: dict[str, Any]) -> AsyncGenerator[Any, None]:
        async for chunk in response:
            yield chunk
        try:
            record = record_in(_metadata(request_data, create=False))
            if record is not None:
                tokens = stream_prompt_tokens(response)
                if tokens is None:
                    self.metrics.learning.labels(record.plan.group, "no_backend_usage").inc()
                else:
                    self.engine.learn(record, tokens)
        except Exception as error:
            self._count_error("stream", error)

    async def async_post_call_response_headers_hook(
            self, data: dict[str, Any], user_api_key_dict: Any, response: Any,
            request_headers: dict[str, str] | None = None,
            litellm_call_info: dict[str, Any] | None = None) -> dict[str, str] | None:
        """``x-dualpool-pool`` for every caller; ``x-dualpool-budget-tokens`` only where the
        caller's policy exposes it (``expose_budget_header``: the admin's by default): the
        budget is read from the shared learned state, and a tenant who sees it can measure how
        far its own traffic drags that state."""
        try:
            record = record_in(_metadata(data, create=False))
            if record is None or not self.settings.response_headers:
                return None
            headers = {HEADER_POOL: record.progress.pool, HEADER_COUNT: record.plan.count.value}
            if record.expose_budget:
                headers[HEADER_BUDGET] = str(record.plan.total_tokens)
            return headers
        except Exception as error:
            self._count_error("headers", error)
            return None

    def _exposes_budget(self, user_api_key_dict: Any) -> bool:
        """The caller's ``expose_budget_header``; False when its policy entry is invalid (the
        pre-call hook has refused such a request already; never show more on an error)."""
        try:
            return self.policy_resolver(user_api_key_dict, self.settings).expose_budget_header
        except TenantPolicyError:
            return False

    async def async_filter_listed_models(self, user_api_key_dict: Any,
                                         model_names: Sequence[str]) -> Sequence[str]:
        if not self.settings.recovery.hide_from_model_list:
            return model_names
        return [m for m in model_names if m not in self.engine.recovery_groups]
