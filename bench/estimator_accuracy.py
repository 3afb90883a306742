"""Estimator accuracy on real prompts, against exact Llama-3 and Qwen3 token counts.

Rerun:  .venv/bin/python bench/estimator_accuracy.py [--json] [--multi-turn N] [--seed S]

Requests: every single-turn prompt of ../shared/data/prompts (MT-Bench English -> "prose",
Japanese MT-Bench -> "cjk", HumanEval -> "code", BFCL live_simple + simple_python with their
function definitions as `tools` -> "function_calling"), plus N multi-turn conversations per
category built from the same texts (user/assistant turns, for function calling many tools,
tool calls and tool results) with a log-uniform target of 1K-16K tokens. All categories are
interleaved in one seeded arrival order; each request is estimated, routed, then its exact
count is fed back (`Estimator.learn`), exactly as the proxy does.

Truth: `litellm_dualpool.tokenize.count_prompt_tokens` (quicktok, after the model's chat
template: Llama-3 header/eot framing, Qwen3 ChatML, tools as the templates render them).

Metrics per tokenizer and category ("after N": requests that arrive after the first N of the
same category have been learned from):
  mape_after_10 / mape_after_50: mean |point estimate - exact| / exact of the prompt tokens.
  under_estimate_rate: share of all requests whose routing (conservative) prompt estimate is
      below the exact count.
  misroute_rate_B: pools [B, 65536], every request with max_tokens = 1024 (a fixed output
      policy), routed by the conservative estimate with no extra headroom; a misroute is a
      request sent to the B pool whose exact budget (exact prompt + 1024) exceeds B. Share of
      all requests of the category, cold start included.
Band (issue #15): every request whose exact prompt is at least a quarter of a short pool B
(4096 or 8192) is given the output budget that puts its exact budget at u * B, u uniform in
[0.85, 1.10] (seeded): the band where no bytes-based estimate can be sure. Each is planned as
the proxy plans it (tiered estimate with pools [B, 65536], `plan_request`, no headroom, no
load); "band" decides an AMBIGUOUS request by its exact count (the arbiter, simulated: the
exact count stands in for the backend's /tokenize, the same core rule decides when to ask),
"band_no_arbitration" by the estimate alone. misroute_rate: share of the band requests sent
to B whose exact budget exceeds B; waste_rate: share of the band requests that fit B sent to
the long pool; arbitrated_rate: share asked for the exact count. "tiers" gives, for every
request with max_tokens 1024 and pools [8192, 65536], the share decided FAR (bytes alone)
and the share of those whose pool differs from the one the exact count gives (far_wrong_rate).
Baselines in the same run: "static_4.0" (ceil(bytes / 4.0), the paper's cold start) and
"asymmetric_tracker" (vLLM Semantic Router style: EMA 0.995 ratio used after 10 samples, a
conservative tracker moving 90% toward lower and 10% toward higher observations, JSON at 1
byte/token, 4 tokens per message, 8 per tool, requests with JSON/images not learned from).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import os
import platform
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litellm_dualpool.core.calibration import CalibrationSettings, Calibrator
from litellm_dualpool.core.estimator import Estimator, learning_shape
from litellm_dualpool.core.plan import plan_request
from litellm_dualpool.core.policy import PolicySettings, PoolState, Tier
from litellm_dualpool.core.shape import RequestShape, shape_request

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "prompts"
TOKENIZERS = ("llama3", "qwen3")
CATEGORIES = ("prose", "cjk", "code", "function_calling")
MAX_TOKENS = 1024
LONG_POOL = 65536
SHORT_POOLS = (8192, 4096)
#: requests at least this long (exact prompt tokens) are reported apart in the details
LONG_TOKENS = 1024
#: rough bytes/token per category, only to size the synthetic conversations
_SIZE_BPT = {"prose": 4.5, "cjk": 4.0, "code": 3.4, "function_calling": 3.9}


# -- data -------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    fn = dict(function)
    params = dict(fn.get("parameters") or {})
    if params.get("type") == "dict":
        params["type"] = "object"
    fn["parameters"] = params
    return {"type": "function", "function": fn}


@dataclass
class Corpus:
    singles: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    code: list[tuple[str, str]] = field(default_factory=list)
    functions: list[dict[str, Any]] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)


def load_corpus(data: Path) -> Corpus:
    c = Corpus()
    for cat, name in (("prose", "mt_bench_question.jsonl"),
                      ("cjk", "japanese_mt_bench_question.jsonl")):
        turns = [t for row in _jsonl(data / name) for t in row["turns"]]
        c.texts[cat] = turns
        c.singles[cat] = [{"messages": [{"role": "user", "content": t}], "max_tokens": MAX_TOKENS}
                          for t in turns]
    human = _jsonl(data / "HumanEval.jsonl.gz")
    c.code = [(r["prompt"], r["canonical_solution"]) for r in human]
    c.singles["code"] = [{"messages": [{"role": "user", "content": p}], "max_tokens": MAX_TOKENS}
                         for p, _ in c.code]
    fc = []
    for name in ("BFCL_v4_live_simple.json", "BFCL_v4_simple_python.json"):
        for row in _jsonl(data / name):
            tools = [_tool(f) for f in row["function"]]
            c.functions.extend(t["function"] for t in tools)
            msgs = row["question"][0]
            c.questions.extend(m["content"] for m in msgs if m["role"] == "user")
            fc.append({"messages": msgs, "tools": tools, "max_tokens": MAX_TOKENS})
    c.singles["function_calling"] = fc
    return c


def _fake_arguments(fn: dict[str, Any], rng: random.Random, words: list[str]) -> str:
    args: dict[str, Any] = {}
    for pname, spec in (fn.get("parameters", {}).get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "integer":
            args[pname] = rng.randint(0, 5000)
        elif kind in ("number", "float"):
            args[pname] = round(rng.uniform(0, 100), 2)
        elif kind == "boolean":
            args[pname] = rng.random() < 0.5
        elif kind in ("array", "tuple"):
            args[pname] = [rng.choice(words) for _ in range(rng.randint(1, 3))]
        else:
            args[pname] = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
    return json.dumps(args, ensure_ascii=False)


def multi_turn(cat: str, corpus: Corpus, rng: random.Random) -> dict[str, Any]:
    """A conversation of about a log-uniform 1K-16K tokens built from the category's texts."""
    target_bytes = math.exp(rng.uniform(math.log(1000), math.log(16000))) * _SIZE_BPT[cat]
    messages: list[dict[str, Any]] = []
    body: dict[str, Any] = {"messages": messages, "max_tokens": MAX_TOKENS}
    size = 0
    if rng.random() < 0.5:
        system = "You are a helpful assistant." if cat != "cjk" else "あなたは親切なアシスタントです。"
        messages.append({"role": "system", "content": system})
    if cat == "function_calling":
        tools = [_tool(f) for f in rng.sample(corpus.functions, rng.randint(2, 12))]
        body["tools"] = tools
        size += len(json.dumps(tools))
        words = " ".join(rng.sample(corpus.questions, 20)).split()
        while size < target_bytes:
            if len(tools) < 120 and rng.random() < 0.3:
                tools.append(_tool(rng.choice(corpus.functions)))
                size += len(json.dumps(tools[-1]))
                continue
            q = rng.choice(corpus.questions)
            fn = rng.choice(tools)["function"]
            args = _fake_arguments(fn, rng, words)
            result = json.dumps({"status": "ok", "result": rng.choice(corpus.questions)},
                                ensure_ascii=False)
            messages += [
                {"role": "user", "content": q},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": f"call_{len(messages)}", "type": "function",
                    "function": {"name": fn["name"], "arguments": args}}]},
                {"role": "tool", "tool_call_id": f"call_{len(messages)}", "content": result},
            ]
            size += len(q.encode()) + len(args.encode()) + len(result.encode())
        messages.append({"role": "user", "content": rng.choice(corpus.questions)})
        return body
    while size < target_bytes:
        if cat == "code":
            prompt, solution = rng.choice(corpus.code)
            user = prompt
            other, other_solution = rng.choice(corpus.code)
            answer = f"```python\n{prompt}{solution}```\n\n```python\n{other}{other_solution}```"
        else:
            user = rng.choice(corpus.texts[cat])
            answer = "\n\n".join(rng.choice(corpus.texts[cat]) for _ in range(rng.randint(2, 6)))
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        size += len(user.encode()) + len(answer.encode())
    messages.append({"role": "user", "content": rng.choice(corpus.texts.get(cat) or
                                                           [p for p, _ in corpus.code])})
    return body


