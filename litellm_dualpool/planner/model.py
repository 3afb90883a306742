"""The analytical cost model: how many GPUs a homogeneous fleet and a split (dual- or N-pool)
fleet need for a workload, at SLOs, and which short-pool threshold is cheapest.

Three layers, each explainable on its own:

1. **Closed form** (the paper's): ``saving = alpha * (1 - 1/rho)``, alpha the share of requests
   whose total tokens fit the short pool, rho the per-instance throughput of a short-configured
   instance over a long-configured one on the *same* (short) requests. The paper's rho compares
   saturation throughputs, while the fleet is sized by the SLO, so the two forms disagree; the
   plan's ``rho`` is therefore goodput at the SLO (what the tuned homogeneous configuration costs
   to serve the short requests at the SLO over what the short pool costs), with the paper's
   ``rho_saturation`` beside it.
2. **Discrete sizing**: per pool ``n = ceil(lambda_pool / (u * mu_pool))`` with u the
   utilisation cap and mu the instance's saturation throughput on the pool's own requests
   (from the engine model, ``sim.capacity``, or the user's measurements), at least one
   instance per pool; cost = sum(n * gpus_per_instance * $/GPU-h).
3. **SLO check** (a queueing model per pool, see :func:`predict_load`): n is raised until the
   predicted P99 TTFT and P99 TPOT meet the targets. The binding constraint is reported.
4. **KV check** (``sim.kv_headroom``, per pool): the largest ``max_num_seqs`` whose P99 KV
   demand on the pool's own lengths fits the KV cache, and the worst case
   ``kv_capacity // max_model_len``. Above it the cache can overflow with every slot busy and
   vLLM preempts; the plan reports it (``kv.can_preempt``) and, between equally cheap short-pool
   sequence counts, prefers one that cannot overflow. It does not change the sizing: the
   engine-model throughputs already pay for the preemptions they incur.

vLLM flags per pool are derived, not guessed: ``max_num_batched_tokens`` is the largest token
count whose step time stays within the TPOT target (a step carrying a full prefill chunk is
what stalls every decode in it), ``max_num_seqs`` of the short pool is swept for the cheapest.

5. **Configuration search** (with a :class:`SearchSpace`): every pool, and the homogeneous
   fleet, independently picks the cheapest GPU type, tensor-parallel size, ``max_num_seqs`` and
   ``max_num_batched_tokens`` that meets the SLO. A split is only worth what it saves against
   the best homogeneous fleet the same search finds (``tuned_homogeneous``), so that is the
   baseline of the headline saving; the paper's 16-sequence fleet and vLLM's own defaults are
   reported beside it, which separates what the configuration saves from what the split saves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.planner.queueing import WaitDistribution, mgc_wait
from litellm_dualpool.planner.vllm_bench import LengthCheck, VllmBench, check_lengths
from litellm_dualpool.sim.capacity import saturation_throughput
from litellm_dualpool.sim.catalog import (
    GpuSpec,
    ModelSpec,
    get_gpu,
    get_model,
    vllm_default_scheduler_flags,
)
from litellm_dualpool.sim.engine import EngineConfig
from litellm_dualpool.sim.fleet import SloTargets
from litellm_dualpool.sim.kv_headroom import KvDemand, KvHeadroom, kv_demand
from litellm_dualpool.sim.roofline import StepTimeModel
from litellm_dualpool.sim.workload import Workload, arrival_dispersion

HOURS_PER_YEAR = 8760.0
#: Short-pool max_model_len candidates the threshold sweep tries.
DEFAULT_THRESHOLDS = (2048, 4096, 8192, 16384, 32768)
#: Utilisation cap: a pool is never planned above this share of its saturation throughput.
DEFAULT_UTILISATION = 0.9
#: A full step (decodes + prefill chunk) may use at most this share of the TPOT target, leaving
#: room for the KV reads of long contexts and scheduling jitter.
TPOT_STEP_MARGIN = 0.9
#: Short-pool max_num_seqs candidates (capped by max_num_batched_tokens, as vLLM requires).
SHORT_SEQS_CANDIDATES = (32, 64, 128, 256)
#: The paper's long / homogeneous configuration: 16 sequences of the worst-case context.
DEFAULT_LONG_MAX_NUM_SEQS = 16
DEFAULT_LONG_MAX_MODEL_LEN = 65536
#: Granularity and bounds of the derived max_num_batched_tokens.
BATCH_TOKENS_STEP = 64
BATCH_TOKENS_MAX = 16384
#: Window over which the burstiness of a pool's arrivals is measured (about a few prefills).
BURST_WINDOW_SECONDS = 1.0
#: Windows of the burstier fit (``arrivals="burst"``): the largest dispersion over them.
BURST_FIT_WINDOWS_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Least-loaded balancing pools prefill queues only partly (it sees in-flight counts, not
#: queued prompt tokens): at least pairs of instances, more where few requests decode and the
#: count is mostly the prefill queue (``balancer_pooling``).
BALANCER_POOLING = 2
#: The pool size beyond which the balancer pools prompt queues no further (``balancer_pooling``
#: takes n ** w with n capped here). Measured once, on the fleet simulator
#: (bench/pool_scale_check.py, Mooncake's tuned 8x A100 fleet at a fixed load per instance,
#: docs/evaluation.md "Round 5"): P99 TTFT over the allowance falls from 8.6 s at 10 instances
#: to 2.6 s at 164 and no further (2.7, 2.0, 1.7 s at 327, 654, 1,308).
BALANCER_POOLING_MAX_INSTANCES = 160
#: max_num_seqs values the configuration search tries (each capped at the pool's KV-safe count).
SEARCH_MAX_NUM_SEQS = (16, 32, 64, 128, 256, 512, 1024)
#: The seqs sweep of one (GPU, TP, batched tokens) stops when doubling max_num_seqs raises the
#: saturation throughput by less than this factor (more slots then only add queueing inside).
SEQS_GAIN_MIN = 1.02
#: Monte Carlo samples for the P99 predictions (fixed seed: plans are deterministic).
_SAMPLES = 4000
_Q = 0.99


# -- inputs ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LengthMix:
    """Prompt and output token counts of a workload's requests (the planner's view of it) and,
    from a trace, their arrival times (for the burstiness of each pool's arrival stream).

    ``superposed_keep_fraction``: None when ``arrival_seconds`` is the planned stream itself;
    otherwise they are one copy of the trace at its own rate, and the planned stream is many
    independent time-shifted copies of it thinned to this fraction (``Workload.superposed``),
    whose dispersion follows from the copy's without building millions of arrivals."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_seconds: np.ndarray | None = None
    superposed_keep_fraction: float | None = None
    #: a burstier fit: the dispersion is the largest over these windows (seconds) instead of the
    #: one asked for, so a pool sees its stream's worst time scale
    dispersion_windows: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.prompt_tokens) != len(self.output_tokens):
            raise ConfigError("prompt and output arrays differ in length", path="workload")

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    @property
    def total_tokens(self) -> np.ndarray:
        total: np.ndarray = self.prompt_tokens + self.output_tokens
        return total

    @property
    def arrival_model(self) -> str:
        if self.arrival_seconds is None:
            return "Poisson (no arrival times)"
        if self.superposed_keep_fraction is None:
            return "the given arrival times"
        if self.dispersion_windows:
            windows = ", ".join(f"{w:g}" for w in self.dispersion_windows)
            return f"superposed time-shifted copies of the trace, burstiness the largest over {windows} s windows"
        return "superposed time-shifted copies of the trace"

    def share_within(self, low_exclusive: int, high_inclusive: int) -> float:
        t = self.total_tokens
        return float(((t > low_exclusive) & (t <= high_inclusive)).mean()) if len(t) else 0.0

    def within(self, low_exclusive: int, high_inclusive: int) -> LengthMix:
        t = self.total_tokens
        mask = (t > low_exclusive) & (t <= high_inclusive)
        arrivals = None if self.arrival_seconds is None else self.arrival_seconds[mask]
        return LengthMix(self.prompt_tokens[mask], self.output_tokens[mask], arrivals, self.superposed_keep_fraction,
                         self.dispersion_windows)

    def arrival_dispersion(self, window_seconds: float = 1.0) -> float:
        """Index of dispersion of arrival counts (variance / mean of the number of arrivals per
        ``window_seconds``): 1 for Poisson arrivals and the default without arrival times; far
        above 1 when requests of this pool come in clusters (long conversations do). Used as
        the arrival variability ca^2 of the queueing check (never below 1)."""
        if self.arrival_seconds is None:
            return 1.0
        windows = self.dispersion_windows or (window_seconds,)
        own = max(arrival_dispersion(self.arrival_seconds, w) for w in windows)
        if self.superposed_keep_fraction is not None:
            own = 1.0 + self.superposed_keep_fraction * (own - 1.0)
        return max(own, 1.0)

    @classmethod
    def from_workload(cls, workload: Workload) -> LengthMix:
        """The workload's arrivals as they are (scale or superpose it to the planned rate first:
        burstiness is measured per second)."""
        return cls(workload.prompt_tokens.astype(np.int64), workload.output_tokens.astype(np.int64),
                   workload.arrival_seconds.astype(np.float64))

    @classmethod
    def from_trace(cls, workload: Workload, rate_per_second: float, arrivals: str = "superpose") -> LengthMix:
        """The trace brought to ``rate_per_second``: ``superpose`` (independent time-shifted
        copies, the default), ``burst`` (the same copies with the burstiness of the worst of
        several time scales, BURST_FIT_WINDOWS_SECONDS: a burstier fit) or ``compress`` (time
        compressed, far burstier; for comparison)."""
        if arrivals == "compress":
            return cls.from_workload(workload.scaled_to_rate(rate_per_second))
        if arrivals not in ("superpose", "burst"):
            raise ConfigError(f"unknown arrival model {arrivals!r} (superpose, burst, compress)", path="arrivals")
        own_rate = len(workload) / workload.period_seconds
        copies = max(math.ceil(rate_per_second / own_rate - 1e-9), 1)
        mix = cls.from_workload(workload)
        windows = BURST_FIT_WINDOWS_SECONDS if arrivals == "burst" else None
        return replace(mix, superposed_keep_fraction=rate_per_second / (copies * own_rate), dispersion_windows=windows)

    @classmethod
    def from_totals(cls, totals: Sequence[int] | np.ndarray, output_fraction: float = 0.15) -> LengthMix:
        """Split total tokens into prompt and output (Azure 2023 conv: outputs are ~15%)."""
        t = np.maximum(np.asarray(totals, dtype=np.int64), 2)
        out = np.maximum(np.round(t * output_fraction).astype(np.int64), 1)
        return cls(t - out, out)

    @classmethod
    def from_percentiles(cls, prompt: dict[float, float], output: dict[float, float],
                         count: int = 20000, seed: int = 0) -> LengthMix:
        """Sample lengths from percentile summaries ({50: 1020, 90: 2734, 99: 4142, 100: 14050});
        the quantile function is interpolated log-linearly between the given points."""
        rng = np.random.default_rng(seed)
        return cls(_sample_quantiles(prompt, count, rng, "prompt"),
                   _sample_quantiles(output, count, rng, "output"))


