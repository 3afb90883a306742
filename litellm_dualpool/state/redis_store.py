"""Calibration state shared through Redis by every worker and replica of a gateway.

Design. Redis holds an append-only log and a checkpoint, never the live state:

- ``{prefix}:observations``: a stream (trimmed to ~``stream_max_len``) of every observation any
  worker made, in one global order. Each worker publishes its own in batches (``XADD``) and reads
  the whole stream from its last id (``XREAD``), feeding every entry, its own included, through
  the same guard and calibrator. Same log + same rules = the same learned state everywhere, and
  the guard's window counts a tenant's traffic across the whole fleet, not per worker.
- ``{prefix}:snapshot``: a hash {stream_id, state}: the learned state after applying the stream
  up to ``stream_id``, written every ``snapshot_interval_seconds`` by whichever worker is ahead
  (a compare-and-set script keeps an older state from overwriting a newer one). A starting worker
  restores it, then replays the stream after ``stream_id``: a restart keeps what was learned.

The hot path never touches Redis: decisions read the in-memory calibrator, `record` only queues.
When Redis is unreachable or slow, the worker learns from its own observations at once (routing
continues on local state), keeps them queued (bounded) and counts the failure; once Redis
answers again it publishes the queue (skipping its own entries when they come back) and carries
on reading, or restores a newer snapshot if the stream was trimmed past its position meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis import exceptions as redis_errors

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.state.learner import Learner, Outcome
from litellm_dualpool.state.observation import Observation, decode, encode
from litellm_dualpool.state.settings import RedisStateSettings
from litellm_dualpool.state.store import StateStore

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from litellm_dualpool.metrics import DualPoolMetrics

logger = logging.getLogger("litellm_dualpool")
T = TypeVar("T")

FIELD = b"o"
START_ID = "0-0"
#: Stream reads per sync cycle at most (a long replay yields to the event loop in between).
_MAX_READS_PER_CYCLE = 20
#: Origins (worker ids) remembered for de-duplicating retried publications.
_MAX_ORIGINS = 4096
#: Errors that mean "Redis unreachable or misbehaving", not a bug of ours.
_BACKEND_ERRORS = (redis_errors.RedisError, OSError, TimeoutError, asyncio.TimeoutError)

#: Write the snapshot only if its stream id is newer than the stored one (compare-and-set).
SNAPSHOT_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'stream_id')
if current then
  local cms, cseq = string.match(current, '^(%d+)-(%d+)$')
  local nms, nseq = string.match(ARGV[1], '^(%d+)-(%d+)$')
  cms, cseq, nms, nseq = tonumber(cms), tonumber(cseq), tonumber(nms), tonumber(nseq)
  if nms < cms or (nms == cms and nseq <= cseq) then return 0 end
end
redis.call('HSET', KEYS[1], 'stream_id', ARGV[1], 'state', ARGV[2], 'worker', ARGV[3])
return 1
"""


