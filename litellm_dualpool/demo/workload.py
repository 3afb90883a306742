"""The demo's workload: what each request is (category, token lengths, arrival), not its text.

Built-in: lengths drawn from the committed Azure 2023 table (:mod:`lengths`), code and
conversation traces mixed in their trace proportions (8,819 : 19,366), conversation split into
prose, CJK and tool-calling requests; Poisson arrivals at a chosen rate. A few requests are
placed on purpose: long ones (> 8K tokens) so the long pool serves traffic, borderline ones
around the short pool's limit (CJK and tool calls just below or above it; prose questions with a
pasted CSV log just above it, whose digits a prose ratio under-counts, so some are misrouted to
the short pool and must be recovered), and one larger than every pool (the plugin must refuse it
with a clear 400).

``load_trace`` replays an Azure CSV (TIMESTAMP, ContextTokens, GeneratedTokens) or a Mooncake
JSONL (timestamp ms, input_length, output_length) as it is, optionally rescaled to a rate.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from litellm_dualpool.demo.lengths import azure_tables


class Category(StrEnum):
    """What the request's text is; each has its own bytes-per-token ratio."""

    PROSE = "prose"
    CODE = "code"
    CJK = "cjk"
    TOOLS = "tools"
    #: a prose question with a pasted CSV access log: classified as prose by its first KB, but
    #: digits tokenize ~3x denser than words, so a class-average ratio under-counts it
    LOG = "log"