def _sample_quantiles(points: dict[float, float], count: int, rng: np.random.Generator,
                      path: str) -> np.ndarray:
    if not points:
        raise ConfigError("needs at least one percentile", path=path)
    qs = sorted(points)
    if any(not 0 <= q <= 100 for q in qs) or any(points[q] < 1 for q in qs):
        raise ConfigError("percentiles in [0, 100] with values >= 1", path=path)
    values = [float(points[q]) for q in qs]
    if values != sorted(values):
        raise ConfigError("percentile values must not decrease", path=path)
    if qs[0] > 0:  # the minimum: a tenth of the lowest given percentile
        qs, values = [0.0, *qs], [max(values[0] / 10.0, 1.0), *values]
    if qs[-1] < 100:  # the maximum: extrapolate the last log-slope to the 100th percentile
        qs, values = [*qs, 100.0], [*values, values[-1] * 2.0]
    u = rng.uniform(0.0, 100.0, count)
    logs = np.interp(u, qs, np.log(values))
    return np.maximum(np.round(np.exp(logs)).astype(np.int64), 1)


#: Requests with more total tokens than this are the "long" class of a per-class TTFT target
#: (and of the simulator's per-class attainment) unless the target names its own boundary.
DEFAULT_CLASS_BOUNDARY_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class Slo:
    """Fleet targets: P99 time to first token and P99 of each request's mean time per token.

    The TTFT target may grow with the prompt, ``ttft_p99_seconds + ttft_seconds_per_prompt_token
    * prompt_tokens`` (``2s+1s/8k``): a long prompt's prefill alone can take seconds, and a flat
    target would price a long pool by its longest prompts. It may also differ by request class
    (``short=1s,long=4s+1s/8k``): requests with more than ``class_boundary_tokens`` total tokens
    get the ``long_*`` target, whichever pool serves them, so a split and a homogeneous fleet
    are held to the same per-request targets. 99% of requests must meet their own target."""

    ttft_p99_seconds: float = 2.0
    tpot_p99_seconds: float = 0.080
    ttft_seconds_per_prompt_token: float = 0.0
    long_ttft_p99_seconds: float | None = None  # None: the long class has the short class's target
    long_ttft_seconds_per_prompt_token: float = 0.0
    class_boundary_tokens: int = DEFAULT_CLASS_BOUNDARY_TOKENS

    def __post_init__(self) -> None:
        if not (self.ttft_p99_seconds > 0 and self.tpot_p99_seconds > 0):
            raise ConfigError("SLO targets must be > 0", path="slo")
        if self.ttft_seconds_per_prompt_token < 0 or self.long_ttft_seconds_per_prompt_token < 0:
            raise ConfigError("the per-token TTFT allowance must be >= 0", path="slo.ttft")
        if self.long_ttft_p99_seconds is not None and not self.long_ttft_p99_seconds > 0:
            raise ConfigError("SLO targets must be > 0", path="slo.ttft.long")
        if self.class_boundary_tokens < 1:
            raise ConfigError("the class boundary must be >= 1 token", path="slo.ttft.boundary")

    @property
    def per_class(self) -> bool:
        return self.long_ttft_p99_seconds is not None

    def ttft_allowance_seconds(self, prompt_tokens: np.ndarray, total_tokens: np.ndarray | None = None) -> np.ndarray:
        """Each request's TTFT target minus ``ttft_p99_seconds``: the prompt-dependent part and,
        with per-class targets, the long class's difference (needs ``total_tokens``). A request
        meets its target when TTFT - allowance <= ttft_p99_seconds."""
        prompts = np.asarray(prompt_tokens, dtype=np.float64)
        short = self.ttft_seconds_per_prompt_token * prompts
        if self.long_ttft_p99_seconds is None:
            return short
        if total_tokens is None:
            raise ConfigError("a per-class TTFT target needs each request's total tokens", path="slo.ttft")
        long_ = (self.long_ttft_p99_seconds - self.ttft_p99_seconds
                 + self.long_ttft_seconds_per_prompt_token * prompts)
        result: np.ndarray = np.where(np.asarray(total_tokens) > self.class_boundary_tokens, long_, short)
        return result

    @property
    def ttft_text(self) -> str:
        short = _target_text(self.ttft_p99_seconds, self.ttft_seconds_per_prompt_token)
        if self.long_ttft_p99_seconds is None:
            return short
        long_ = _target_text(self.long_ttft_p99_seconds, self.long_ttft_seconds_per_prompt_token)
        return f"short {short}, long (over {self.class_boundary_tokens} tokens) {long_}"

    def sim_targets(self) -> SloTargets:
        """The same targets for the fleet simulator's per-request check."""
        return SloTargets(self.ttft_p99_seconds, self.tpot_p99_seconds, self.ttft_seconds_per_prompt_token,
                          self.class_boundary_tokens, self.long_ttft_p99_seconds,
                          self.long_ttft_seconds_per_prompt_token)

    @classmethod
    def parse(cls, ttft: str, tpot_seconds: float = 0.080) -> Slo:
        """``--slo-ttft``: one target for every request (``2s``, ``2s+1s/8k``) or one per class,
        ``short=1s,long=4s+1s/8k`` with an optional ``boundary=8k`` (total tokens above which a
        request is long; default 8192)."""
        text = ttft.replace(" ", "").lower()
        if "=" not in text:
            base, per_token = parse_ttft_slo(ttft)
            return cls(base, tpot_seconds, per_token)
        parts: dict[str, str] = {}
        for item in text.split(","):
            key, eq, value = item.partition("=")
            if not eq or key not in ("short", "long", "boundary") or key in parts or not value:
                raise ConfigError(f"expected short=TARGET,long=TARGET[,boundary=TOKENS], got {ttft!r}",
                                  path="slo_ttft")
            parts[key] = value
        if "short" not in parts or "long" not in parts:
            raise ConfigError(f"a per-class target names both short= and long=, got {ttft!r}", path="slo_ttft")
        short, long_ = parse_ttft_slo(parts["short"]), parse_ttft_slo(parts["long"])
        boundary = _tokens(parts.get("boundary", str(DEFAULT_CLASS_BOUNDARY_TOKENS)), ttft)
        return cls(short[0], tpot_seconds, short[1], long_[0], long_[1], boundary)


def _target_text(base: float, per_token: float) -> str:
    if not per_token:
        return f"{base:g} s"
    return f"{base:g} s + {per_token * 8192:g} s per 8K prompt tokens"


def _tokens(part: str, text: str) -> int:
    scale = 1024 if part.endswith("k") else 1
    try:
        tokens = float(part.removesuffix("k")) * scale
    except ValueError:
        raise ConfigError(f"bad token count {part!r} in {text!r}", path="slo_ttft") from None
    if not (math.isfinite(tokens) and tokens >= 1):
        raise ConfigError(f"token count must be >= 1 in {text!r}", path="slo_ttft")
    return int(tokens)


