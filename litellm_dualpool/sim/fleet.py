"""Discrete-event fleet simulator: pools of engine-model instances behind a router, virtual time.

Events are arrivals (in trace order) and the end of an instance's step. An instance with work is
always executing either one engine step (committed at its start, effects stamped at its end) or
a *decode run*: k identical pure-decode steps planned as one event (``Engine.decode_run_length``)
and committed at its end. A new request reaching an instance in a decode run cuts the run at the
first step boundary after its arrival (the request joins the next step, as in vLLM), so the
results equal step-by-step simulation while the event count stays near a few per request.

Per request the simulator records where it went, TTFT, TPOT, preemptions and its fate
(completed, refused by the gateway, refused by the backend, recovered to a larger pool,
truncated output). The backend's prompt token count of each completed request goes back to the
router's ``learn``, as the LiteLLM success callback feeds the calibrator.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum

import numpy as np

from litellm_dualpool.core.policy import PoolState, Reason, decide_recovery
from litellm_dualpool.core.shape import RequestShape
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.sim.engine import Engine, EngineConfig, StepResult
from litellm_dualpool.sim.routers import Router, SimRequest
from litellm_dualpool.sim.workload import Workload, synthesize_shapes

HOURS_PER_YEAR = 8760.0


class Balancer(StrEnum):
    """How a pool picks an instance: fewest in-flight requests, or in turn."""

    LEAST_LOADED = "least_loaded"
    ROUND_ROBIN = "round_robin"


class Fate(IntEnum):
    PENDING = 0
    COMPLETED = 1
    REFUSED_GATEWAY = 2  # no pool fits the estimated budget (the plugin's 400)
    REFUSED_BACKEND = 3  # vLLM's context-length 400 and no recovery


@dataclass(frozen=True, slots=True)
class SimPool:
    """``instances`` copies of one vLLM configuration. ``usd_per_gpu_hour`` overrides the GPU's."""

    name: str
    engine: EngineConfig
    instances: int
    usd_per_gpu_hour: float | None = None
    #: in-flight requests per instance at which spillover counts the pool as full (the plugin's
    #: ``model_info.max_in_flight``); None: the engine's max_num_seqs, the plugin's default
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ConfigError("must be >= 1", path=f"pools.{self.name}.instances")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError("must be >= 1", path=f"pools.{self.name}.max_in_flight")

    @property
    def price(self) -> float | None:
        return self.usd_per_gpu_hour if self.usd_per_gpu_hour is not None else self.engine.gpu.usd_per_gpu_hour


@dataclass(frozen=True, slots=True)
class SloTargets:
    """A request meets the SLO when TTFT and its mean TPOT are within these (the paper's P99
    targets applied per request). The TTFT target may grow with the prompt
    (``ttft_seconds + ttft_seconds_per_prompt_token * prompt_tokens``, the planner's rule) and
    differ by class (``long_ttft_seconds``, ``long_ttft_seconds_per_prompt_token``);
    attainment is also reported per request class, short (total tokens <= ``class_boundary_tokens``)
    and long, so a fleet cannot hide a class it serves badly behind the other."""

    ttft_seconds: float = 2.0
    tpot_seconds: float = 0.080
    ttft_seconds_per_prompt_token: float = 0.0
    class_boundary_tokens: int = 8192
    #: a TTFT target of its own for the long class (None: the same as the short class's)
    long_ttft_seconds: float | None = None
    long_ttft_seconds_per_prompt_token: float = 0.0

    def ttft_target_seconds(self, prompt_tokens: np.ndarray, total_tokens: np.ndarray | None = None) -> np.ndarray:
        """Each request's TTFT target: by its class (``total_tokens``), not by the pool serving it."""
        prompts = np.asarray(prompt_tokens, dtype=np.float64)
        short = self.ttft_seconds + self.ttft_seconds_per_prompt_token * prompts
        if self.long_ttft_seconds is None:
            return short
        if total_tokens is None:
            raise ConfigError("a per-class TTFT target needs each request's total tokens", path="slo")
        long_ = self.long_ttft_seconds + self.long_ttft_seconds_per_prompt_token * prompts
        result: np.ndarray = np.where(np.asarray(total_tokens) > self.class_boundary_tokens, long_, short)
        return result


