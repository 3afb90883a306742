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
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis import exceptions as redis_errors

from litellm_dualpool.core.calibration_snapshot import MAX_COUNT
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
#: How far a snapshot's stream id may lie beyond the clock (workers' and Redis' clocks differ).
#: Stream ids are Redis' clock in ms: a snapshot further ahead was not written by a worker, and
#: its compare-and-set would refuse every newer snapshot until that time; it is refused.
MAX_CLOCK_SKEW_MS = 300_000
#: Largest snapshot read (256 keys take ~0.7 MB; the guard's windows a few MB at most).
MAX_SNAPSHOT_BYTES = 64 << 20
#: A stream id as Redis writes them (digits only: no huge or signed numbers).
_STREAM_ID = re.compile(rb"(\d{1,20})-(\d{1,20})")
#: Error messages from Redis or a parser are cut to this length in the log.
_MAX_LOGGED = 200

#: Write the snapshot only if its stream id is newer than the stored one (compare-and-set). A
#: stored snapshot that cannot be compared (another key type, an id that does not parse or lies
#: more than ARGV[4] ms beyond Redis' clock) is garbage and is replaced: it would otherwise
#: refuse every later snapshot.
SNAPSHOT_SCRIPT = """
local function position(id)
  if not id then return nil end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end
local kind = redis.call('TYPE', KEYS[1])['ok']
local cms, cseq = nil, nil
if kind == 'hash' then cms, cseq = position(redis.call('HGET', KEYS[1], 'stream_id')) end
local now = redis.call('TIME')
local horizon = tonumber(now[1]) * 1000 + tonumber(ARGV[4])
if cms and cms <= horizon then
  local nms, nseq = position(ARGV[1])
  if nms < cms or (nms == cms and nseq <= cseq) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'stream_id', ARGV[1], 'state', ARGV[2], 'worker', ARGV[3])
return 1
"""


def stream_id(value: str | bytes) -> tuple[int, int]:
    """``"ms-seq"`` as a comparable pair; ValueError for anything else."""
    match = _STREAM_ID.fullmatch(value.encode() if isinstance(value, str) else value)
    if match is None:
        raise ValueError(f"not a stream id: {value[:40]!r}")
    return int(match.group(1)), int(match.group(2))


def _wrong_type(error: BaseException) -> bool:
    """Redis answered, but the key holds another type (garbage under our prefix)."""
    return isinstance(error, redis_errors.ResponseError) and str(error).startswith("WRONGTYPE")