def parse_ttft_slo(text: str) -> tuple[float, float]:
    """``"2s"``, ``"500ms"``, ``"2"`` (seconds) or ``"2s+1s/8k"`` (2 s plus 1 s per 8192 prompt
    tokens; ``k`` is 1024) -> (base seconds, seconds per prompt token)."""
    base_text, plus, extra = text.replace(" ", "").lower().partition("+")
    base = _seconds(base_text, text)
    if not plus:
        return base, 0.0
    amount, slash, tokens_text = extra.partition("/")
    if not slash:
        raise ConfigError(f"expected BASE+SECONDS/TOKENS (e.g. 2s+1s/8k), got {text!r}", path="slo_ttft")
    scale = 1024 if tokens_text.endswith("k") else 1
    try:
        tokens = float(tokens_text.removesuffix("k")) * scale
    except ValueError:
        raise ConfigError(f"bad token count {tokens_text!r} in {text!r}", path="slo_ttft") from None
    if tokens <= 0:
        raise ConfigError(f"token count must be > 0 in {text!r}", path="slo_ttft")
    return base, _seconds(amount, text, allow_zero=True) / tokens


def _seconds(part: str, text: str, *, allow_zero: bool = False) -> float:
    unit = 1e-3 if part.endswith("ms") else 1.0
    number = part.removesuffix("ms").removesuffix("s")
    try:
        value = float(number) * unit
    except ValueError:
        raise ConfigError(f"bad duration {part!r} in {text!r} (e.g. 2s, 500ms)", path="slo_ttft") from None
    if value < 0 or (value == 0 and not allow_zero) or not math.isfinite(value):
        raise ConfigError(f"duration must be > 0 in {text!r}", path="slo_ttft")
    return value


@dataclass(frozen=True, slots=True)
class Hardware:
    """What one instance runs on. ``usd_per_gpu_hour`` defaults to the catalogue anchor."""

    gpu: GpuSpec
    model: ModelSpec
    tensor_parallel_size: int
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    usd_per_gpu_hour: float = 0.0

    @classmethod
    def build(cls, gpu: str | GpuSpec, model: str | ModelSpec, *, tensor_parallel_size: int | None = None,
              dtype: str = "bfloat16", kv_cache_dtype: str = "auto",
              gpu_memory_utilization: float = 0.9, usd_per_gpu_hour: float | None = None,
              min_kv_tokens: int = 4 * DEFAULT_LONG_MAX_MODEL_LEN) -> Hardware:
        """``tensor_parallel_size=None`` picks the smallest power of two (up to a node) whose KV
        cache holds ``min_kv_tokens`` (four worst-case sequences by default)."""
        g = get_gpu(gpu) if isinstance(gpu, str) else gpu
        m = get_model(model) if isinstance(model, str) else model
        price = usd_per_gpu_hour if usd_per_gpu_hour is not None else g.usd_per_gpu_hour
        if price is None:
            raise ConfigError(f"no price known for {g.name}; give --price", path="price")
        hw = cls(g, m, tensor_parallel_size or 1, dtype, kv_cache_dtype, gpu_memory_utilization, price)
        if tensor_parallel_size is not None:
            hw.engine(8192, 16, 8192)  # raises ConfigError if the model does not fit
            return hw
        tp = 1
        while tp <= g.gpus_per_node:
            try:
                if hw.with_tp(tp).engine(8192, 16, 8192).kv_capacity_tokens >= min_kv_tokens:
                    return hw.with_tp(tp)
            except ConfigError:
                pass
            tp *= 2
        raise ConfigError(f"{m.name} does not fit one node of {g.name} with a KV cache of "
                          f"{min_kv_tokens} tokens", path="tensor_parallel_size")

    def with_tp(self, tp: int) -> Hardware:
        return replace(self, tensor_parallel_size=tp)

    def fits(self, max_model_len: int) -> bool:
        """Weights plus one ``max_model_len`` sequence fit (vLLM starts), and TP divides the heads."""
        if self.model.num_attention_heads % self.tensor_parallel_size:
            return False
        try:
            self.engine(max_model_len, 1, BATCH_TOKENS_STEP)
        except ConfigError:
            return False
        return True

    @property
    def label(self) -> str:
        return f"{self.tensor_parallel_size}x {self.gpu.name}"

    def engine(self, max_model_len: int, max_num_seqs: int, max_num_batched_tokens: int) -> EngineConfig:
        return EngineConfig(self.gpu, self.model, tensor_parallel_size=self.tensor_parallel_size,
                            max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens,
                            gpu_memory_utilization=self.gpu_memory_utilization, dtype=self.dtype,
                            kv_cache_dtype=self.kv_cache_dtype)

    @property
    def usd_per_instance_year(self) -> float:
        return self.tensor_parallel_size * self.usd_per_gpu_hour * HOURS_PER_YEAR


@dataclass(frozen=True, slots=True)
class PoolFlags:
    """The vLLM serve flags that differ between pools."""

    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int


# -- the closed form and the discrete sizing --------------------------------------------------

def closed_form_saving(alpha: float, rho: float) -> float:
    """``alpha * (1 - 1/rho)``: the fraction of a homogeneous fleet's cost a split saves when
    a share alpha of the traffic runs rho times faster per instance (no ceilings, no SLOs)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}", path="alpha")
    if rho <= 0:
        raise ConfigError(f"rho must be > 0, got {rho}", path="rho")
    return alpha * (1.0 - 1.0 / rho)


def instances_for_rate(rate_per_second: float, mu_per_instance: float, utilisation: float,
                       minimum: int = 1) -> int:
    """``ceil(lambda / (u * mu))``, at least ``minimum`` (a pool exists even when idle)."""
    if mu_per_instance <= 0 or not 0 < utilisation <= 1:
        raise ConfigError("mu must be > 0 and utilisation in (0, 1]", path="utilisation")
    # the tiny epsilon keeps exact multiples (e.g. 3.0000000001 from float error) from rounding up
    return max(minimum, math.ceil(rate_per_second / (utilisation * mu_per_instance) - 1e-9))


# -- the queueing check -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoadPrediction:
    """What the queueing model predicts for a pool of ``instances`` at ``rate_per_second``."""

    instances: int
    rate_per_second: float
    ttft_p99_seconds: float
    tpot_mean_seconds: float
    tpot_p99_seconds: float
    decode_batch: float  # mean requests decoding per instance
    prefill_busy_ratio: float  # share of time an instance spends on steps carrying prefill
    prefill_wait_p99_seconds: float
    slot_wait_p99_seconds: float
    #: P99 of TTFT minus each request's prompt-dependent allowance (== ttft_p99 without one)
    ttft_over_allowance_p99_seconds: float = math.nan

    def _ttft_checked(self) -> float:
        t = self.ttft_over_allowance_p99_seconds
        return self.ttft_p99_seconds if math.isnan(t) else t

    def meets(self, slo: Slo) -> bool:
        return self._ttft_checked() <= slo.ttft_p99_seconds and self.tpot_p99_seconds <= slo.tpot_p99_seconds

    def failing(self, slo: Slo) -> str | None:
        """Which targets this prediction misses: "ttft", "tpot", "ttft+tpot" or None."""
        misses = [name for name, bad in (("ttft", self._ttft_checked() > slo.ttft_p99_seconds),
                                         ("tpot", self.tpot_p99_seconds > slo.tpot_p99_seconds)) if bad]
        return "+".join(misses) or None


def _decode_context_tokens(mix: LengthMix) -> int:
    """Mean context a decoding request attends to: its prompt plus half its output."""
    return int(mix.prompt_tokens.mean() + mix.output_tokens.mean() / 2)


def _decode_step_seconds(engine: EngineConfig, mix: LengthMix, batch: float) -> float:
    """A pure decode step at a decode batch of ``batch`` (at least one request)."""
    b = max(round(batch), 1)
    return engine.step_time.step_seconds(b, b * _decode_context_tokens(mix), ())


def prefill_seconds(engine: EngineConfig, prompt_tokens: np.ndarray, decode_batch: float,
                    decode_context_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: (seconds its prefill takes in the engine, chunk steps it fills) on an
    instance decoding ``decode_batch`` requests of ``decode_context_tokens`` mean context.

    Why: a prompt of P tokens runs as k = P / c steps, c the step budget
    ``max_num_batched_tokens`` minus the decodes, and the chunk at offset x attends to the x
    tokens before it, so its step costs the engine's ``step_seconds`` at that offset and a long
    prompt costs more than k steps at its mean offset (a 124K-token prompt on 8x A100, 70B,
    448-token steps: about 31 s, where one linear rate at the mean offset gives about 18 s). The
    whole chunks are summed at their offsets 0, c, 2c, ...; the fractional last one is charged
    its share of a step at its offset (under load the rest of that step carries the next
    prompt's first chunk)."""
    b = max(round(decode_batch), 0)
    chunk = max(engine.max_num_batched_tokens - b, 1)
    chunks = np.asarray(prompt_tokens, dtype=np.float64) / chunk
    whole = np.floor(chunks).astype(np.int64)
    top = int(whole.max()) if len(whole) else 0
    steps = np.array(_chunk_steps(engine.step_time, b, b * decode_context_tokens, chunk, top + 1))
    before = np.concatenate(([0.0], np.cumsum(steps)))
    seconds: np.ndarray = before[whole] + (chunks - whole) * steps[whole]
    return seconds, chunks