class Kind(StrEnum):
    """Why the request is in the workload."""

    TYPICAL = "typical"          # drawn from the trace statistics
    LONG = "long"                # deliberately above the short pool's limit
    BORDERLINE = "borderline"    # around the short pool's limit
    OVERSIZE = "oversize"        # larger than every pool: must be refused


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of the workload. ``prompt_tokens`` counts the chat template too."""

    index: int
    arrival_s: float
    category: Category
    kind: Kind
    prompt_tokens: int
    max_tokens: int
    stream: bool

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class WorkloadSettings:
    """Shape of the built-in workload.

    short_limit_tokens / largest_limit_tokens: the pools' max_model_len (places the special
    requests). long_fraction / borderline_fraction: shares of deliberately long / borderline
    requests. stream_fraction: share sent with ``stream=True``.
    """

    requests: int = 300
    rate_per_s: float = 6.0
    seed: int = 7
    short_limit_tokens: int = 8192
    largest_limit_tokens: int = 65536
    long_fraction: float = 0.04
    borderline_fraction: float = 0.05
    stream_fraction: float = 0.25
    oversize: bool = True
    long_max_prompt_tokens: int = 40_000


#: the Azure traces' request counts: code 8,819, conversation 19,366 over the same hour
CODE_SHARE = 8819 / (8819 + 19366)
#: how conversation requests split into text kinds (the trace has no content; our choice)
CONVERSATION_MIX = ((Category.PROSE, 0.6), (Category.CJK, 0.2), (Category.TOOLS, 0.2))
#: output budget of the special requests (long ones still answer briefly)
SPECIAL_MAX_TOKENS = (32, 256)
#: the oversize request's prompt is this multiple of the largest pool's limit
OVERSIZE_FACTOR = 1.25
#: borderline totals as fractions of the short limit: (other categories, pasted logs)
BORDERLINE_SPAN = {False: (0.95, 1.07), True: (1.03, 1.25)}
#: share of the borderline requests placed in the first fifth of the run (cold calibration)
EARLY_BORDERLINE_SHARE = 0.6


def _conversation_category(rng: random.Random) -> Category:
    draw = rng.random()
    for category, share in CONVERSATION_MIX:
        if draw < share:
            return category
        draw -= share
    return CONVERSATION_MIX[-1][0]


def _arrivals(count: int, rate_per_s: float, rng: random.Random) -> list[float]:
    now = 0.0
    times = []
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate_per_s)
    return times


def _special_indices(settings: WorkloadSettings, rng: random.Random) -> dict[int, Kind]:
    """Which positions carry the deliberate long, borderline and oversize requests."""
    n = settings.requests
    special: dict[int, Kind] = {}
    free = list(range(1, n))
    rng.shuffle(free)
    if settings.oversize and n >= 4:
        special[n // 2] = Kind.OVERSIZE
    borderline = max(1, round(n * settings.borderline_fraction)) if n >= 10 else 0
    early = math.ceil(borderline * EARLY_BORDERLINE_SHARE)
    early_slots = [i for i in range(1, max(2, n // 5)) if i not in special]
    rng.shuffle(early_slots)
    for index in early_slots[:early]:
        special[index] = Kind.BORDERLINE
    longs = max(1, round(n * settings.long_fraction)) if n >= 10 else 0
    remaining = {Kind.BORDERLINE: borderline - min(early, len(early_slots)), Kind.LONG: longs}
    for index in free:
        if index in special:
            continue
        kind = next((k for k, left in remaining.items() if left > 0), None)
        if kind is None:
            break
        special[index] = kind
        remaining[kind] -= 1
    return special


def _special_request(kind: Kind, settings: WorkloadSettings, rng: random.Random,
                     category: Category | None = None) -> tuple[Category, int, int]:
    max_tokens = rng.randint(*SPECIAL_MAX_TOKENS)
    if kind is Kind.OVERSIZE:
        return Category.PROSE, math.ceil(settings.largest_limit_tokens * OVERSIZE_FACTOR), 64
    if kind is Kind.LONG:
        low = settings.short_limit_tokens + 1024
        high = max(low + 1, settings.long_max_prompt_tokens)
        prompt = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        return rng.choice((Category.PROSE, Category.CODE)), prompt, max_tokens
    # borderline: CJK / tool calls within about +-6% of the short limit; pasted logs 3-25% above
    # it, where an estimate with the prose ratio routes short and the backend refuses.
    max_tokens = rng.randint(16, 96)
    category = category or rng.choice((Category.LOG, Category.LOG, Category.CJK, Category.TOOLS))
    span_low, span_high = BORDERLINE_SPAN[category is Category.LOG]
    total = round(settings.short_limit_tokens * rng.uniform(span_low, span_high))
    return category, max(1, total - max_tokens), max_tokens


def builtin_workload(settings: WorkloadSettings) -> list[RequestSpec]:
    """The built-in workload (deterministic for a given settings.seed)."""
    if settings.requests < 1 or settings.rate_per_s <= 0:
        raise ValueError("the workload needs at least one request and a positive rate")
    rng = random.Random(settings.seed)
    tables = azure_tables()
    arrivals = _arrivals(settings.requests, settings.rate_per_s, rng)
    special = _special_indices(settings, rng)
    specs = []
    first_borderline = min((i for i, k in special.items() if k is Kind.BORDERLINE), default=None)
    for index, arrival in enumerate(arrivals):
        kind = special.get(index, Kind.TYPICAL)
        if kind is Kind.TYPICAL:
            is_code = rng.random() < CODE_SHARE
            prompt, output = tables["code" if is_code else "conv"].sample(rng)
            category = Category.CODE if is_code else _conversation_category(rng)
        else:
            # the first borderline request is a pasted log: every run shows a misroute attempt
            forced = Category.LOG if index == first_borderline else None
            category, prompt, output = _special_request(kind, settings, rng, forced)
        stream = kind is not Kind.OVERSIZE and rng.random() < settings.stream_fraction
        specs.append(RequestSpec(index, arrival, category, kind, prompt, output, stream))
    return specs


# --- trace replay -----------------------------------------------------------------------------

def _azure_rows(path: Path) -> Iterable[tuple[float, int, int]]:
    with path.open(newline="", encoding="utf-8") as handle:
        start: datetime | None = None
        for row in csv.DictReader(handle):
            stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            start = start or stamp
            yield ((stamp - start).total_seconds(), int(row["ContextTokens"]),
                   int(row["GeneratedTokens"]))


def _mooncake_rows(path: Path) -> Iterable[tuple[float, int, int]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                yield (float(record["timestamp"]) / 1000.0, int(record["input_length"]),
                       int(record["output_length"]))


def load_trace(path: Path, *, limit: int | None = None, rate_per_s: float | None = None,
               seed: int = 7, stream_fraction: float = 0.25,
               largest_limit_tokens: int = 65536) -> list[RequestSpec]:
    """Replay a trace file as it is: its lengths and (optionally rescaled) arrival times.

    Categories: an Azure ``*code*`` file is code; other traces are conversations, split as
    the built-in workload splits them. Requests larger than ``largest_limit_tokens`` stay in
    (marked OVERSIZE): the plugin must refuse them.
    """
    text_format = "azure" if path.suffix.lower() == ".csv" else "mooncake"
    rows = list(_azure_rows(path) if text_format == "azure" else _mooncake_rows(path))
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort(key=lambda row: row[0])
    origin = rows[0][0]
    span = rows[-1][0] - origin
    scale = 1.0
    if rate_per_s is not None and span > 0 and len(rows) > 1:
        scale = (len(rows) - 1) / rate_per_s / span
    rng = random.Random(seed)
    is_code = text_format == "azure" and "code" in path.name.lower()
    specs = []
    for index, (stamp, prompt, output) in enumerate(rows):
        category = Category.CODE if is_code else _conversation_category(rng)
        kind = Kind.OVERSIZE if prompt + output > largest_limit_tokens else Kind.TYPICAL
        specs.append(RequestSpec(index, (stamp - origin) * scale, category, kind,
                                 max(1, prompt), max(1, output),
                                 rng.random() < stream_fraction))
    return specs