@dataclass(frozen=True, slots=True)
class PoolReport:
    name: str
    instances: int
    gpus: int
    gpu_hours: float
    usd_per_year: float | None
    requests: int
    completed: int
    refused: int
    requests_per_second: float
    output_tokens_per_second: float
    ttft_p50_seconds: float
    ttft_p99_seconds: float
    tpot_p50_seconds: float
    tpot_p99_seconds: float
    preemptions: int
    preemptions_per_1000: float
    kv_usage_mean_ratio: float
    slo_attainment: float
    max_model_len: int | None = None


@dataclass(frozen=True)
class FleetResult:
    """Reports per pool and for the fleet, plus per-request arrays for plots."""

    router: str
    balancer: str
    pools: list[PoolReport]
    fleet: PoolReport
    requests: int
    refused_gateway: int
    refused_backend: int
    recovered: int
    truncated: int
    reasons: dict[str, int]
    horizon_seconds: float
    wall_seconds: float
    pool_names: tuple[str, ...]
    request_pool: np.ndarray = field(repr=False)
    request_fate: np.ndarray = field(repr=False)
    ttft_seconds: np.ndarray = field(repr=False)
    tpot_seconds: np.ndarray = field(repr=False)
    budget_tokens: np.ndarray = field(repr=False)
    request_preemptions: np.ndarray = field(repr=False)
    #: SLO attainment of the short and the long requests (SloTargets.class_boundary_tokens)
    slo_attainment_by_class: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "slo_attainment_by_class": self.slo_attainment_by_class,
            "router": self.router, "balancer": self.balancer, "requests": self.requests,
            "refused_gateway": self.refused_gateway, "refused_backend": self.refused_backend,
            "recovered": self.recovered, "truncated": self.truncated, "reasons": self.reasons,
            "horizon_seconds": self.horizon_seconds, "wall_seconds": self.wall_seconds,
            "fleet": asdict(self.fleet), "pools": [asdict(p) for p in self.pools],
        }