@functools.lru_cache(maxsize=4096)
def _chunk_steps(step_time: StepTimeModel, decodes: int, decode_context_tokens: int, chunk: int,
                 count: int) -> tuple[float, ...]:
    """The engine's step seconds for chunks at offsets 0, chunk, ..., (count - 1) * chunk beside
    ``decodes`` decodes (cached: the planner's fixed point asks for the same steps often)."""
    return tuple(step_time.step_seconds(decodes, decode_context_tokens, ((i * chunk, chunk),))
                 for i in range(count))


def predict_load(engine: EngineConfig, mix: LengthMix, rate_per_second: float, instances: int,
                 *, seed: int = 0, slo: Slo | None = None, arrival_cv2: float | None = None,
                 pooling: float | None = None) -> LoadPrediction:
    """Queueing model of one pool (n instances, least-loaded balancing).

    Arrivals are as bursty as the pool's own stream in the trace: Allen-Cunneen's G/G/c factor
    (ca^2 + cs^2) / 2 takes ca^2 = the index of dispersion of the pool's arrival counts per
    second (1 without a trace), which captures clustered long requests that inter-arrival
    gaps alone miss. Least-loaded balancing sees in-flight counts, not queued prompt tokens, so
    prompts queue per instance more than in one pooled M/G/n queue: the prefill wait is the
    geometric mean of the G/G/1 wait per instance and the G/G/g wait of groups of g instances,
    g from how much of the in-flight count the balancer sees is the prefill queue
    (:func:`balancer_pooling`, at least pairs; ``pooling`` overrides it, for comparisons),
    checked against the fleet simulator on every scenario of docs/evaluation.md.

    Per instance at lambda_i = lambda/n: a prompt runs as k chunk steps (``max_num_batched_
    tokens`` minus the B decodes each), each at the engine's step time for its offset, so its
    prefill takes S (:func:`prefill_seconds`: S grows faster than the prompt, as attention does);
    otherwise steps are pure decodes of t_dec. The instance is busy prefilling rho_p =
    lambda_i * E[S] of the time; TPOT = 1 / (steps per second) = 1 / (lambda_i * E[k] + (1 -
    rho_p) / t_dec), and B = lambda_i * E[output] * TPOT (Little), solved by fixed point. Two
    waits precede the first token, each an M/G/c queue (Allen-Cunneen): prompts queue for the
    prefill servers (service = S), and, if the decode batch nears ``max_num_seqs``, requests
    queue for the n * max_num_seqs slots (service = the request's residence). P99 TTFT = P99 of
    (prefill wait + slot wait + own S). P99 TPOT = P99 over requests of the mean of their o
    steps, of which the full ones are the chunks of the prompts reaching the instance while the
    request decodes (and, at the rate the balancer lets prompts land on a prefilling instance,
    during its own prefill), in runs (:func:`full_steps_in_runs`). Both by Monte Carlo on the
    pool's own lengths.
    """
    lam = rate_per_second / instances
    o_mean = float(mix.output_tokens.mean())
    ctx = _decode_context_tokens(mix)
    seqs = engine.max_num_seqs
    batch = 0.0
    for _ in range(30):
        state = _steps_at(engine, mix, lam, batch, ctx)
        if state is None:
            return _unstable(instances, rate_per_second, batch)
        new_batch = min(float(seqs), lam * o_mean * state[4])
        if abs(new_batch - batch) < 0.05:
            batch = new_batch
            break
        batch = 0.5 * (batch + new_batch)
    state = _steps_at(engine, mix, lam, batch, ctx)
    if state is None:
        return _unstable(instances, rate_per_second, batch)
    t_dec, service, chunks, rho_p, tpot = state
    s_mean = float(service.mean())
    cv2 = float(service.var() / s_mean**2) if s_mean > 0 else 0.0
    burst = mix.arrival_dispersion(BURST_WINDOW_SECONDS) if arrival_cv2 is None else arrival_cv2
    # the balancer sees in-flight counts, not queued prefill work (see _balanced_prefill_wait)
    prefill_wait = _balanced_prefill_wait(lam, instances, s_mean, cv2, burst,
                                          balancer_pooling(instances, lam * s_mean, cv2, batch) if pooling is None else pooling)
    rng = np.random.default_rng(seed)
    residence = s_mean + prefill_wait.mean_seconds + o_mean * tpot
    out = mix.output_tokens.astype(np.float64)
    res_cv2 = float((out * tpot).var() / residence**2) if residence > 0 else 0.0
    # slots, in contrast, are exactly what the balancer equalises: one pool of n * seqs slots
    slot_wait = mgc_wait(instances * seqs, rate_per_second, residence, res_cv2, burst)
    if not (math.isfinite(prefill_wait.mean_if_waiting_seconds)
            and math.isfinite(slot_wait.mean_if_waiting_seconds)):
        return _unstable(instances, rate_per_second, batch)
    idx = rng.integers(0, len(mix), _SAMPLES)
    ttft = service[idx] + _draw(prefill_wait, rng) + _draw(slot_wait, rng)
    o = np.maximum(mix.output_tokens[idx] - 1, 1)
    # prompts reaching the instance while the request decodes bring their chunks as runs of full
    # steps; those reaching it during the request's own prefill queue behind it and run in its
    # first decode steps, at the rate the balancer lets prompts land on a prefilling instance
    steered = min(prefill_wait.p_wait / max(rho_p, 1e-9), 1.0)
    full, full_seconds = full_steps_in_runs(o, lam * (steered * service[idx] + o * tpot), chunks, service, rng)
    tpot_samples = (full_seconds + (o - full) * t_dec) / o
    over = ttft - (slo or Slo()).ttft_allowance_seconds(mix.prompt_tokens[idx], mix.total_tokens[idx])
    return LoadPrediction(instances, rate_per_second, float(np.quantile(ttft, _Q)), tpot,
                          float(np.quantile(tpot_samples, _Q)), batch, rho_p,
                          prefill_wait.quantile(_Q), slot_wait.quantile(_Q), float(np.quantile(over, _Q)))


def _steps_at(engine: EngineConfig, mix: LengthMix, lam: float, batch: float, ctx: int
              ) -> tuple[float, np.ndarray, np.ndarray, float, float] | None:
    """One instance at arrival rate `lam` with `batch` requests decoding: (decode step seconds,
    each prompt's prefill seconds and chunk count, prefill-busy share rho_p, mean TPOT), or
    None when prefill alone saturates it (rho_p >= 1). TPOT = 1 / steps per second: the chunk
    steps of lam prompts a second plus decode-only steps in the rest of the time."""
    t_dec = _decode_step_seconds(engine, mix, batch)
    service, chunks = prefill_seconds(engine, mix.prompt_tokens, batch, ctx)
    rho_p = lam * float(service.mean())
    if rho_p >= 1.0:
        return None
    return t_dec, service, chunks, rho_p, 1.0 / (lam * float(chunks.mean()) + (1.0 - rho_p) / t_dec)


def balancer_pooling(instances: int, prefill_load: float, service_cv2: float, decode_batch: float) -> float:
    """Over how many instances least-loaded balancing pools prompt queues, for a pool of
    ``instances`` each busy prefilling ``prefill_load`` of the time (prompts' prefill times of
    squared coefficient of variation ``service_cv2``) with ``decode_batch`` requests decoding.

    Why: the balancer picks the instance with the fewest requests in flight, and that count is
    the decoding requests (mean B, Poisson-like spread: variance ~ B) plus the prompts waiting
    or in prefill (M/G/1 mean L = rho + rho^2 (1 + cv2) / (2 (1 - rho)), variance ~ L). The
    share of the count's variance that is the prefill queue, w = L / (L + B), is how far its
    choice follows that queue: w = 1 (nothing decoding) is join-the-shortest-queue on prompts,
    close to one queue for all n instances; w = 0 is a choice blind to it. The pooling is
    n ** w, never below BALANCER_POOLING (pairs, the term for pools that decode much), with n
    capped at BALANCER_POOLING_MAX_INSTANCES: the fleet simulator's tail at a fixed load per
    instance stops improving there, so a full-rate pool of thousands is priced per instance
    like the slice that checks it (docs/evaluation.md, "Round 5")."""
    rho = min(max(prefill_load, 0.0), 1.0 - 1e-9)
    queued = rho + rho * rho * (1.0 + max(service_cv2, 0.0)) / (2.0 * (1.0 - rho))
    share = queued / (queued + max(decode_batch, 0.0)) if queued > 0 else 0.0
    return max(float(BALANCER_POOLING), float(min(max(instances, 1), BALANCER_POOLING_MAX_INSTANCES) ** share))