def _parse_origins(value: object) -> dict[str, int]:
    """A snapshot's {worker id: last sequence}; ValueError when malformed."""
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and len(k) <= 256 and type(v) is int and 0 <= v <= MAX_COUNT
            for k, v in value.items()):
        raise ValueError("origins must map worker ids to sequence numbers")
    return dict(list(value.items())[-_MAX_ORIGINS:])


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
        self._warned: set[str] = set()  # kinds of unusable data already logged at warning
        if metrics is not None:  # present at 0 from the start: a rate needs the series
            for operation in ("decode", "restore"):
                metrics.state_sync_errors.labels(operation)

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
        """Learn from each entry in turn; an entry that cannot be read or applied is skipped
        and counted (whatever it holds: a stream entry is data anyone with access wrote)."""
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            self._last_id = entry_id
            try:
                self._apply_entry(entry_id, fields)
            except Exception as error:
                self._skip("decode", f"skipping unusable stream entry {entry_id} of "
                                     f"{self.stream_key}", error)

    def _apply_entry(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        obs = decode(fields.get(FIELD) or fields.get("o") or b"")  # type: ignore[call-overload]  # redis-py: str or bytes keys
        if obs.origin == self.worker_id and obs.seq in self._local_only:
            self._local_only.discard(obs.seq)  # learned already, while Redis was out
            return
        if obs.seq <= self._origins.get(obs.origin, 0):
            return  # a publication retried after a timeout that had in fact succeeded
        self._remember_origin(obs.origin, obs.seq)
        self._apply(obs, stream_id(entry_id)[0])

    def _remember_origin(self, origin: str, seq: int) -> None:
        self._origins.pop(origin, None)
        self._origins[origin] = seq
        if len(self._origins) > _MAX_ORIGINS:
            del self._origins[next(iter(self._origins))]

    def _restore_snapshot(self, fields: Mapping[Any, Any]) -> bool:
        """Adopt a stored snapshot; False (state unchanged) when absent or unusable: then the
        worker replays the stream from its start instead (or starts cold when it is empty)."""
        if not fields:
            return False
        try:
            position, learner, origins = self._parse_snapshot(fields)
            clamped = self.learner.restore(learner, max_time_ms=self._horizon_ms())
        except Exception as error:
            self._skip("restore", f"ignoring the state snapshot in {self.snapshot_key} (the "
                                  f"stream is replayed instead)", error)
            return False
        if clamped:
            self._skip("restore", f"the state snapshot in {self.snapshot_key} held {clamped} "
                                  f"calibration key(s) outside the configured bounds: clamped "
                                  f"and re-solved from their statistics", None, kind="clamp")
        self._last_id = position
        self._snapshot_id = self._last_id
        self._origins = origins
        self._local_only.clear()  # learned into the state just replaced: learn again on read-back
        return True

    def _parse_snapshot(self, fields: Mapping[Any, Any]
                        ) -> tuple[str, Mapping[str, Any], dict[str, int]]:
        """(stream id, learner snapshot, origins) of a stored snapshot; ValueError when it is
        malformed, too large or from the future."""
        raw_id, raw_state = fields.get(b"stream_id"), fields.get(b"state")
        if not isinstance(raw_id, bytes) or not isinstance(raw_state, bytes):
            raise ValueError("needs the fields stream_id and state")
        if stream_id(raw_id)[0] > self._horizon_ms():
            raise ValueError(f"its stream id {raw_id[:40]!r} lies more than "
                             f"{MAX_CLOCK_SKEW_MS} ms in the future")
        if len(raw_state) > MAX_SNAPSHOT_BYTES:
            raise ValueError(f"more than {MAX_SNAPSHOT_BYTES} bytes")
        payload = json.loads(raw_state)
        if not isinstance(payload, dict) or not isinstance(payload.get("learner"), dict):
            raise ValueError("not a state snapshot object")
        return raw_id.decode(), payload["learner"], _parse_origins(payload.get("origins", {}))

    def _horizon_ms(self) -> int:
        """The latest time a stored position or window may claim (clock + allowed skew)."""
        return int(self._wall_clock() * 1000) + MAX_CLOCK_SKEW_MS

    def _newer_snapshot(self, fields: Mapping[Any, Any]) -> bool:
        """Whether a stored snapshot is ahead of this worker (a garbage id never is, unless this
        worker has read nothing yet: then it is tried, and counted when unusable)."""
        if not fields:
            return False
        if self._last_id == START_ID:
            return True
        try:
            return stream_id(fields.get(b"stream_id", b"")) > stream_id(self._last_id)
        except ValueError:
            return False

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
            try:
                fields = client.hgetall(self.snapshot_key)
            except redis_errors.ResponseError as error:
                if not _wrong_type(error):
                    raise
                self._skip("restore", f"ignoring {self.snapshot_key}", error, kind="wrong-type")
                fields = {}
            self._restore_snapshot(fields)
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
        except Exception:  # a bug of ours must not stop the proxy from starting either
            logger.exception("litellm-dualpool: restoring the shared state failed; the worker "
                             "starts on local state and the background task retries")
            self._count_error("restore")
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
        try:
            fields = await self._call("restore", client.hgetall(self.snapshot_key))
        except BackendFailure as failure:
            if not _wrong_type(failure.error):
                raise
            self._skip("restore", f"ignoring {self.snapshot_key}", failure.error,
                       kind="wrong-type")
            fields = {}
        if self._newer_snapshot(fields):
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
        raw: Any = info  # redis-py answers str or bytes keys, as decode_responses says
        deleted = raw.get("max-deleted-entry-id") or raw.get(b"max-deleted-entry-id")
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
            self.worker_id, MAX_CLOCK_SKEW_MS))
        self._snapshot_id = self._last_id
        return bool(written)

    # -- health ----------------------------------------------------------------------------
    def _count_error(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.state_sync_errors.labels(operation).inc()

    def _skip(self, operation: str, message: str, error: BaseException | None, *,
              kind: str | None = None) -> None:
        """Count unusable data read from Redis under `operation`; log the first of each `kind`
        (default: the operation) at warning, the rest at debug (a stream full of garbage must
        not flood the log)."""
        self._count_error(operation)
        kind = kind or operation
        first = kind not in self._warned
        self._warned.add(kind)
        reason = "" if error is None else f": {type(error).__name__}: {str(error)[:_MAX_LOGGED]}"
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "litellm-dualpool: %s%s%s", message, reason,
                   f" (further ones are logged at debug level and counted in "
                   f"dualpool_state_sync_errors_total{{operation=\"{operation}\"}})"
                   if first else "")

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
