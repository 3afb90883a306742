"""Measured per-instance throughput from vLLM's own benchmark: read the result file of
``vllm bench serve --save-result`` and decide whether its figure can size a pool.

Two things make a benchmark's ``request_throughput`` a capacity figure for a pool. The run must
have saturated the instance (offered more than it could serve), otherwise it measured the
offered rate. And its requests must resemble the pool's: an instance serves fewer long
requests per second than short ones, so the figure transfers only when the mean prompt and
output lengths are close to the pool's (:func:`check_lengths`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from litellm_dualpool.errors import ConfigError

#: A finite-rate run whose throughput reached this share of the offered rate kept up with its
#: arrivals: it measured the load it was given, not what the instance can serve.
SATURATION_SHARE = 0.9
#: The bench's mean prompt or output length may differ from the pool's by this share before
#: its throughput is reported as not transferable.
LENGTH_TOLERANCE = 0.25


@dataclass(frozen=True, slots=True)
class VllmBench:
    """One ``vllm bench serve`` run on one instance. ``request_rate`` is the offered rate
    (``inf``: every request sent at once); mean lengths are per completed request."""

    source: str
    request_throughput: float
    completed: int
    failed: int
    request_rate: float
    max_concurrency: int | None
    mean_prompt_tokens: float
    mean_output_tokens: float

    @property
    def warnings(self) -> tuple[str, ...]:
        """What to tell the operator about a file that is accepted all the same."""
        out = []
        if self.failed > 0:
            out.append(f"{self.source}: {self.failed} of {self.completed + self.failed} requests "
                       "failed; the throughput counts only the completed ones")
        if self.max_concurrency is not None:
            out.append(f"{self.source}: run with --max-concurrency {self.max_concurrency}; a "
                       "capacity figure only if that is at least the server's --max-num-seqs")
        return tuple(out)

    def to_dict(self) -> dict[str, object]:
        """JSON-safe; an unbounded rate is written ``"inf"``, as vLLM writes it."""
        return {"file": self.source, "request_throughput": self.request_throughput,
                "completed": self.completed, "failed": self.failed,
                "request_rate": "inf" if math.isinf(self.request_rate) else self.request_rate,
                "max_concurrency": self.max_concurrency,
                "mean_prompt_tokens": self.mean_prompt_tokens,
                "mean_output_tokens": self.mean_output_tokens, "warnings": list(self.warnings)}


def read_vllm_bench(path: str | Path, *, option: str = "bench") -> VllmBench:
    """Parse and vet one result file; ``option`` (e.g. ``short_bench``) prefixes error paths.
    Refuses what cannot be a saturation throughput rather than planning on it."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read {source}: {error.strerror}", path=option) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{source} is not a JSON file ({error}); give one `vllm bench serve "
                          "--save-result` run per file (not --append-result)", path=option) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} holds a JSON {type(data).__name__}, not the object "
                          "`vllm bench serve --save-result` writes", path=option)

    def number(key: str) -> float:
        value = data.get(key)
        if value is None:
            raise ConfigError(f"missing in {source} (`vllm bench serve --save-result` writes it)",
                              path=f"{option}.{key}")
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigError(f"{value!r} in {source} is not a number", path=f"{option}.{key}")
        return float(value)

    throughput = number("request_throughput")
    if not 0 < throughput < math.inf:
        raise ConfigError(f"{throughput:g} in {source}: needs a positive throughput",
                          path=f"{option}.request_throughput")
    completed = number("completed")
    if completed < 1 or completed != int(completed):
        raise ConfigError(f"{completed:g} in {source}: no request completed, nothing was "
                          "measured", path=f"{option}.completed")
    failed = number("failed") if "failed" in data else 0.0
    rate = _request_rate(data.get("request_rate"), source, option)
    if math.isfinite(rate) and throughput >= SATURATION_SHARE * rate:
        raise ConfigError(
            f"{source} served {throughput:.2f} of the {rate:g} req/s offered: the instance kept "
            "up, so this is the offered load, not its capacity. Rerun with --request-rate inf "
            "(or a rate above the instance's capacity)", path=f"{option}.request_rate")
    concurrency = data.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)):
        raise ConfigError(f"{concurrency!r} in {source} is not null or an integer",
                          path=f"{option}.max_concurrency")
    return VllmBench(source, throughput, int(completed), int(failed), rate, concurrency,
                     number("total_input_tokens") / completed, number("total_output_tokens") / completed)


def _request_rate(value: object, source: str, option: str) -> float:
    """vLLM writes a finite rate as a number and an unbounded one as the string ``"inf"``."""
    if value == "inf":
        return math.inf
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ConfigError(f"{value!r} in {source}: expected a positive number or \"inf\"",
                      path=f"{option}.request_rate")


@dataclass(frozen=True, slots=True)
class LengthCheck:
    """A measured pool's bench lengths beside its own traffic's (``None``: the pool gets no
    requests, so there is nothing to compare)."""

    file: str
    bench_mean_prompt_tokens: float
    bench_mean_output_tokens: float
    pool_mean_prompt_tokens: float | None
    pool_mean_output_tokens: float | None

    @property
    def warning(self) -> str | None:
        """Why the measured throughput may not hold for this pool, if it may not."""
        off = [f"{what} {bench:.0f} vs the pool's {pool:.0f}"
               for what, bench, pool in (
                   ("prompt", self.bench_mean_prompt_tokens, self.pool_mean_prompt_tokens),
                   ("output", self.bench_mean_output_tokens, self.pool_mean_output_tokens))
               if pool is not None and abs(bench - pool) > LENGTH_TOLERANCE * pool]
        if not off:
            return None
        return (f"{self.file}: mean {' and '.join(off)} tokens differ by more than "
                f"{LENGTH_TOLERANCE:.0%}; its throughput may not hold for this pool (rerun the "
                "bench with --random-input-len/--random-output-len near the pool's means)")

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "bench_mean_prompt_tokens": self.bench_mean_prompt_tokens,
                "bench_mean_output_tokens": self.bench_mean_output_tokens,
                "pool_mean_prompt_tokens": self.pool_mean_prompt_tokens,
                "pool_mean_output_tokens": self.pool_mean_output_tokens, "warning": self.warning}


def check_lengths(bench: VllmBench, pool_prompt_tokens: float | None,
                  pool_output_tokens: float | None) -> LengthCheck:
    return LengthCheck(bench.source, bench.mean_prompt_tokens, bench.mean_output_tokens,
                       pool_prompt_tokens, pool_output_tokens)