def _balanced_prefill_wait(lam: float, instances: int, s_mean: float, cv2: float,
                           burst: float, pooling: float | None = None) -> WaitDistribution:
    """Geometric mean of the waits with queues pooled over 1 and over ``pooling`` instances
    (fractional: log-interpolated; default BALANCER_POOLING): least-loaded balancing on
    in-flight counts lies between the two. A bursty stream split over n/g groups leaves each
    g/n of its excess dispersion."""
    group = max(1.0, min(float(BALANCER_POOLING if pooling is None else pooling), instances))
    waits = [_group_wait(lam, instances, s_mean, cv2, burst, g) for g in {1.0, group}]
    if any(not math.isfinite(w.mean_if_waiting_seconds) for w in waits):
        return WaitDistribution(1.0, math.inf)
    return WaitDistribution(math.prod(w.p_wait for w in waits) ** (1 / len(waits)),
                            math.prod(w.mean_if_waiting_seconds for w in waits) ** (1 / len(waits)))


def _group_wait(lam: float, instances: int, s_mean: float, cv2: float, burst: float,
                group: float) -> WaitDistribution:
    """G/G/g wait of a group of ``group`` instances (fractional: log-interpolated between the
    two whole sizes around it)."""
    low = max(1, min(math.floor(group), instances))
    high = min(low + 1, instances)

    def of(size: int) -> WaitDistribution:
        return mgc_wait(size, lam * size, s_mean, cv2, 1.0 + (burst - 1.0) * size / instances)

    a = of(low)
    frac = group - low
    if high == low or frac <= 0:
        return a
    b = of(high)
    if not (math.isfinite(a.mean_if_waiting_seconds) and math.isfinite(b.mean_if_waiting_seconds)):
        return WaitDistribution(1.0, math.inf)
    return WaitDistribution(a.p_wait ** (1 - frac) * b.p_wait ** frac,
                            a.mean_if_waiting_seconds ** (1 - frac) * b.mean_if_waiting_seconds ** frac)


def full_steps_in_runs(steps: np.ndarray, arrivals_mean: np.ndarray, chunks: np.ndarray,
                       seconds: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per decoding request of ``steps`` decode steps: (its full steps, their seconds). The
    prompts reaching its instance meanwhile are Poisson of mean ``arrivals_mean`` (per request),
    each a prompt of the pool drawn at random, bringing all its ``chunks`` (fractional: short
    prompts share a step) taking ``seconds`` (:func:`prefill_seconds`); at most ``steps`` of
    them, the seconds cut in proportion.

    Why: a prompt's chunks run back to back, so a request decoding beside a long prompt sees a
    run of full steps, not full steps scattered one at a time: a binomial count of independent
    steps has the same mean and a far thinner tail, and a pool bound by TPOT (short outputs
    beside prompts of many chunks) is priced by that tail."""
    counts = rng.poisson(np.maximum(np.asarray(arrivals_mean, dtype=np.float64), 0.0))
    total = int(counts.sum())
    steps_f = np.asarray(steps, dtype=np.float64)
    if total == 0:
        return np.zeros_like(steps_f), np.zeros_like(steps_f)
    picks = rng.integers(0, len(chunks), total)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # a sentinel after the last draw, so that trailing requests without arrivals index validly
    run_chunks = np.where(counts > 0, np.add.reduceat(np.append(chunks[picks], 0.0), starts), 0.0)
    run_seconds = np.where(counts > 0, np.add.reduceat(np.append(seconds[picks], 0.0), starts), 0.0)
    full = np.minimum(run_chunks, steps_f)
    cut = np.divide(full, run_chunks, out=np.ones_like(full), where=run_chunks > 0)
    full_seconds: np.ndarray = run_seconds * cut
    return full, full_seconds


def _draw(wait: WaitDistribution, rng: np.random.Generator) -> np.ndarray:
    waits = rng.random(_SAMPLES) < wait.p_wait
    return np.where(waits, rng.exponential(max(wait.mean_if_waiting_seconds, 1e-12), _SAMPLES), 0.0)


def _unstable(instances: int, rate: float, batch: float) -> LoadPrediction:
    return LoadPrediction(instances, rate, math.inf, math.inf, math.inf, batch, 1.0, math.inf, math.inf)


# -- flags -----------------------------------------------------------------------------------

def batch_tokens_for_tpot(hardware: Hardware, mix: LengthMix, slo: Slo, max_model_len: int) -> int:
    """The largest max_num_batched_tokens (a multiple of 64) whose full step — that many tokens,
    decodes and a prefill chunk — stays within TPOT_STEP_MARGIN of the TPOT target."""
    probe = hardware.engine(max_model_len, 1, max(BATCH_TOKENS_STEP, 1))
    st = probe.step_time
    offset = int(mix.prompt_tokens.mean() / 2) if len(mix) else 0
    budget = TPOT_STEP_MARGIN * slo.tpot_p99_seconds
    best = BATCH_TOKENS_STEP
    for tokens in range(BATCH_TOKENS_STEP, BATCH_TOKENS_MAX + 1, BATCH_TOKENS_STEP):
        if st.step_seconds(0, 0, ((offset, tokens),)) > budget:
            break
        best = tokens
    return best


# -- pools and fleets -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PoolPlan:
    """One sized pool: it serves requests with ``low_tokens < total <= flags.max_model_len``."""

    name: str
    flags: PoolFlags
    low_tokens: int
    share: float
    rate_per_second: float
    mu_per_instance: float
    instances: int
    gpus: int
    usd_per_year: float
    utilisation: float
    binding: str  # "minimum", "utilisation", "slo" or "slo_infeasible"
    prediction: LoadPrediction | None
    kv: KvHeadroom | None = None  # when the pool's KV cache can overflow (vLLM preempts)
    length_check: LengthCheck | None = None  # a measured pool: the bench's lengths vs its own
    max_in_flight: int | None = None  # per instance: where spillover should count it full
    hardware: Hardware | None = None  # the pool's GPU type and TP (None: the planner's own)
    slo_metric: str | None = None  # with binding "slo": which target ("ttft", "tpot") needs more

    @property
    def config(self) -> dict[str, object]:
        """The pool's hardware and flags, as ``--emit-config`` deploys them."""
        hw = self.hardware
        return {"gpu": hw.gpu.name if hw else None, "tp": hw.tensor_parallel_size if hw else None,
                "max_model_len": self.flags.max_model_len, "max_num_seqs": self.flags.max_num_seqs,
                "max_num_batched_tokens": self.flags.max_num_batched_tokens}

    @property
    def constraint(self) -> str:
        return f"{self.binding} ({self.slo_metric})" if self.slo_metric else self.binding

    def to_dict(self) -> dict[str, object]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "hardware"}
        d.update(self.config)
        if self.hardware is not None:
            d["usd_per_gpu_hour"] = self.hardware.usd_per_gpu_hour
        d["flags"] = asdict(self.flags)
        d["kv"] = None if self.kv is None else self.kv.to_dict()
        d["length_check"] = None if self.length_check is None else self.length_check.to_dict()
        d["prediction"] = None if self.prediction is None else {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self.prediction).items()}
        return d