class FleetSimulator:
    """One simulation run. ``simulate()`` is the convenient entry point."""

    def __init__(
        self,
        pools: Sequence[SimPool],
        router: Router,
        *,
        balancer: Balancer | str = Balancer.LEAST_LOADED,
        recovery: bool = True,
        slo: SloTargets | None = None,
        decode_runs: bool = True,
    ) -> None:
        """decode_runs=False steps every instance one engine step per event (slow; the
        reference the fast path is tested against)."""
        if not pools:
            raise ConfigError("at least one pool is needed", path="pools")
        if len({p.name for p in pools}) != len(pools):
            raise ConfigError("pool names must be unique", path="pools")
        self.pools = list(pools)
        self.router = router
        self.balancer = Balancer(balancer)
        self.recovery = recovery
        self.slo = slo or SloTargets()
        self._min_run = 2 if decode_runs else 1 << 62
        self._pool_index = {p.name: i for i, p in enumerate(self.pools)}
        self._engines: list[Engine] = []
        self._instance_pool: list[int] = []
        self._ranges: list[tuple[int, int]] = []
        for i, pool in enumerate(self.pools):
            lo = len(self._engines)
            self._engines += [Engine(pool.engine) for _ in range(pool.instances)]
            self._instance_pool += [i] * pool.instances
            self._ranges.append((lo, len(self._engines)))
        n = len(self._engines)
        self._loads = np.zeros(n, dtype=np.int64)  # in-flight requests per instance
        self._rr = [lo for lo, _ in self._ranges]
        self._pool_inflight = [0] * len(self.pools)
        self._pool_capacity = [p.instances * (p.max_in_flight or p.engine.max_num_seqs) for p in self.pools]
        self._version = [0] * n
        self._planned = [0] * n
        self._run_start = [0.0] * n
        self._busy = [False] * n
        self._pending: list[StepResult | None] = [None] * n  # a single step's effects, due at its end
        self._kv_area = [0.0] * n
        self._heap: list[tuple[float, int, int, int]] = []
        self._seq = 0

    # -- the run ------------------------------------------------------------------------------
    def run(
        self,
        workload: Workload,
        *,
        shapes: Sequence[RequestShape] | None = None,
        max_tokens: int | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> FleetResult:
        """Simulate ``workload``. ``max_tokens``: the clients' max_tokens for every request;
        None sends each request's true output length as max_tokens (clients that cap output
        tightly; the paper's L_total = prompt + output)."""
        wall0 = time.perf_counter()
        n = len(workload)
        shapes = shapes if shapes is not None else synthesize_shapes(workload, seed=seed)
        self._n = n
        self._fate = np.zeros(n, dtype=np.int8)
        self._req_pool = np.full(n, -1, dtype=np.int16)
        self._ttft = np.full(n, np.nan)
        self._tpot = np.full(n, np.nan)
        self._finish = np.full(n, np.nan)
        self._preempt = np.zeros(n, dtype=np.int32)
        self._budget = np.zeros(n, dtype=np.int64)
        self._outputs_done = np.zeros(n, dtype=np.int64)
        self._ttft_target = self.slo.ttft_target_seconds(workload.prompt_tokens, workload.total_tokens)
        self._long = workload.total_tokens > self.slo.class_boundary_tokens
        self._requests: dict[int, SimRequest] = {}
        self._recovered = 0
        self._truncated = 0
        self._reasons: dict[str, int] = {}
        arrivals = workload.arrival_seconds.tolist()
        prompts = workload.prompt_tokens.tolist()
        outputs = workload.output_tokens.tolist()
        cats = workload.category.tolist()
        names = workload.categories
        heap = self._heap
        step_every = max(n // 100, 1)
        for i in range(n):
            now = arrivals[i]
            while heap and heap[0][0] <= now:
                self._on_event(*heapq.heappop(heap))
            out = outputs[i]
            budget_out = out if max_tokens is None else max_tokens
            req = SimRequest(i, shapes[i], names[cats[i]], budget_out, prompts[i])
            self._arrive(req, now, out)
            if progress is not None and i % step_every == 0:
                progress(i, n)
        while heap:
            self._on_event(*heapq.heappop(heap))
        if progress is not None:
            progress(n, n)
        return self._report(workload, time.perf_counter() - wall0)

    def _arrive(self, req: SimRequest, now: float, output_tokens: int) -> None:
        states = [
            PoolState(p.name, p.engine.max_model_len, self._pool_inflight[i] / self._pool_capacity[i])
            for i, p in enumerate(self.pools)
        ]
        decision = self.router.choose(req, states)
        self._budget[req.index] = decision.budget_tokens
        self._reasons[decision.reason.value] = self._reasons.get(decision.reason.value, 0) + 1
        if decision.pool is None:
            self._fate[req.index] = Fate.REFUSED_GATEWAY
            return
        pool = self._pool_index[decision.pool]
        while True:
            admitted = self._submit(pool, req, now, output_tokens)
            if admitted:
                return
            if not self.recovery:
                break
            retry = decide_recovery(decision.budget_tokens, states, self.pools[pool].name)
            if retry.pool is None:
                break
            self._recovered += 1
            self._reasons[Reason.RECOVERY.value] = self._reasons.get(Reason.RECOVERY.value, 0) + 1
            pool = self._pool_index[retry.pool]
        self._fate[req.index] = Fate.REFUSED_BACKEND
        self._req_pool[req.index] = pool

    def _pick(self, pool: int) -> int:
        lo, hi = self._ranges[pool]
        if self.balancer is Balancer.ROUND_ROBIN:
            inst = self._rr[pool]
            self._rr[pool] = inst + 1 if inst + 1 < hi else lo
            return inst
        return lo + int(self._loads[lo:hi].argmin())

    def _submit(self, pool: int, req: SimRequest, now: float, output_tokens: int) -> bool:
        inst = self._pick(pool)
        engine = self._engines[inst]
        if self._busy[inst] and self._planned[inst]:
            self._cut_run(inst, now)
        max_tokens = req.output_budget_tokens
        admission = engine.submit(req.index, req.true_prompt_tokens, max_tokens, now, output_tokens)
        if not admission.accepted:
            return False
        if admission.max_tokens < output_tokens:
            self._truncated += 1
        self._requests[req.index] = req
        self._req_pool[req.index] = pool
        self._loads[inst] += 1
        self._pool_inflight[pool] += 1
        if not self._busy[inst]:
            self._start(inst, now)
        return True

    def _cut_run(self, inst: int, now: float) -> None:
        """End a planned decode run at the first step boundary at or after ``now``."""
        steps = self._planned[inst]
        start = self._run_start[inst]
        engine = self._engines[inst]
        done = engine.decode_steps_started_within(now - start, steps)
        if done >= steps:
            return
        boundary = start
        if done > 0:
            boundary = self._commit(inst, engine.run_decode_steps(start, done), engine)
        self._planned[inst] = 0
        self._schedule(inst, boundary)

    def _schedule(self, inst: int, at: float) -> None:
        self._version[inst] += 1
        self._seq += 1
        self._busy[inst] = True
        heapq.heappush(self._heap, (at, self._seq, inst, self._version[inst]))

    def _start(self, inst: int, now: float) -> None:
        engine = self._engines[inst]
        steps = engine.decode_run_length()
        if steps >= self._min_run:
            self._planned[inst] = steps
            self._run_start[inst] = now
            self._schedule(inst, now + engine.decode_run_seconds(steps))
        else:
            self._planned[inst] = 0
            result = engine.step(now)  # the engine moves now; its effects land at the end
            self._pending[inst] = result
            self._schedule(inst, result.end_time)

    def _on_event(self, at: float, _seq: int, inst: int, version: int) -> None:
        if version != self._version[inst]:
            return
        engine = self._engines[inst]
        pending = self._pending[inst]
        if pending is not None:
            self._pending[inst] = None
            self._commit(inst, pending, engine)
        steps = self._planned[inst]
        if steps:
            self._planned[inst] = 0
            self._commit(inst, engine.run_decode_steps(self._run_start[inst], steps), engine)
        self._busy[inst] = False
        if engine.has_work:
            self._start(inst, at)

    def _commit(self, inst: int, result: StepResult, engine: Engine) -> float:
        """Record a step's effects (at its end time, so routers see finishes and learn when
        they happen); returns its end time. KV usage is integrated with the blocks in use after
        the step (for a single step, from the moment the engine took it)."""
        self._kv_area[inst] += engine.num_used_blocks * (result.end_time - result.start_time)
        if result.finished:
            pool = self._instance_pool[inst]
            router = self.router
            for done in result.finished:
                idx = int(done.request_id)
                self._fate[idx] = Fate.COMPLETED
                self._ttft[idx] = done.first_token_time - done.arrival_time
                self._tpot[idx] = done.tpot_seconds
                self._finish[idx] = done.finish_time
                self._preempt[idx] = done.num_preemptions
                self._outputs_done[idx] = done.output_tokens
                self._loads[inst] -= 1
                self._pool_inflight[pool] -= 1
                router.learn(self._requests.pop(idx), done.prompt_tokens)
        return result.end_time

    # -- reporting ----------------------------------------------------------------------------
    def _report(self, workload: Workload, wall_seconds: float) -> FleetResult:
        start = float(workload.arrival_seconds[0])
        last = float(np.nanmax(self._finish)) if np.isfinite(self._finish).any() else start
        horizon = max(last, float(workload.arrival_seconds[-1])) - start
        reports = []
        for i, pool in enumerate(self.pools):
            lo, hi = self._ranges[i]
            mask = self._req_pool == i
            preemptions = sum(e.num_preemptions_total for e in self._engines[lo:hi])
            kv = sum(self._kv_area[lo:hi]) / max(pool.engine.num_gpu_blocks * pool.instances * horizon, 1e-12)
            reports.append(self._pool_report(pool.name, pool.instances, pool.engine.num_gpus, pool.price,
                                             mask, preemptions, kv, horizon, pool.engine.max_model_len))
        everyone = np.ones(self._n, dtype=bool)
        total_gpu_price = [(p.instances * p.engine.num_gpus, p.price) for p in self.pools]
        prices = [(g, price) for g, price in total_gpu_price if price is not None]
        usd = (sum(g * price * HOURS_PER_YEAR for g, price in prices)
               if len(prices) == len(total_gpu_price) else None)
        gpus = sum(g for g, _ in total_gpu_price)
        blocks_time = sum(p.engine.num_gpu_blocks * p.instances for p in self.pools) * horizon
        fleet = self._pool_report("fleet", sum(p.instances for p in self.pools), 0, None, everyone,
                                  sum(r.preemptions for r in reports), sum(self._kv_area) / max(blocks_time, 1e-12),
                                  horizon, None)
        fleet = _replace(fleet, gpus=gpus, gpu_hours=gpus * horizon / 3600.0, usd_per_year=usd)
        fate = self._fate
        return FleetResult(
            router=self.router.name, balancer=self.balancer.value, pools=reports, fleet=fleet,
            requests=self._n, refused_gateway=int((fate == Fate.REFUSED_GATEWAY).sum()),
            refused_backend=int((fate == Fate.REFUSED_BACKEND).sum()), recovered=self._recovered,
            truncated=self._truncated, reasons=dict(self._reasons), horizon_seconds=horizon,
            wall_seconds=wall_seconds, pool_names=tuple(p.name for p in self.pools),
            request_pool=self._req_pool, request_fate=fate, ttft_seconds=self._ttft,
            tpot_seconds=self._tpot, budget_tokens=self._budget, request_preemptions=self._preempt,
            slo_attainment_by_class={name: self._attainment(mask) for name, mask in
                                     (("short", ~self._long), ("long", self._long)) if mask.any()})

    def _met(self) -> np.ndarray:
        """Per request: completed within its TTFT target and the TPOT target."""
        done = self._fate == Fate.COMPLETED
        with np.errstate(invalid="ignore"):
            met: np.ndarray = done & (self._ttft <= self._ttft_target) & (
                self._tpot <= self.slo.tpot_seconds)
        return met

    def _attainment(self, mask: np.ndarray) -> float:
        return float(self._met()[mask].mean()) if mask.any() else 1.0

    def _pool_report(self, name: str, instances: int, gpus_per_instance: int, price: float | None,
                     mask: np.ndarray, preemptions: int, kv: float, horizon: float,
                     max_model_len: int | None) -> PoolReport:
        done = mask & (self._fate == Fate.COMPLETED)
        completed = int(done.sum())
        requests = int(mask.sum())
        ttft = self._ttft[done]
        tpot = self._tpot[done]
        ok = int(self._met()[mask].sum())
        gpus = instances * gpus_per_instance
        return PoolReport(
            name=name, instances=instances, gpus=gpus, gpu_hours=gpus * horizon / 3600.0,
            usd_per_year=None if price is None else gpus * price * HOURS_PER_YEAR,
            requests=requests, completed=completed, refused=requests - completed,
            requests_per_second=completed / horizon if horizon > 0 else 0.0,
            output_tokens_per_second=float(self._outputs_done[done].sum()) / horizon if horizon > 0 else 0.0,
            ttft_p50_seconds=_pct(ttft, 50), ttft_p99_seconds=_pct(ttft, 99),
            tpot_p50_seconds=_pct(tpot, 50), tpot_p99_seconds=_pct(tpot, 99),
            preemptions=int(preemptions),
            preemptions_per_1000=1000.0 * preemptions / completed if completed else 0.0,
            kv_usage_mean_ratio=float(kv), slo_attainment=ok / requests if requests else 1.0,
            max_model_len=max_model_len)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _replace(report: PoolReport, **changes: object) -> PoolReport:
    data = asdict(report)
    data.update(changes)
    return PoolReport(**data)


def simulate(
    workload: Workload,
    pools: Sequence[SimPool],
    router: Router,
    *,
    shapes: Sequence[RequestShape] | None = None,
    balancer: Balancer | str = Balancer.LEAST_LOADED,
    max_tokens: int | None = None,
    recovery: bool = True,
    slo: SloTargets | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    decode_runs: bool = True,
) -> FleetResult:
    """Run ``workload`` through ``pools`` with ``router`` choosing the pool (see FleetSimulator)."""
    sim = FleetSimulator(pools, router, balancer=balancer, recovery=recovery, slo=slo,
                         decode_runs=decode_runs)
    return sim.run(workload, shapes=shapes, max_tokens=max_tokens, seed=seed, progress=progress)