def build_stream(corpus: Corpus, n_multi: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    stream = [(cat, body) for cat in CATEGORIES for body in corpus.singles[cat]]
    stream += [(cat, multi_turn(cat, corpus, rng)) for cat in CATEGORIES for _ in range(n_multi)]
    rng.shuffle(stream)
    return stream


def exact_counts(stream: list[tuple[str, dict[str, Any]]], tokenizer: str) -> list[int]:
    from litellm_dualpool.tokenize import count_prompt_tokens

    return [count_prompt_tokens(body, tokenizer) for _, body in stream]


# -- methods ----------------------------------------------------------------------------------
class Method:
    """estimate(category, body, shape) -> (point, routing); learn(exact)."""

    name = "method"

    def estimate(self, body: dict[str, Any], shape: RequestShape) -> tuple[int, int]:
        raise NotImplementedError

    def learn(self, exact: int) -> None:
        raise NotImplementedError


class Ours(Method):
    name = "dualpool"

    def __init__(self, settings: CalibrationSettings) -> None:
        self.estimator = Estimator(Calibrator(settings), default_output_tokens=MAX_TOKENS)
        self._last: Any = None

    def estimate(self, body: dict[str, Any], shape: RequestShape) -> tuple[int, int]:
        est = self.estimator.estimate(body, "bench")
        self._last = est
        return est.budget.prompt_tokens_point or 0, est.budget.prompt_tokens

    def learn(self, exact: int) -> None:
        self.estimator.learn(self._last, exact)


class Static(Method):
    name = "static_4.0"

    def estimate(self, body: dict[str, Any], shape: RequestShape) -> tuple[int, int]:
        t = math.ceil(shape.total_bytes / 4.0)
        return t, t

    def learn(self, exact: int) -> None:
        pass


class AsymmetricTracker(Method):
    """vLLM Semantic Router style (REFERENCE §1), reimplemented from its description."""

    name = "asymmetric_tracker"
    COLD, WARMUP, BETA, DOWN, UP = 4.0, 10, 0.995, 0.9, 0.1

    def __init__(self) -> None:
        self.state: dict[str, list[float]] = {}  # key -> [n, ema, conservative]
        self._last: tuple[str, RequestShape] | None = None

    def _framing(self, shape: RequestShape) -> float:
        return 4 * shape.message_count + 8 * shape.tool_count + shape.structured_bytes / 1.0

    def estimate(self, body: dict[str, Any], shape: RequestShape) -> tuple[int, int]:
        key = shape.content_class.value
        self._last = (key, shape)
        n, ema, cons = self.state.get(key, [0, self.COLD, self.COLD])
        if n < self.WARMUP:
            ema = cons = self.COLD
        base = self._framing(shape)
        return (math.ceil(shape.text_bytes / ema + base), math.ceil(shape.text_bytes / cons + base))

    def learn(self, exact: int) -> None:
        assert self._last is not None
        key, shape = self._last
        if shape.structured_bytes or shape.media_count or shape.text_bytes == 0:
            return  # skips JSON / media requests
        text_tokens = exact - 4 * shape.message_count
        if text_tokens <= 0:
            return
        obs = shape.text_bytes / text_tokens
        st = self.state.setdefault(key, [0, 0.0, 0.0])
        st[0] += 1
        if st[0] <= self.WARMUP:  # plain mean of the first samples, then EMA
            st[1] += (obs - st[1]) / st[0]
            st[2] = st[1] if st[0] == 1 else st[2] + (self.DOWN if obs < st[2] else self.UP) * (
                obs - st[2])
        else:
            st[1] = self.BETA * st[1] + (1 - self.BETA) * obs
            st[2] += (self.DOWN if obs < st[2] else self.UP) * (obs - st[2])


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class Tally:
    n: int = 0
    ape: list[tuple[int, float]] = field(default_factory=list)  # (index, abs pct error)
    ape_long: list[tuple[int, float]] = field(default_factory=list)  # exact >= 1024 tokens
    ape_short: list[tuple[int, float]] = field(default_factory=list)  # exact < 1024 tokens
    ape_routing: list[float] = field(default_factory=list)
    under: int = 0
    under_long: int = 0
    misroute: dict[int, int] = field(default_factory=lambda: dict.fromkeys(SHORT_POOLS, 0))
    overroute: dict[int, int] = field(default_factory=lambda: dict.fromkeys(SHORT_POOLS, 0))
    near: dict[int, int] = field(default_factory=lambda: dict.fromkeys(SHORT_POOLS, 0))


def evaluate(stream: list[tuple[str, dict[str, Any]]], shapes: list[RequestShape],
             exact: list[int], make: Callable[[], Method]) -> dict[str, Tally]:
    method = make()
    tallies: dict[str, Tally] = defaultdict(Tally)
    for (cat, body), shape, truth in zip(stream, shapes, exact, strict=True):
        t = tallies[cat]
        point, routing = method.estimate(body, shape)
        t.ape.append((t.n, abs(point - truth) / truth))
        (t.ape_long if truth >= LONG_TOKENS else t.ape_short).append(t.ape[-1])
        t.ape_routing.append(abs(routing - truth) / truth)
        t.under += routing < truth
        t.under_long += routing < truth and truth >= LONG_TOKENS
        for limit in SHORT_POOLS:
            to_short = routing + MAX_TOKENS <= limit
            fits_short = truth + MAX_TOKENS <= limit
            t.misroute[limit] += to_short and not fits_short
            t.overroute[limit] += fits_short and not to_short
            t.near[limit] += abs(truth + MAX_TOKENS - limit) <= 0.05 * limit
        t.n += 1
        method.learn(truth)
    return tallies


def _mape(t: Tally, after: int, which: str = "ape") -> float | None:
    errs = [e for i, e in getattr(t, which) if i >= after]
    return round(sum(errs) / len(errs), 5) if errs else None


def summarize(t: Tally) -> dict[str, Any]:
    return {
        "mape_after_10": _mape(t, 10),
        "mape_after_50": _mape(t, 50),
        "under_estimate_rate": round(t.under / t.n, 5),
        "misroute_rate_8192": round(t.misroute[8192] / t.n, 5),
        "misroute_rate_4096": round(t.misroute[4096] / t.n, 5),
    }


def details(t: Tally) -> dict[str, Any]:
    return {
        "requests": t.n,
        "requests_1k_plus": len(t.ape_long),
        "mape_after_50_1k_plus": _mape(t, 50, "ape_long"),
        "mape_after_50_under_1k": _mape(t, 50, "ape_short"),
        "under_estimate_rate_1k_plus": round(t.under_long / max(len(t.ape_long), 1), 5),
        "routing_mape": round(sum(t.ape_routing) / t.n, 5),
        "overroute_rate_8192": round(t.overroute[8192] / t.n, 5),
        "overroute_rate_4096": round(t.overroute[4096] / t.n, 5),
        "misroutes_8192": t.misroute[8192],
        "misroutes_4096": t.misroute[4096],
        "within_5pct_of_8192": t.near[8192],
        "within_5pct_of_4096": t.near[4096],
    }


#: band: exact budget in [BAND_LOW, BAND_HIGH] x the short pool, prompt >= BAND_MIN_PROMPT of it
BAND_LOW, BAND_HIGH, BAND_MIN_PROMPT = 0.85, 1.10, 0.25
_NO_SPILL = PolicySettings(spillover_load_fraction=None)


@dataclass
class BandTally:
    n: int = 0
    fits: int = 0
    misroute: int = 0
    misroute_no_arb: int = 0
    waste: int = 0
    waste_no_arb: int = 0
    arbitrated: int = 0
    all_requests: int = 0
    far: int = 0
    far_wrong: int = 0


def evaluate_band(stream: list[tuple[str, dict[str, Any]]], exact: list[int],
                  seed: int) -> dict[str, BandTally]:
    """The band and tier figures of one tokenizer (see the module docstring); the calibrator
    learns every request's exact count in stream order, as in the proxy."""
    estimator = Estimator(Calibrator(CalibrationSettings()), default_output_tokens=MAX_TOKENS)
    rng = random.Random(seed)
    tallies: dict[str, BandTally] = defaultdict(BandTally)
    for (cat, body), truth in zip(stream, exact, strict=True):
        t = tallies[cat]
        plain = estimator.estimate(body, "bench", limits=(SHORT_POOLS[0], LONG_POOL))
        t.all_requests += 1
        if plain.tier is Tier.FAR:
            t.far += 1
            pools = [PoolState("short", SHORT_POOLS[0]), PoolState("long", LONG_POOL)]
            chosen = plan_request(plain, pools, _NO_SPILL).decision.pool
            fits = truth + plain.budget.output_tokens <= SHORT_POOLS[0]
            t.far_wrong += chosen != ("short" if fits else "long")
        for limit in SHORT_POOLS:
            u = rng.uniform(BAND_LOW, BAND_HIGH)
            output = round(u * limit) - truth
            if truth < BAND_MIN_PROMPT * limit or output < 1:
                continue
            band_body = dict(body, max_tokens=output)
            pools = [PoolState("short", limit), PoolState("long", LONG_POOL)]
            estimate = estimator.estimate(band_body, "bench", limits=(limit, LONG_POOL))
            plan = plan_request(estimate, pools, _NO_SPILL)
            fits = truth + output <= limit
            by_estimate = plan.decision.pool
            arbitrated = plan.arbiter_pool is not None
            by_arbiter = ("short" if fits else "long") if arbitrated else by_estimate
            t.n += 1
            t.fits += fits
            t.arbitrated += arbitrated
            t.misroute += by_arbiter == "short" and not fits
            t.misroute_no_arb += by_estimate == "short" and not fits
            t.waste += by_arbiter == "long" and fits
            t.waste_no_arb += by_estimate == "long" and fits
        shape, key = learning_shape(plain.shape, plain.key, plain.draft)
        estimator.calibrator.observe(key, shape, truth)
    return tallies


def band_summary(t: BandTally, *, arbitration: bool) -> dict[str, Any]:
    misroute, waste = (t.misroute, t.waste) if arbitration else (t.misroute_no_arb,
                                                                  t.waste_no_arb)
    return {"misroute_rate": round(misroute / max(t.n, 1), 5),
            "waste_rate": round(waste / max(t.fits, 1), 5),
            "arbitrated_rate": round(t.arbitrated / max(t.n, 1), 5) if arbitration else 0.0,
            "requests": t.n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--multi-turn", type=int, default=600, help="conversations per category")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    corpus = load_corpus(args.data)
    stream = build_stream(corpus, args.multi_turn, args.seed)
    shapes = [shape_request(body) for _, body in stream]
    methods: dict[str, Callable[[], Method]] = {
        "dualpool": lambda: Ours(CalibrationSettings()),
        "static_4.0": Static,
        "asymmetric_tracker": AsymmetricTracker,
    }
    result: dict[str, Any] = {"tokenizers": {}, "baselines": {m: {} for m in methods
                                                             if m != "dualpool"}}
    extra: dict[str, Any] = {}
    for tok in TOKENIZERS:
        exact = exact_counts(stream, tok)
        for name, make in methods.items():
            tallies = evaluate(stream, shapes, exact, make)
            table = {cat: summarize(tallies[cat]) for cat in CATEGORIES}
            (result["tokenizers"] if name == "dualpool" else result["baselines"][name])[tok] = table
            extra.setdefault(name, {})[tok] = {cat: details(tallies[cat]) for cat in CATEGORIES}
        band = evaluate_band(stream, exact, args.seed)
        for key, arbitration in (("band", True), ("band_no_arbitration", False)):
            result.setdefault(key, {})[tok] = {
                cat: band_summary(band[cat], arbitration=arbitration) for cat in CATEGORIES}
        result.setdefault("tiers", {})[tok] = {cat: {
            "far_rate": round(band[cat].far / max(band[cat].all_requests, 1), 5),
            "far_wrong_rate": round(band[cat].far_wrong / max(band[cat].far, 1), 5)}
            for cat in CATEGORIES}
    result["details"] = extra
    result["targets"] = {"mape_after_50": 0.02, "misroute_rate": 0.001,
                         "band_misroute_rate": 0.005, "band_waste_rate": 0.10}
    result["setup"] = {
        "requests": len(stream), "multi_turn_per_category": args.multi_turn, "seed": args.seed,
        "max_tokens": MAX_TOKENS, "pools": [[b, LONG_POOL] for b in SHORT_POOLS],
        "settings": CalibrationSettings().__repr__(),
    }
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "python": sys.version.split()[0],
                         "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                         "seconds": round(time.perf_counter() - started, 1)}
    _print_table(result)
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def _print_table(result: dict[str, Any]) -> None:
    cols = ("mape_after_10", "mape_after_50", "under_estimate_rate", "misroute_rate_8192",
            "misroute_rate_4096")
    print(f"{'method':<19}{'tok':<7}{'category':<17}" + "".join(f"{c[:18]:>20}" for c in cols))
    rows = [("dualpool", result["tokenizers"]), *result["baselines"].items()]
    for name, per_tok in rows:
        for tok, table in per_tok.items():
            for cat, m in table.items():
                cells = "".join(f"{'-' if m[c] is None else m[c]:>20}" for c in cols)
                print(f"{name:<19}{tok:<7}{cat:<17}{cells}")
    print(f"\n{'band':<22}{'tok':<7}{'category':<17}{'misroute':>10}{'waste':>10}"
          f"{'arbitrated':>12}{'requests':>10}")
    for key in ("band", "band_no_arbitration"):
        for tok, table in result[key].items():
            for cat, m in table.items():
                print(f"{key:<22}{tok:<7}{cat:<17}{m['misroute_rate']:>10}{m['waste_rate']:>10}"
                      f"{m['arbitrated_rate']:>12}{m['requests']:>10}")


if __name__ == "__main__":
    raise SystemExit(main())