@dataclass(frozen=True, slots=True)
class FleetPlan:
    pools: tuple[PoolPlan, ...]

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    @property
    def instances(self) -> int:
        return sum(p.instances for p in self.pools)

    @property
    def usd_per_year(self) -> float:
        return sum(p.usd_per_year for p in self.pools)

    @property
    def slo_met(self) -> bool:
        return all(p.binding != "slo_infeasible" for p in self.pools)

    @property
    def can_preempt(self) -> bool:
        """Some pool's KV cache can overflow with all its slots busy (see ``PoolPlan.kv``)."""
        return any(p.kv is not None and p.kv.can_preempt for p in self.pools)

    def to_dict(self) -> dict[str, object]:
        return {"gpus": self.gpus, "instances": self.instances, "usd_per_year": self.usd_per_year,
                "slo_met": self.slo_met, "can_preempt": self.can_preempt,
                "pools": [p.to_dict() for p in self.pools]}


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """What the per-pool configuration search may choose. ``hardware``: one entry per allowed GPU
    type (its price, dtype and memory utilisation; the TP it carries is ignored);
    ``tensor_parallel_sizes``: None tries every power of two up to a node where the weights plus
    one ``max_model_len`` sequence fit; ``max_num_seqs``: candidates, each capped at the pool's
    KV-safe count. ``max_num_batched_tokens`` tries the TPOT-derived size and vLLM's default."""

    hardware: tuple[Hardware, ...]
    tensor_parallel_sizes: tuple[int, ...] | None = None
    max_num_seqs: tuple[int, ...] = SEARCH_MAX_NUM_SEQS

    def __post_init__(self) -> None:
        if not self.hardware:
            raise ConfigError("needs at least one GPU type", path="gpu")
        if self.tensor_parallel_sizes is not None and min(self.tensor_parallel_sizes, default=0) < 1:
            raise ConfigError("tensor parallel sizes must be >= 1", path="tp")

    def tensor_parallel_options(self, hardware: Hardware, max_model_len: int) -> list[Hardware]:
        """Each allowed TP of one GPU type at which the model and one full sequence fit."""
        sizes = self.tensor_parallel_sizes or tuple(1 << i for i in range(8) if 1 << i <= hardware.gpu.gpus_per_node)
        return [hw for hw in (hardware.with_tp(tp) for tp in sizes) if hw.fits(max_model_len)]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One point of the search with the bound that orders it: no SLO check can size the pool
    below ``ceil(rate / (u * mu))`` instances, so ``floor_usd_per_year`` is a lower bound."""

    hardware: Hardware
    flags: PoolFlags
    mu_per_instance: float
    floor_usd_per_year: float


@dataclass
class Planner:
    """Sizes pools for one workload on one hardware at one SLO. Engine-model throughputs are
    cached per (hardware, flags, pool range); ``measured_mu`` replaces them: ``{"short": 11.2,
    "long": 2.8}`` req/s per instance (e.g. from ``vllm bench serve``), which also skips the
    queueing check (a measured goodput already includes the SLO) and the search (a measured
    figure holds for the configuration it was measured on). ``measured_bench`` gives a
    role's throughput as a ``vllm bench serve`` result instead: its request_throughput becomes
    that role's measured mu and each pool of the role gets a :class:`LengthCheck`.
    ``search``: the configuration search space; None keeps the planner's hardware and the
    derived flags for every pool (the paper's method)."""

    mix: LengthMix
    rate_per_second: float
    hardware: Hardware
    slo: Slo = field(default_factory=Slo)
    utilisation: float = DEFAULT_UTILISATION
    long_max_model_len: int = DEFAULT_LONG_MAX_MODEL_LEN
    long_max_num_seqs: int = DEFAULT_LONG_MAX_NUM_SEQS
    measured_mu: dict[str, float] | None = None
    measured_bench: dict[str, VllmBench] | None = None
    check_slo: bool = True
    saturation_requests: int = 1200
    search: SearchSpace | None = None
    #: the balancer term's pooling for every pool (None: each pool's own, ``balancer_pooling``);
    #: set only to compare terms against the simulator
    pooling: float | None = None
    _mu_cache: dict[tuple[Hardware, int, int, int, int], float] = field(default_factory=dict, repr=False)
    _kv_cache: dict[tuple[Hardware, int, int, int, int], KvDemand] = field(default_factory=dict, repr=False)
    _sub_cache: dict[tuple[int, int], LengthMix] = field(default_factory=dict, repr=False)
    _burst_cache: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)
    _search_cache: dict[tuple[int, int, str], PoolPlan] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.rate_per_second <= 0:
            raise ConfigError("must be > 0", path="rate")
        if not 0 < self.utilisation <= 1:
            raise ConfigError("must be in (0, 1]", path="utilisation")
        if self.measured_bench:
            both = set(self.measured_bench) & set(self.measured_mu or {})
            if both:
                raise ConfigError("a throughput and a bench file for the same role", path=min(both))
            self.measured_mu = {**(self.measured_mu or {}),
                                **{r: b.request_throughput for r, b in self.measured_bench.items()}}
        if self.measured_mu:
            self.search = None
        biggest = int(self.mix.total_tokens.max())
        if biggest > self.long_max_model_len:
            self.long_max_model_len = 1 << math.ceil(math.log2(biggest))

    # -- the pool's requests --
    def requests(self, low: int, high: int) -> LengthMix:
        """The requests with ``low < total <= high`` (cached: the mix can be large)."""
        key = (low, high)
        if key not in self._sub_cache:
            self._sub_cache[key] = self.mix.within(low, high)
        return self._sub_cache[key]

    def _span(self, low: int, high: int) -> tuple[int, int]:
        """The smallest range holding the same requests as ``(low, high]``: pools whose ranges
        differ only where there are no requests share their engine-model runs."""
        sub = self.requests(low, high)
        if not len(sub):
            return (low, high)
        totals = sub.total_tokens
        return (int(totals.min()) - 1, int(totals.max()))

    def burstiness(self, low: int, high: int) -> float:
        """Index of dispersion of the pool's arrivals per BURST_WINDOW_SECONDS (cached)."""
        key = (low, high)
        if key not in self._burst_cache:
            self._burst_cache[key] = self.requests(low, high).arrival_dispersion(BURST_WINDOW_SECONDS)
        return self._burst_cache[key]

    # -- throughput --
    def mu(self, flags: PoolFlags, low: int, high: int, role: str, hardware: Hardware | None = None) -> float:
        if self.measured_mu and role in self.measured_mu:
            return self.measured_mu[role]
        hw = hardware or self.hardware
        if not len(self.requests(low, high)):
            low = 0
        # max_model_len only refuses requests, and every request of the range fits it
        key = (hw, flags.max_num_seqs, flags.max_num_batched_tokens, *self._span(low, high))
        if key not in self._mu_cache:
            sub = self.requests(low, high)
            engine = hw.engine(flags.max_model_len, flags.max_num_seqs, flags.max_num_batched_tokens)
            tp = saturation_throughput(engine, sub.prompt_tokens, sub.output_tokens,
                                       requests=max(self.saturation_requests, 2 * flags.max_num_seqs))
            self._mu_cache[key] = float(tp.requests_per_second)
        return self._mu_cache[key]

    def kv(self, flags: PoolFlags, low: int, hardware: Hardware | None = None) -> KvHeadroom:
        """The pool's KV check on its own requests (``sim.kv_headroom``)."""
        hw = hardware or self.hardware
        key = (hw, flags.max_model_len, flags.max_num_batched_tokens, low, 0)
        if key not in self._kv_cache:
            sub = self.requests(low, flags.max_model_len)
            engine = hw.engine(flags.max_model_len, flags.max_num_seqs, flags.max_num_batched_tokens)
            self._kv_cache[key] = kv_demand(engine, sub.prompt_tokens, sub.output_tokens,
                                            min_seqs=max(SEARCH_MAX_NUM_SEQS))
        return self._kv_cache[key].headroom(flags.max_num_seqs)

    def flags_for(self, max_model_len: int, seqs: int, low: int, hardware: Hardware | None = None) -> PoolFlags:
        tokens = self.derived_batch_tokens(max_model_len, low, hardware)
        seqs = min(seqs, tokens)
        return PoolFlags(max_model_len, seqs, max(tokens, seqs))

    def derived_batch_tokens(self, max_model_len: int, low: int, hardware: Hardware | None = None) -> int:
        sub = self.requests(low, max_model_len)
        sub = sub if len(sub) else self.mix
        return batch_tokens_for_tpot(hardware or self.hardware, sub, self.slo, max_model_len)

    # -- one pool --
    def size_pool(self, name: str, flags: PoolFlags, low: int, role: str,
                  hardware: Hardware | None = None, *, mu: float | None = None) -> PoolPlan:
        hw = hardware or self.hardware
        share = self.mix.share_within(low, flags.max_model_len)
        rate = self.rate_per_second * share
        mu = mu if mu is not None else self.mu(flags, low, flags.max_model_len, role, hw)
        n = instances_for_rate(rate, mu, self.utilisation)
        binding = "minimum" if n == 1 and rate < self.utilisation * mu else "utilisation"
        prediction, metric = None, None
        if self.check_slo and not (self.measured_mu and role in self.measured_mu) and rate > 0:
            n, prediction, binding, metric = self._meet_slo(flags, low, rate, n, binding, hw)
        usd = n * hw.usd_per_instance_year
        return PoolPlan(name, flags, low, share, rate, mu, n, n * hw.tensor_parallel_size,
                        usd, rate / (n * mu), binding, prediction, self.kv(flags, low, hw),
                        self.length_check(role, low, flags.max_model_len),
                        self.spillover_in_flight(mu, low, flags, prediction), hw, metric)

    def spillover_in_flight(self, mu: float, low: int, flags: PoolFlags,
                            prediction: LoadPrediction | None) -> int:
        """In-flight requests per instance at which spillover should count the pool as full:
        ``ceil(mu * (TTFT target + E[output] * TPOT))``, what an instance holds when it serves its
        saturation throughput and each request waits up to the TTFT target (Little's law), and
        never more than its ``max_num_seqs`` (beyond them requests wait for a slot). The slots
        alone are far too late when prefill is the bottleneck: a 4 x A100 70B pool loses its TTFT
        with a fifth of 256 slots in flight. TPOT is the queueing model's mean, or the target
        when the pool was not modelled (measured mu)."""
        sub = self.requests(low, flags.max_model_len)
        out = float(sub.output_tokens.mean()) if len(sub) else float(self.mix.output_tokens.mean())
        tpot = (prediction.tpot_mean_seconds if prediction is not None
                and math.isfinite(prediction.tpot_mean_seconds) else self.slo.tpot_p99_seconds)
        return max(1, min(flags.max_num_seqs, math.ceil(mu * (self.slo.ttft_p99_seconds + out * tpot))))

    def length_check(self, role: str, low: int, high: int) -> LengthCheck | None:
        """A role measured by a bench file: its mean lengths beside the pool's own requests'."""
        bench = (self.measured_bench or {}).get(role)
        if bench is None:
            return None
        sub = self.requests(low, high)
        if not len(sub):
            return check_lengths(bench, None, None)
        return check_lengths(bench, float(sub.prompt_tokens.mean()), float(sub.output_tokens.mean()))

    def _meet_slo(self, flags: PoolFlags, low: int, rate: float, n: int, binding: str,
                  hw: Hardware, high: int | None = None) -> tuple[int, LoadPrediction, str, str | None]:
        """The least instances (from ``n`` up) meeting the SLO for the requests in ``(low, high]``
        (default: up to the pool's max_model_len)."""
        high = flags.max_model_len if high is None else high
        engine = hw.engine(flags.max_model_len, flags.max_num_seqs, flags.max_num_batched_tokens)
        sub = self.requests(low, high)
        burst = self.burstiness(low, high)

        def at(count: int) -> LoadPrediction:
            return predict_load(engine, sub, rate, count, slo=self.slo, arrival_cv2=burst, pooling=self.pooling)

        first = at(n)
        if first.meets(self.slo):
            return n, first, binding, None
        hi = n * 2
        while not at(hi).meets(self.slo):
            if hi > 64 * n + 64:
                return n, first, "slo_infeasible", first.failing(self.slo)
            hi *= 2
        lo = hi // 2 if hi // 2 > n else n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if at(mid).meets(self.slo):
                hi = mid
            else:
                lo = mid
        return hi, at(hi), "slo", at(hi - 1).failing(self.slo)

    # -- the configuration search --
    def candidates(self, low: int, high: int, role: str) -> list[Candidate]:
        """Every (GPU type, TP, max_num_seqs, max_num_batched_tokens) of the search space for the
        pool serving ``low < total <= high``, each with its engine-model mu and cost floor."""
        space = self.search
        if space is None:
            raise ConfigError("no search space", path="gpu")
        rate = self.rate_per_second * self.mix.share_within(low, high)
        out: list[Candidate] = []
        for base in space.hardware:
            for hw in space.tensor_parallel_options(base, high):
                derived = self.derived_batch_tokens(high, low, hw)
                for tokens in sorted({derived, vllm_default_scheduler_flags(hw.gpu)[1]}):
                    safe = self.kv(PoolFlags(high, 1, tokens), low, hw).safe_max_num_seqs
                    cap = min(safe, tokens)
                    seqs = [s for s in space.max_num_seqs if s <= cap] or [max(cap, 1)]
                    previous = 0.0
                    for s in seqs:
                        flags = PoolFlags(high, s, tokens)
                        mu = self.mu(flags, low, high, role, hw)
                        floor = instances_for_rate(rate, mu, self.utilisation) * hw.usd_per_instance_year
                        out.append(Candidate(hw, flags, mu, floor))
                        if mu < previous * SEQS_GAIN_MIN:
                            break  # more slots no longer raise throughput: the engine is saturated
                        previous = max(previous, mu)
        return out

    def search_pool(self, name: str, low: int, high: int, role: str) -> PoolPlan:
        """The cheapest configuration of one pool that meets the SLO (else the cheapest), by
        branch and bound: candidates in order of their cost floor, each sized with the SLO
        check, until the next floor is no cheaper than the best fleet found. Cached per range."""
        key = (low, high, role)
        if key not in self._search_cache:
            if self.search is None:
                raise ConfigError("no search space", path="gpu")
            best: PoolPlan | None = None
            for c in sorted(self.candidates(low, high, role), key=lambda c: (c.floor_usd_per_year,
                                                                              -c.flags.max_num_seqs)):
                if best is not None and best.binding != "slo_infeasible" and c.floor_usd_per_year >= best.usd_per_year:
                    break
                plan = self.size_pool(name, c.flags, low, role, c.hardware, mu=c.mu_per_instance)
                if best is None or _pool_rank(plan) < _pool_rank(best):
                    best = plan
            if best is None:
                raise ConfigError(f"no allowed GPU holds {self.hardware.model.name} with a {high}-token "
                                  "sequence", path="gpu")
            self._search_cache[key] = best
        return replace(self._search_cache[key], name=name)

    # -- fleets --
    def homogeneous(self) -> FleetPlan:
        """The paper's baseline: the planner's hardware, ``long_max_num_seqs`` (16) sequences."""
        flags = self.flags_for(self.long_max_model_len, self.long_max_num_seqs, 0)
        return FleetPlan((self.size_pool("homogeneous", flags, 0, "long"),))

    def vllm_default_homogeneous(self) -> FleetPlan:
        """The planner's hardware at vLLM's own scheduler defaults for that GPU."""
        seqs, tokens = vllm_default_scheduler_flags(self.hardware.gpu)
        flags = PoolFlags(self.long_max_model_len, min(seqs, tokens), tokens)
        return FleetPlan((self.size_pool("homogeneous", flags, 0, "long"),))

    def tuned_homogeneous(self, *baselines: FleetPlan) -> FleetPlan:
        """The cheapest homogeneous fleet: the search over the whole range, never worse than
        the ``baselines`` given (they lie in its space: same SLO, same engine model)."""
        options = list(baselines)
        if self.search is not None:
            options.append(FleetPlan((self.search_pool("homogeneous", 0, self.long_max_model_len, "long"),)))
        if not options:
            options.append(self.homogeneous())
        return min(options, key=lambda f: (not f.slo_met, f.usd_per_year))

    def split(self, boundaries: Sequence[int]) -> FleetPlan:
        """Pools at ``boundaries`` (ascending short-pool max_model_len values) plus the long pool.
        With a search space every pool searches its own configuration; without one the smallest
        pool sweeps max_num_seqs and middle pools use 64 sequences."""
        bounds = sorted(b for b in boundaries if b < self.long_max_model_len)
        pools: list[PoolPlan] = []
        low = 0
        for i, b in enumerate(bounds):
            name = "short" if i == 0 else f"ctx{b}"
            role = "short" if i == 0 else "middle"
            if self.search is not None:
                pools.append(self.search_pool(name, low, b, role))
            else:
                seqs_options = SHORT_SEQS_CANDIDATES if i == 0 else (64,)
                options = [self.size_pool(name, self.flags_for(b, s, low), low, role) for s in seqs_options]
                # equal cost: prefer the sequence count whose KV cache cannot overflow, then the larger
                pools.append(min(options, key=lambda p: (p.instances, bool(p.kv and p.kv.can_preempt),
                                                         -p.flags.max_num_seqs)))
            low = b
        if self.search is not None:
            pools.append(self.search_pool("long", low, self.long_max_model_len, "long"))
        else:
            flags = self.flags_for(self.long_max_model_len, self.long_max_num_seqs, low)
            pools.append(self.size_pool("long", flags, low, "long"))
        return FleetPlan(tuple(pools))

    def goodput_rho(self, short: PoolPlan, reference: PoolPlan) -> float:
        """rho as goodput at the SLO: what the ``reference`` (homogeneous) configuration costs to
        serve the short pool's requests, sized by the same SLO check, over what the short pool
        costs. Both sides are sized like the discrete plan, so ``alpha * (1 - 1/rho)`` tells the
        same story as the sizing (in dollars, as the pools may run on other GPU types)."""
        if self.measured_mu and {"short", "long"} <= set(self.measured_mu):
            return self.measured_mu["short"] / self.measured_mu["long"]
        hw = reference.hardware or self.hardware
        flags, high, rate = reference.flags, short.flags.max_model_len, short.rate_per_second
        if rate <= 0 or short.usd_per_year <= 0:
            return 1.0
        mu = self.mu(flags, 0, high, "long-on-short", hw)
        n = instances_for_rate(rate, mu, self.utilisation)
        if self.check_slo:
            n = self._meet_slo(flags, 0, rate, n, "utilisation", hw, high)[0]
        return n * hw.usd_per_instance_year / short.usd_per_year

    def rho(self, short: PoolFlags, hardware: Hardware | None = None) -> float:
        """The paper's rho: short-configured over long-configured (16 sequences, the planner's
        hardware) saturation throughput on the short pool's requests, per GPU-dollar when the
        short pool runs on other hardware."""
        if self.measured_mu and {"short", "long"} <= set(self.measured_mu):
            return self.measured_mu["short"] / self.measured_mu["long"]
        hw = hardware or self.hardware
        long_flags = self.flags_for(self.long_max_model_len, self.long_max_num_seqs, 0)
        on_short = self.mu(long_flags, 0, short.max_model_len, "long-on-short")
        per_usd = self.hardware.usd_per_instance_year / hw.usd_per_instance_year
        return self.mu(short, 0, short.max_model_len, "short", hw) / on_short * per_usd


