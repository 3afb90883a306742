"""Workloads for the fleet simulator: arrivals with true prompt and output token counts.

Sources: real traces (Azure 2023 CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``; Mooncake JSONL
``timestamp`` in ms, ``input_length``, ``output_length``; any CSV/JSONL with recognisable
timestamp/input/output columns), total-token CDFs (``[[tokens, F], ...]``, split into input and
output by a fixed fraction) and synthetic log-normal lengths with Poisson arrivals. A workload
is brought to a target rate by superposing independently time-shifted copies of it
(:meth:`Workload.superposed`: what many independent user populations like the trace's would
send; each second keeps the trace's own burstiness) or, for comparison, by compressing time
(:meth:`Workload.scaled_to_rate`: a burst of minutes becomes a burst of seconds, far burstier
than any real fleet's traffic), and repeated or cut to a request count.

The simulator routes on bytes, never on these counts: :func:`synthesize_shapes` turns each
prompt's true token count into the bytes a client would send, drawing a per-request
bytes-per-token ratio around its category's mean with realistic noise and adding chat-template
framing tokens, so the estimator in the loop faces the error it faces in production.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.errors import ConfigError

_TIME_COLUMNS = ("timestamp", "TIMESTAMP", "time", "arrival_time", "arrival_timestamp", "created")
_INPUT_COLUMNS = ("input_length", "ContextTokens", "prompt_tokens", "input_tokens", "input",
                  "context_tokens", "num_prompt_tokens")
_OUTPUT_COLUMNS = ("output_length", "GeneratedTokens", "completion_tokens", "output_tokens",
                   "output", "generated_tokens", "num_output_tokens")


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests sorted by arrival; ``arrival_seconds`` starts at 0. ``category`` indexes
    ``categories`` (a content category per request, e.g. "prose" or "code")."""

    name: str
    arrival_seconds: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    category: np.ndarray
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.arrival_seconds)
        if not (len(self.prompt_tokens) == len(self.output_tokens) == len(self.category) == n):
            raise ConfigError("workload columns differ in length", path="workload")
        if n == 0:
            raise ConfigError("workload is empty", path="workload")

    def __len__(self) -> int:
        return len(self.arrival_seconds)

    @property
    def duration_seconds(self) -> float:
        return float(self.arrival_seconds[-1] - self.arrival_seconds[0])

    @property
    def rate_per_second(self) -> float:
        """Mean arrival rate (requests over the span, one gap added so n=2 behaves)."""
        span = self.duration_seconds
        return float(len(self) / span) if span > 0 else float("inf")

    @property
    def total_tokens(self) -> np.ndarray:
        total: np.ndarray = self.prompt_tokens + self.output_tokens
        return total

    def scaled_to_rate(self, rate_per_second: float) -> Workload:
        """Compress or stretch time so the mean rate is ``rate_per_second``."""
        if rate_per_second <= 0:
            raise ConfigError("must be > 0", path="rate")
        factor = self.rate_per_second / rate_per_second
        return self._with(arrival_seconds=(self.arrival_seconds - self.arrival_seconds[0]) * factor)

    @property
    def period_seconds(self) -> float:
        """The trace's span plus one mean gap: the period of its repetition (see ``resized``)."""
        return self.duration_seconds + self.duration_seconds / max(len(self) - 1, 1)

    def superposed(self, rate_per_second: float, *, seconds: float | None = None, seed: int = 0) -> Workload:
        """``ceil(rate / own rate)`` copies of the trace, each shifted by an independent uniform
        offset (circularly over its period), merged, and thinned at random to ``rate_per_second``,
        over ``seconds`` (default one period). Counts per window add up across independent
        copies, so the index of dispersion stays the trace's own (thinning by p pulls it to
        ``1 + p (D - 1)``), unlike time compression which magnifies it."""
        if rate_per_second <= 0:
            raise ConfigError("must be > 0", path="rate")
        period = self.period_seconds
        if period <= 0:
            raise ConfigError("a trace needs a time span to be superposed", path="workload")
        span = seconds if seconds is not None else period
        own_rate = len(self) / period
        copies = max(math.ceil(rate_per_second / own_rate - 1e-9), 1)
        keep = rate_per_second / (copies * own_rate)
        rng = np.random.default_rng(seed)
        base = self.arrival_seconds - self.arrival_seconds[0]
        times, index = [], []
        for offset in rng.uniform(0.0, period, copies):
            shifted = (base + offset) % period
            for lap in range(math.ceil(span / period)):
                t = shifted + lap * period
                chosen = (t < span) & (rng.random(len(t)) < keep)
                times.append(t[chosen])
                index.append(np.flatnonzero(chosen))
        t_all = np.concatenate(times)
        i_all = np.concatenate(index)
        order = np.argsort(t_all, kind="stable")
        i_all = i_all[order]
        return Workload(f"{self.name}-x{copies}", t_all[order], self.prompt_tokens[i_all], self.output_tokens[i_all],
                        self.category[i_all], self.categories)

    def resized(self, count: int) -> Workload:
        """The first ``count`` requests, the trace repeated end to end if it is shorter."""
        if count < 1:
            raise ConfigError("must be >= 1", path="requests")
        n = len(self)
        gap = self.duration_seconds / max(n - 1, 1)
        period = self.duration_seconds + gap
        idx = np.arange(count) % n
        offsets = (np.arange(count) // n) * period
        arrivals = self.arrival_seconds[idx] - self.arrival_seconds[0] + offsets
        return Workload(self.name, arrivals, self.prompt_tokens[idx], self.output_tokens[idx],
                        self.category[idx], self.categories)

    def _with(self, **changes: np.ndarray) -> Workload:
        fields = dict(name=self.name, arrival_seconds=self.arrival_seconds,
                      prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
                      category=self.category, categories=self.categories)
        fields.update(changes)
        return Workload(**fields)  # type: ignore[arg-type]  # fields: the dataclass's own, by name


def arrival_dispersion(arrival_seconds: np.ndarray, window_seconds: float = 1.0) -> float:
    """Index of dispersion (variance / mean) of the number of arrivals per window: 1 for Poisson
    arrivals, far above 1 when they come in clusters."""
    if len(arrival_seconds) < 3:
        return 1.0
    a = np.sort(np.asarray(arrival_seconds, dtype=np.float64))
    bins = max(int((a[-1] - a[0]) / window_seconds), 1)
    if bins < 5:
        return 1.0
    counts = np.histogram(a, bins=bins, range=(a[0], a[0] + bins * window_seconds))[0]
    mean = float(counts.mean())
    return float(counts.var() / mean) if mean > 0 else 1.0


def _build(name: str, times: np.ndarray, prompts: np.ndarray, outputs: np.ndarray, category: str) -> Workload:
    order = np.argsort(times, kind="stable")
    times = times[order].astype(np.float64)
    prompts = np.maximum(prompts[order].astype(np.int64), 1)
    outputs = np.maximum(outputs[order].astype(np.int64), 1)
    return Workload(name, times - times[0], prompts, outputs, np.zeros(len(times), np.int32), (category,))


def _pick(columns: Sequence[str], candidates: Sequence[str], what: str, path: Path) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ConfigError(f"no {what} column in {path.name} (looked for {', '.join(candidates)})",
                      path=str(path))


def _times(values: list[str | float | int], unit: str | None) -> np.ndarray:
    """Numbers (seconds, or ms when ``unit == 'ms'``) or ISO-like datetime strings -> seconds."""
    sample = values[0]
    if isinstance(sample, str):
        try:
            numbers = np.array([float(v) for v in values])
        except ValueError:
            stamps = np.array([str(v).strip().replace(" ", "T") for v in values], dtype="datetime64[ns]")
            seconds: np.ndarray = (stamps - stamps.min()).astype(np.int64) / 1e9
            return seconds
    else:
        numbers = np.array(values, dtype=np.float64)
    return numbers / 1000.0 if unit == "ms" else numbers


def read_trace(path: str | Path, *, category: str | None = None, timestamp_unit: str | None = None) -> Workload:
    """Read a CSV or JSONL trace. ``timestamp_unit``: "s" or "ms"; default ms for JSONL
    traces whose column is ``timestamp`` with integer values (Mooncake), else seconds.
    ``category`` defaults to "code" for file names containing "code", else "prose"."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trace file not found: {path}", path="trace")
    rows: list[dict[str, object]]
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"trace {path.name} has no rows", path="trace")
    columns = list(rows[0])
    tcol = _pick(columns, _TIME_COLUMNS, "timestamp", path)
    icol = _pick(columns, _INPUT_COLUMNS, "input-length", path)
    ocol = _pick(columns, _OUTPUT_COLUMNS, "output-length", path)
    raw_times = [r[tcol] for r in rows]
    unit = timestamp_unit
    if unit is None and path.suffix == ".jsonl" and tcol == "timestamp" and isinstance(raw_times[0], int):
        unit = "ms"
    times = _times(raw_times, unit)  # type: ignore[arg-type]  # csv/json rows: str or numbers
    prompts = np.array([int(float(r[icol])) for r in rows])  # type: ignore[arg-type]  # csv/json rows: str or numbers
    outputs = np.array([int(float(r[ocol])) for r in rows])  # type: ignore[arg-type]  # csv/json rows: str or numbers
    cat = category or ("code" if "code" in path.stem.lower() else "prose")
    return _build(path.stem, times, prompts, outputs, cat)


def from_cdf(
    cdf: Sequence[Sequence[float]],
    count: int,
    rate_per_second: float,
    *,
    input_fraction: float = 0.8,
    seed: int = 0,
    name: str = "cdf",
    category: str = "prose",
) -> Workload:
    """Sample total tokens from a piecewise-linear CDF ``[[tokens, F], ...]`` (F from 0 at 0
    tokens), split ``input_fraction`` / rest into prompt and output; Poisson arrivals."""
    points = np.array([(0.0, 0.0), *[(float(t), float(f)) for t, f in cdf]])
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.0, points[-1, 1], count)
    totals = np.maximum(np.interp(u, points[:, 1], points[:, 0]).round(), 2).astype(np.int64)
    prompts = np.maximum((totals * input_fraction).round().astype(np.int64), 1)
    outputs = np.maximum(totals - prompts, 1)
    times = np.cumsum(rng.exponential(1.0 / rate_per_second, count))
    return _build(name, times, prompts, outputs, category)


def read_cdf_file(path: str | Path) -> list[list[float]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    pairs = data["cdf"] if isinstance(data, dict) else data
    return [[float(t), float(f)] for t, f in pairs]


def synthetic(
    count: int,
    rate_per_second: float,
    *,
    prompt_median_tokens: float = 1024,
    prompt_sigma: float = 1.0,
    output_median_tokens: float = 128,
    output_sigma: float = 0.8,
    max_total_tokens: int = 131072,
    seed: int = 0,
    category: str = "prose",
) -> Workload:
    """Log-normal prompt and output lengths, Poisson arrivals."""
    rng = np.random.default_rng(seed)
    prompts = np.clip(rng.lognormal(np.log(prompt_median_tokens), prompt_sigma, count), 1, max_total_tokens // 2)
    outputs = np.clip(rng.lognormal(np.log(output_median_tokens), output_sigma, count), 1, max_total_tokens // 2)
    times = np.cumsum(rng.exponential(1.0 / rate_per_second, count))
    return _build("synthetic", times, prompts.round(), outputs.round(), category)


# -- bytes a client would send ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TextProfile:
    """How one category's text tokenizes: mean bytes per token, and the per-request spread of
    that ratio (log-normal sigma; 0.08 means ~8%)."""

    bytes_per_token: float
    ratio_sigma: float = 0.08


#: Measured bytes/token on real text with the Llama-3 tokenizer (REFERENCE.md §5).
LLAMA3_PROFILES: dict[str, TextProfile] = {
    "prose": TextProfile(4.6, 0.08),
    "code": TextProfile(3.4, 0.10),
    "structured": TextProfile(3.9, 0.08),
    "cjk": TextProfile(3.4, 0.12),
}
#: Chat-template framing the backend counts on top of the text (Llama-3: ~5 per message plus
#: ~5 per request), which a pure bytes ratio does not see.
FRAMING_TOKENS_PER_MESSAGE = 5
FRAMING_TOKENS_PER_REQUEST = 5


def synthesize_shapes(
    workload: Workload,
    *,
    profiles: dict[str, TextProfile] | None = None,
    seed: int = 0,
) -> list[RequestShape]:
    """One RequestShape per request: 1-4 messages, bytes = (true prompt tokens - framing) x a
    per-request ratio drawn log-normally around the category mean."""
    profiles = profiles or LLAMA3_PROFILES
    rng = np.random.default_rng(seed)
    n = len(workload)
    messages = rng.integers(1, 5, n)
    framing = FRAMING_TOKENS_PER_REQUEST + FRAMING_TOKENS_PER_MESSAGE * messages
    text_tokens = np.maximum(workload.prompt_tokens - framing, 1)
    means = np.empty(n)
    sigmas = np.empty(n)
    classes: list[ContentClass] = []
    for code, name in enumerate(workload.categories):
        profile = profiles.get(name, profiles.get("prose", TextProfile(4.0)))
        mask = workload.category == code
        means[mask] = profile.bytes_per_token
        sigmas[mask] = profile.ratio_sigma
        classes.append(ContentClass(name) if name in {c.value for c in ContentClass} else ContentClass.PROSE)
    ratios = means * np.exp(rng.normal(0.0, 1.0, n) * sigmas - sigmas**2 / 2)
    text_bytes = np.maximum((text_tokens * ratios).round(), 1).astype(np.int64)
    cats = workload.category
    return [
        RequestShape(int(b), 0, int(m), 0, 0, 0, None, classes[int(c)])
        for b, m, c in zip(text_bytes, messages, cats, strict=True)
    ]
