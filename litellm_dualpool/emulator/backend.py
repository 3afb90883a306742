"""Where generated tokens come from: the engine model on the wall clock, or nothing at all.

The HTTP layer asks a :class:`Backend` to generate ``output_tokens`` tokens for a prompt of
``prompt_tokens`` and reads back token increments as they are produced. Two backends:

* :class:`EngineBackend` runs one instance of the engine model (``sim.engine``) the way SimPy's
  real-time environment runs its event core: one asyncio task calls ``engine.step(now)``,
  sleeps the step's duration divided by the speed-up factor, then hands each request the tokens
  that step produced. Virtual time never runs behind the wall clock times the speed-up (an idle
  engine catches up on its next request), and sleeps are computed against an anchor so rounding
  does not accumulate. A request whose client goes away is aborted in the engine.
* :class:`InstantBackend` produces every token at once: no engine, no timing, for measuring a
  proxy's own overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from litellm_dualpool.emulator.metrics import LoadView
from litellm_dualpool.sim.engine import Engine, FinishedRequest


class Backend(Protocol):
    def generate(self, prompt_tokens: int, output_tokens: int) -> AsyncIterator[int]:
        """Yield positive token increments summing to ``output_tokens``."""
        ...

    def load(self) -> LoadView: ...

    def set_stalled(self, stalled: bool) -> None:
        """Stop (True) or resume (False) all progress; requests queue meanwhile."""
        ...

    @property
    def time_scale(self) -> float:
        """Emulated seconds per wall second (latency metrics are reported in emulated time)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class InstantBackend:
    """Every token at once; load is only the requests in flight."""

    time_scale = 1.0

    def __init__(self) -> None:
        self._in_flight = 0
        self._waiting = 0
        self._go = asyncio.Event()
        self._go.set()

    def set_stalled(self, stalled: bool) -> None:
        if stalled:
            self._go.clear()
        else:
            self._go.set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def load(self) -> LoadView:
        return LoadView(running=self._in_flight, waiting=self._waiting, kv_usage_ratio=0.0,
                        preemptions_total=0)

    async def generate(self, prompt_tokens: int, output_tokens: int) -> AsyncIterator[int]:
        if not self._go.is_set():
            self._waiting += 1
            try:
                await self._go.wait()
            finally:
                self._waiting -= 1
        self._in_flight += 1
        try:
            yield output_tokens
        finally:
            self._in_flight -= 1


#: Wall-clock time one batch of identical decode steps may cover: at high speed-ups the engine
#: advances several decode steps at once (exactly, see ``Engine.advance``) instead of sleeping
#: for sub-millisecond steps; tokens then arrive in bursts at most this far apart.
DECODE_TICK_SECONDS = 0.005
#: Shortest wall-clock sleep worth taking; shorter debts are carried to the next step.
MIN_SLEEP_SECONDS = 0.0005


class EngineBackend:
    """Runs one :class:`~litellm_dualpool.sim.engine.Engine` in virtual time = wall x speedup."""

    def __init__(self, engine: Engine, *, speedup: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        self.time_scale = speedup
        self.engine = engine
        self._speedup = speedup
        self._clock = clock
        self._wall_origin = clock()
        self._engine_now = 0.0
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._go = asyncio.Event()
        self._go.set()
        self._task: asyncio.Task[None] | None = None

    def set_stalled(self, stalled: bool) -> None:
        if stalled:
            self._go.clear()
        else:
            self._go.set()

    async def start(self) -> None:
        if self._task is None:
            self._wall_origin = self._clock() - self._engine_now / self._speedup
            self._task = asyncio.create_task(self._run(), name="emulator-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def load(self) -> LoadView:
        e = self.engine
        return LoadView(running=e.num_running, waiting=e.num_waiting,
                        kv_usage_ratio=e.kv_usage_fraction, preemptions_total=e.num_preemptions_total)

    def _virtual_now(self) -> float:
        return max(self._engine_now, (self._clock() - self._wall_origin) * self._speedup)

    async def generate(self, prompt_tokens: int, output_tokens: int) -> AsyncIterator[int]:
        request_id = f"r{next(self._ids)}"
        admission = self.engine.submit(request_id, prompt_tokens, max_tokens=output_tokens,
                                       now=self._virtual_now(), output_tokens=output_tokens)
        if not admission.accepted:
            raise ValueError(f"engine refused a validated request: {admission.status}")
        live = _Live()
        self._live[request_id] = live
        self._wake.set()
        try:
            while True:
                increment = await live.queue.get()
                if increment is None:
                    live.finished = True
                    return
                yield increment
        finally:
            self._live.pop(request_id, None)
            if not live.finished:
                self.engine.abort(request_id)

    def _max_steps(self) -> int:
        engine = self.engine
        if engine.decode_run_length() < 2:
            return 1
        return max(1, engine.decode_steps_started_within(DECODE_TICK_SECONDS * self._speedup, 4096))

    async def _run(self) -> None:
        engine = self.engine
        while True:
            if not engine.has_work:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._go.is_set():
                await self._go.wait()
                # Virtual time stood still while stalled: re-anchor so it does not jump.
                self._wall_origin = self._clock() - self._engine_now / self._speedup
                continue
            result = engine.advance(self._virtual_now(), self._max_steps())
            self._engine_now = result.end_time
            delay = self._wall_origin + self._engine_now / self._speedup - self._clock()
            await asyncio.sleep(delay if delay > MIN_SLEEP_SECONDS else 0)
            self._deliver(result.finished)

    def _deliver(self, finished: tuple[FinishedRequest, ...]) -> None:
        done = {f.request_id: f.output_tokens for f in finished}
        for request_id, live in self._live.items():
            total = done.get(request_id)
            if total is None:
                total = self.engine.generated_tokens(request_id)
            if total > live.delivered:
                live.queue.put_nowait(total - live.delivered)
                live.delivered = total
            if request_id in done:
                live.queue.put_nowait(None)


class _Live:
    """Delivery state of one request in the engine."""

    __slots__ = ("delivered", "finished", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.delivered = 0
        self.finished = False