def _pool_rank(pool: PoolPlan) -> tuple[bool, float, bool, int]:
    """Cheapest meeting the SLO first; equal cost: a KV cache that cannot overflow, more slots."""
    return (pool.binding == "slo_infeasible", pool.usd_per_year, bool(pool.kv and pool.kv.can_preempt),
            -pool.flags.max_num_seqs)


# -- the whole plan ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ThresholdOption:
    """One threshold of the sweep. ``rho`` is goodput at the SLO against the tuned homogeneous
    configuration (:meth:`Planner.goodput_rho`); ``rho_saturation`` is the paper's (saturation
    throughputs against the 16-sequence configuration), kept for reference."""

    threshold: int
    alpha: float
    rho: float
    closed_form_saving_fraction: float
    saving_fraction: float
    fleet: FleetPlan
    rho_saturation: float = math.nan
    closed_form_saturation_saving_fraction: float = math.nan

    def to_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold, "alpha": self.alpha, "rho": self.rho,
                "rho_saturation": self.rho_saturation,
                "closed_form_saturation_saving_fraction": self.closed_form_saturation_saving_fraction,
                "closed_form_saving_fraction": self.closed_form_saving_fraction,
                "saving_fraction": self.saving_fraction, "gpus": self.fleet.gpus,
                "usd_per_year": self.fleet.usd_per_year, "slo_met": self.fleet.slo_met}