def stream_id(value: str | bytes) -> tuple[int, int]:
    """``"ms-seq"`` as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _entries(reply: Any) -> list[tuple[bytes, Mapping[bytes, bytes]]]:
    """The entries of an XREAD reply for one stream (RESP2, the clients' default protocol)."""
    if not reply:
        return []
    return list(reply[0][1])


class BackendFailure(Exception):
    """One Redis operation failed; `operation` is the metric label."""

    def __init__(self, operation: str, error: BaseException) -> None:
        super().__init__(f"{operation}: {type(error).__name__}: {error}")
        self.operation = operation
        self.error = error


class RedisStore(StateStore):
    """Shared state through a Redis stream and snapshot (see the module docstring)."""

    backend = "redis"

    def __init__(self, learner: Learner, settings: RedisStateSettings, *,
                 metrics: DualPoolMetrics | None = None, worker_id: str | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 client_factory: Callable[[], redis.asyncio.Redis] | None = None,
                 sync_client_factory: Callable[[], redis.Redis] | None = None) -> None:
        super().__init__(learner, metrics=metrics, worker_id=worker_id, wall_clock=wall_clock)
        self.settings = settings
        self.stream_key = f"{settings.key_prefix}:observations"
        self.snapshot_key = f"{settings.key_prefix}:snapshot"
        self._monotonic = monotonic
        self._client_factory = client_factory or self._default_client
        self._sync_client_factory = sync_client_factory or self._default_sync_client
        self._client: redis.asyncio.Redis | None = None
        self._pending: deque[Observation] = deque()
        self._local_only: set[int] = set()
        self._origins: dict[str, int] = {}
        self._last_id = START_ID
        self._synced = False
        self._check_gap = False
        self._up: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_snapshot = monotonic()
        self._snapshot_id: str | None = None

    # -- clients ---------------------------------------------------------------------------
    def _client_kwargs(self, timeout: float) -> dict[str, Any]:
        s = self.settings
        return {"password": s.password, "username": s.username, "db": s.db,
                "socket_timeout": timeout, "socket_connect_timeout": timeout}

    def _default_client(self) -> redis.asyncio.Redis:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs = self._client_kwargs(self.settings.operation_timeout_seconds)
        kwargs["retry"] = Retry(NoBackoff(), 0)  # the sync loop retries, with backoff
        if self.settings.url:
            return redis.asyncio.Redis.from_url(self.settings.url, **kwargs)
        return redis.asyncio.Redis(host=self.settings.host, port=self.settings.port, **kwargs)

    def _default_sync_client(self) -> redis.Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs = self._client_kwargs(self.settings.operation_timeout_seconds)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        if self.settings.url:
            return redis.Redis.from_url(self.settings.url, **kwargs)
        return redis.Redis(host=self.settings.host, port=self.settings.port, **kwargs)

    # -- the hot path ----------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return bool(self._up)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def last_id(self) -> str:
        return self._last_id

    def record(self, obs: Observation) -> Outcome | None:
        """Queue for publication; learn at once (and remember that) only while Redis is out."""
        if not obs.learnable:
            return self._apply(obs)
        outcome = None
        if not (self._up and self._synced):
            outcome = self._apply(obs)
            self._local_only.add(obs.seq)
        if len(self._pending) >= self.settings.max_pending_observations:
            self._drop_oldest()
        self._pending.append(obs)
        self._set_pending_gauge()
        return outcome

    def _drop_oldest(self) -> None:
        dropped = self._pending.popleft()
        if dropped.seq in self._local_only:
            self._local_only.discard(dropped.seq)
        else:
            self._apply(dropped)  # never shared, but at least learned here
        if self.metrics is not None:
            self.metrics.state_dropped.inc()

    def _set_pending_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.state_pending.set(len(self._pending))

    # -- applying the log ------------------------------------------------------------------
    def _apply_entries(self, entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> None:
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            self._last_id = entry_id
            try:
                obs = decode(fields.get(FIELD) or fields.get("o") or b"")  # type: ignore[call-overload]
            except ValueError as error:
                logger.debug("litellm-dualpool: skipping stream entry %s: %s", entry_id, error)
                self._count_error("decode")
                continue
            if obs.origin == self.worker_id and obs.seq in self._local_only:
                self._local_only.discard(obs.seq)  # learned already, while Redis was out
                continue
            if obs.seq <= self._origins.get(obs.origin, 0):
                continue  # a publication retried after a timeout that had in fact succeeded
            self._remember_origin(obs.origin, obs.seq)
            self._apply(obs, stream_id(entry_id)[0])

    def _remember_origin(self, origin: str, seq: int) -> None:
        self._origins.pop(origin, None)
        self._origins[origin] = seq
        if len(self._origins) > _MAX_ORIGINS:
            del self._origins[next(iter(self._origins))]

    def _restore_snapshot(self, fields: Mapping[bytes, bytes]) -> bool:
        """Adopt a stored snapshot; False (state unchanged) when absent or unreadable."""
        raw_id, raw_state = fields.get(b"stream_id"), fields.get(b"state")
        if not raw_id or not raw_state:
            return False
        try:
            stream_id(raw_id)
            payload = json.loads(raw_state)
            self.learner.restore(payload["learner"])
            origins = payload.get("origins") or {}
        except (ValueError, KeyError, TypeError, ConfigError) as error:
            logger.warning("litellm-dualpool: ignoring unreadable state snapshot in %s: %s",
                           self.snapshot_key, error)
            self._count_error("restore")
            return False
        self._last_id = raw_id.decode()
        self._snapshot_id = self._last_id
        self._origins = {str(k): v for k, v in origins.items() if type(v) is int}
        self._local_only.clear()  # learned into the state just replaced: learn again on read-back
        return True

    def _snapshot_payload(self) -> str:
        return json.dumps({"learner": self.learner.snapshot(), "origins": self._origins},
                          separators=(",", ":"))

    # -- start-up restore (blocking, bounded) ----------------------------------------------
    def restore_blocking(self) -> bool:
        """Restore the snapshot and replay the stream with a synchronous client, before the
        proxy serves (bounded by ``restore_timeout_seconds``). False when Redis did not answer:
        the worker starts on local state and the background task retries."""
        deadline = self._monotonic() + self.settings.restore_timeout_seconds
        client = self._sync_client_factory()
        try:
            self._restore_snapshot(client.hgetall(self.snapshot_key))
            while self._monotonic() < deadline:
                entries = _entries(client.xread({self.stream_key: self._last_id},
                                                count=self.settings.batch_size))
                self._apply_entries(entries)
                if len(entries) < self.settings.batch_size:
                    break
            else:
                logger.warning("litellm-dualpool: state replay stopped at %s after %.1f s; the "
                               "background task continues it", self._last_id,
                               self.settings.restore_timeout_seconds)
            self._synced = True
            self._mark_up()
            return True
        except _BACKEND_ERRORS as error:
            self._mark_down(BackendFailure("restore", error))
            return False
        finally:
            client.close()

    # -- background task -------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._client = self._client_factory()
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="dualpool-state-sync")

    async def stop(self) -> None:
        """Cancel the loop, then publish what is queued and checkpoint (best effort)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await self._flush(client)
            await self._pull(client)
            await self._write_snapshot(client)
        except (BackendFailure, *_BACKEND_ERRORS) as error:
            logger.warning("litellm-dualpool: could not flush state on stop: %s", error)
        finally:
            await client.aclose()

    async def sync_once(self) -> None:
        """One cycle now (tests and the shutdown path); BackendFailure when Redis fails."""
        if self._client is None:
            self._client = self._client_factory()
        await self._cycle(self._client)

    async def checkpoint(self) -> bool:
        """Write the snapshot now; False when skipped or refused (a newer one is stored)."""
        if self._client is None:
            self._client = self._client_factory()
        return await self._write_snapshot(self._client)

    async def _run(self) -> None:
        client = self._client
        if client is None:
            return
        backoff = self.settings.sync_interval_seconds
        while True:
            try:
                await self._cycle(client)
                self._mark_up()
                backoff = self.settings.sync_interval_seconds
                await asyncio.sleep(self.settings.sync_interval_seconds)
            except BackendFailure as failure:
                self._mark_down(failure)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("litellm-dualpool: state sync failed unexpectedly")
                self._count_error("internal")
                await asyncio.sleep(self.settings.retry_max_seconds)

    async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(awaitable, self.settings.operation_timeout_seconds)
        except _BACKEND_ERRORS as error:
            raise BackendFailure(operation, error) from error

    async def _cycle(self, client: redis.asyncio.Redis) -> None:
        if not self._synced:
            await self._resync(client)
        elif self._check_gap:
            await self._recover_gap(client)
        await self._flush(client)
        await self._pull(client)
        if self._monotonic() - self._last_snapshot >= self.settings.snapshot_interval_seconds:
            await self._write_snapshot(client)
        self._mark_up()
        if self.metrics is not None:
            self.metrics.state_last_sync.set(self._wall_clock())

    async def _resync(self, client: redis.asyncio.Redis) -> None:
        fields = await self._call("restore", client.hgetall(self.snapshot_key))
        if fields and (self._last_id == START_ID or stream_id(
                fields.get(b"stream_id", b"0-0")) > stream_id(self._last_id)):
            self._restore_snapshot(fields)
        await self._pull(client)
        self._synced = True
        self._check_gap = False

    async def _recover_gap(self, client: redis.asyncio.Redis) -> None:
        """After an outage: if entries after our position were trimmed, a newer snapshot (if
        any) replaces what we missed."""
        self._check_gap = False
        try:
            info = await self._call("read", client.xinfo_stream(self.stream_key))
        except BackendFailure as failure:
            if isinstance(failure.error, redis_errors.ResponseError):
                return  # no stream (e.g. a Redis restarted empty): nothing was missed
            raise
        deleted = info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id")
        if deleted and stream_id(deleted) > stream_id(self._last_id):
            logger.warning("litellm-dualpool: the shared stream was trimmed past this worker's "
                           "position %s during the outage; resynchronising", self._last_id)
            await self._resync(client)

    async def _flush(self, client: redis.asyncio.Redis) -> None:
        while self._pending:
            batch = [self._pending[i] for i in range(min(len(self._pending),
                                                         self.settings.batch_size))]
            pipe = client.pipeline(transaction=True)
            for obs in batch:
                pipe.xadd(self.stream_key, {FIELD: encode(obs)},
                          maxlen=self.settings.stream_max_len, approximate=True)
            await self._call("publish", pipe.execute())
            for obs in batch:
                if self._pending and self._pending[0] is obs:
                    self._pending.popleft()
            self._set_pending_gauge()

    async def _pull(self, client: redis.asyncio.Redis) -> None:
        for _ in range(_MAX_READS_PER_CYCLE):
            reply = await self._call("read", client.xread({self.stream_key: self._last_id},
                                                          count=self.settings.batch_size))
            entries = _entries(reply)
            self._apply_entries(entries)
            if len(entries) < self.settings.batch_size:
                return
            await asyncio.sleep(0)

    async def _write_snapshot(self, client: redis.asyncio.Redis) -> bool:
        """Checkpoint, unless locally learned observations are not yet in the shared log (the
        snapshot would then count them twice)."""
        self._last_snapshot = self._monotonic()
        if self._local_only or self._last_id == START_ID or self._last_id == self._snapshot_id:
            return False
        written = await self._call("snapshot", client.eval(
            SNAPSHOT_SCRIPT, 1, self.snapshot_key, self._last_id, self._snapshot_payload(),
            self.worker_id))
        self._snapshot_id = self._last_id
        return bool(written)

    # -- health ----------------------------------------------------------------------------
    def _count_error(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.state_sync_errors.labels(operation).inc()

    def _mark_up(self) -> None:
        if self._up is False:
            logger.warning("litellm-dualpool: Redis state backend reachable again "
                           "(%d queued observations to publish)", len(self._pending))
            self._check_gap = True
        self._up = True
        if self.metrics is not None:
            self.metrics.state_backend_up.labels(self.backend).set(1)

    def _mark_down(self, failure: BackendFailure) -> None:
        self._count_error(failure.operation)
        if self._up is not False:
            logger.warning("litellm-dualpool: Redis state backend unreachable (%s); routing "
                           "continues on this worker's learned state", failure)
            for obs in self._pending:  # queued for the shared log: learn them here meanwhile
                if obs.seq not in self._local_only:
                    self._apply(obs)
                    self._local_only.add(obs.seq)
        self._up = False
        if self.metrics is not None:
            self.metrics.state_backend_up.labels(self.backend).set(0)