@dataclass(frozen=True, slots=True)
class ExtraPool:
    """The best split with one more pool than the previous row, and what it adds."""

    pools: int
    boundaries: tuple[int, ...]
    gpus: int
    saving_fraction: float
    marginal_saving_fraction: float


#: The baselines every plan reports, cheapest-configured last; the headline is against the last.
BASELINES = ("paper", "vllm_default", "tuned_homogeneous")


@dataclass(frozen=True, slots=True)
class Plan:
    threshold: int
    homogeneous: FleetPlan  # the tuned homogeneous fleet: the baseline of saving_fraction
    dual_pool: FleetPlan
    saving_fraction: float
    closed_form_saving_fraction: float
    alpha: float
    rho: float
    sweep: tuple[ThresholdOption, ...]
    extra_pools: tuple[ExtraPool, ...]
    rate_per_second: float
    hardware: Hardware
    slo: Slo
    utilisation: float
    measured_bench: dict[str, VllmBench] = field(default_factory=dict)  # role -> its bench file
    rho_saturation: float = math.nan  # the paper's rho (saturation throughputs), for reference
    closed_form_saturation_saving_fraction: float = math.nan
    baselines: dict[str, FleetPlan] = field(default_factory=dict)  # name (BASELINES) -> fleet
    burstiness: dict[str, float] = field(default_factory=dict)  # stream -> dispersion per second
    arrival_model: str = ""

    def saving_vs(self, baseline: str) -> float:
        return _saving(self.baselines.get(baseline, self.homogeneous), self.dual_pool)

    @property
    def binding_constraint(self) -> str:
        """What sizes the split: the binding constraint of its costliest pool."""
        pool = max(self.dual_pool.pools, key=lambda p: p.usd_per_year)
        return f"{pool.name}: {pool.constraint}"

    def to_dict(self) -> dict[str, object]:
        hw = self.hardware
        baselines: dict[str, object] = {}
        for name, fleet in self.baselines.items():
            entry: dict[str, object] = {"gpus": fleet.gpus, "usd_per_year": fleet.usd_per_year,
                                        "slo_met": fleet.slo_met, "saving_fraction": self.saving_vs(name)}
            if len(fleet.pools) == 1:
                config = fleet.pools[0].config
                entry["config"] = {k: config[k] for k in ("gpu", "tp", "max_num_seqs", "max_num_batched_tokens")}
            baselines[name] = entry
        return {
            "threshold": self.threshold,
            "homogeneous": self.homogeneous.to_dict(),
            "dual_pool": self.dual_pool.to_dict(),
            "saving_fraction": self.saving_fraction,
            "saving_vs_tuned_fraction": self.saving_fraction,
            "saving_vs_paper_fraction": self.saving_vs("paper"),
            "saving_vs_vllm_default_fraction": self.saving_vs("vllm_default"),
            "baselines": baselines,
            "binding_constraint": self.binding_constraint,
            "closed_form_saving_fraction": self.closed_form_saving_fraction,
            "alpha": self.alpha, "rho": self.rho, "rho_saturation": self.rho_saturation,
            "closed_form_saturation_saving_fraction": self.closed_form_saturation_saving_fraction,
            "split_pays_off": self.saving_fraction > 0,
            "sweep": [o.to_dict() for o in self.sweep],
            "extra_pools": [asdict(e) for e in self.extra_pools],
            "rate_per_second": self.rate_per_second,
            "burstiness": self.burstiness, "arrival_model": self.arrival_model,
            "hardware": {"gpu": hw.gpu.name, "model": hw.model.name,
                         "tensor_parallel_size": hw.tensor_parallel_size, "dtype": hw.dtype,
                         "kv_cache_dtype": hw.kv_cache_dtype, "usd_per_gpu_hour": hw.usd_per_gpu_hour},
            "slo": asdict(self.slo), "utilisation": self.utilisation,
            "measured_bench": {role: b.to_dict() for role, b in self.measured_bench.items()},
        }


def _saving(base: FleetPlan, other: FleetPlan) -> float:
    return 1.0 - other.usd_per_year / base.usd_per_year


def make_baselines(planner: Planner) -> dict[str, FleetPlan]:
    """paper (16 sequences), vllm_default (vLLM's flags for the GPU) and tuned_homogeneous (the
    search over the whole range, never costlier than the other two)."""
    paper = planner.homogeneous()
    default = planner.vllm_default_homogeneous()
    return {"paper": paper, "vllm_default": default, "tuned_homogeneous": planner.tuned_homogeneous(paper, default)}


def make_plan(planner: Planner, thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
              max_pools: int = 3) -> Plan:
    """Sweep the short-pool threshold, keep the cheapest split that meets the SLOs (else the
    cheapest; ties: the larger threshold, which misroutes less), then try adding pools at the
    remaining candidates for the marginal gain. Savings are against the tuned homogeneous fleet."""
    baselines = make_baselines(planner)
    base = baselines["tuned_homogeneous"]
    options: list[ThresholdOption] = []
    candidates = [t for t in sorted(set(thresholds)) if t < planner.long_max_model_len]
    if not candidates:
        raise ConfigError("no threshold below the long pool's max_model_len", path="thresholds")
    for t in candidates:
        fleet = planner.split([t])
        alpha = planner.mix.share_within(0, t)
        short = fleet.pools[0]
        rho = planner.goodput_rho(short, base.pools[0])
        rho_sat = planner.rho(short.flags, short.hardware)
        options.append(ThresholdOption(t, alpha, rho, closed_form_saving(alpha, rho), _saving(base, fleet), fleet,
                                       rho_sat, closed_form_saving(alpha, rho_sat)))
    best = min(options, key=lambda o: (not o.fleet.slo_met, o.fleet.usd_per_year, -o.threshold))
    extras = [ExtraPool(2, (best.threshold,), best.fleet.gpus, best.saving_fraction, best.saving_fraction)]
    bounds = [best.threshold]
    for pools in range(3, max_pools + 1):
        trials = [(sorted([*bounds, t]), planner.split(sorted([*bounds, t])))
                  for t in candidates if t not in bounds]
        if not trials:
            break
        b, fleet = min(trials, key=lambda bt: bt[1].usd_per_year)
        s = _saving(base, fleet)
        extras.append(ExtraPool(pools, tuple(b), fleet.gpus, s, s - extras[-1].saving_fraction))
        bounds = b
    burst = {"all": planner.burstiness(0, planner.long_max_model_len),
             "over_4k": planner.burstiness(4096, planner.long_max_model_len)}
    return Plan(best.threshold, base, best.fleet, best.saving_fraction, best.closed_form_saving_fraction,
                best.alpha, best.rho, tuple(options), tuple(extras), planner.rate_per_second,
                planner.hardware, planner.slo, planner.utilisation, dict(planner.measured_bench or {}),
                best.rho_saturation, best.closed_form_saturation_saving_fraction, baselines, burst,
                planner.mix.arrival_model)


def predict_saving(
    token_totals: Sequence[int] | np.ndarray,
    rate_per_second: float,
    gpu: str = "a100",
    model: str = "llama-3-70b",
    *,
    output_fraction: float = 0.15,
    tensor_parallel_size: int | None = None,
    threshold: int | None = None,
    slo: Slo | None = None,
) -> float:
    """Predicted dual-pool saving (fraction of the homogeneous fleet's $/year) for requests of
    these total token counts at this rate; ``threshold=None`` lets the sweep choose it."""
    planner = Planner(LengthMix.from_totals(token_totals, output_fraction), rate_per_second,
                      Hardware.build(gpu, model, tensor_parallel_size=tensor_parallel_size),
                      slo=slo or Slo())
    plan = make_plan(planner, [threshold] if threshold else DEFAULT_THRESHOLDS, max_pools=2)
    return plan.saving_fraction
