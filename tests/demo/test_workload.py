"""The demo's workload: Azure-like lengths, exact synthesized lengths, real text of each kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from litellm_dualpool.demo.lengths import azure_tables, fit_table
from litellm_dualpool.demo.synth import Synthesizer
from litellm_dualpool.demo.workload import (
    Category,
    Kind,
    WorkloadSettings,
    builtin_workload,
    load_trace,
)
from litellm_dualpool.tokenize import count_prompt_tokens

CJK = re.compile(r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer("llama3", seed=3)


@pytest.fixture(scope="module")
def workload() -> list:
    return builtin_workload(WorkloadSettings(requests=120, seed=3))


def _share_at_most(values: list[int], limit: int) -> float:
    return 100.0 * sum(v <= limit for v in values) / len(values)


# Published statistics of the Azure 2023 traces (REFERENCE §5): % of requests whose total
# (context + generated) tokens are at most 2K / 4K / 8K.
AZURE_PERCENT_AT_MOST = {
    "code": {2048: 61.8, 4096: 85.8, 8192: 100.0},
    "conv": {2048: 85.4, 4096: 91.7, 8192: 99.99},
}


@pytest.mark.parametrize("trace", ["code", "conv"])
def test_committed_table_reproduces_azure_percentiles(trace: str) -> None:
    import random

    rng = random.Random(11)
    table = azure_tables()[trace]
    totals = [sum(table.sample(rng)) for _ in range(20_000)]
    for limit, published in AZURE_PERCENT_AT_MOST[trace].items():
        assert _share_at_most(totals, limit) == pytest.approx(published, abs=1.0)


def test_builtin_workload_matches_azure_by_trace_family() -> None:
    specs = builtin_workload(WorkloadSettings(requests=6000, seed=5, long_fraction=0.0,
                                              borderline_fraction=0.0, oversize=False))
    code = [s.total_tokens for s in specs if s.category is Category.CODE]
    conv = [s.total_tokens for s in specs if s.category is not Category.CODE]
    assert len(code) / len(specs) == pytest.approx(8819 / (8819 + 19366), abs=0.03)
    for totals, trace in ((code, "code"), (conv, "conv")):
        for limit, published in AZURE_PERCENT_AT_MOST[trace].items():
            assert _share_at_most(totals, limit) == pytest.approx(published, abs=2.5)


def test_poisson_arrivals_at_the_requested_rate() -> None:
    specs = builtin_workload(WorkloadSettings(requests=4000, rate_per_s=8.0, seed=2))
    arrivals = [s.arrival_s for s in specs]
    assert arrivals == sorted(arrivals)
    assert (len(arrivals) - 1) / arrivals[-1] == pytest.approx(8.0, rel=0.08)


def test_special_requests_are_placed(workload: list) -> None:
    kinds = {kind: [s for s in workload if s.kind is kind] for kind in Kind}
    assert len(kinds[Kind.OVERSIZE]) == 1
    assert kinds[Kind.OVERSIZE][0].prompt_tokens > 65536
    assert kinds[Kind.LONG] and all(8192 < s.prompt_tokens <= 40_000 for s in kinds[Kind.LONG])
    border = kinds[Kind.BORDERLINE]
    assert border and all(0.9 * 8192 <= s.total_tokens <= 1.3 * 8192 for s in border)
    assert all(s.prompt_tokens > 8192 for s in border if s.category is Category.LOG)
    # most borderline requests come while calibration is still cold
    assert any(s.index < len(workload) // 5 for s in border)
    assert all(s.total_tokens <= 65536 for s in workload if s.kind is not Kind.OVERSIZE)


def test_same_seed_same_workload() -> None:
    settings = WorkloadSettings(requests=50, seed=9)
    assert builtin_workload(settings) == builtin_workload(settings)


@pytest.mark.parametrize("category", list(Category))
def test_synthesized_prompts_have_the_target_length(synth: Synthesizer, workload: list,
                                                    category: Category) -> None:
    specs = [s for s in workload if s.category is category and s.prompt_tokens >= 400
             and s.kind is not Kind.OVERSIZE]
    assert specs, f"the workload has no {category} request of 400+ tokens"
    tolerance = 0.02 if category in (Category.TOOLS, Category.LOG) else 0.01
    for spec in specs:
        counted = count_prompt_tokens(synth.body(spec, "m"), "llama3")
        assert counted == pytest.approx(spec.prompt_tokens, rel=tolerance, abs=3), spec


def test_oversize_request_really_exceeds_the_largest_pool(synth: Synthesizer,
                                                           workload: list) -> None:
    spec = next(s for s in workload if s.kind is Kind.OVERSIZE)
    assert count_prompt_tokens(synth.body(spec, "m"), "llama3") > 65536


def test_each_category_carries_its_kind_of_text(synth: Synthesizer, workload: list) -> None:
    by_category = {c: next(s for s in workload if s.category is c and s.prompt_tokens > 500)
                   for c in Category}
    code = synth.body(by_category[Category.CODE], "m")["messages"][-1]["content"]
    assert re.search(r"^\s*(def|class|import|from) ", code, re.M)
    cjk = synth.body(by_category[Category.CJK], "m")["messages"][-1]["content"]
    assert len(CJK.findall(cjk)) > 0.5 * len(cjk)
    prose = synth.body(by_category[Category.PROSE], "m")["messages"][-1]["content"]
    assert len(re.findall(r"\b(the|and|of|to)\b", prose)) > 10
    log = synth.body(by_category[Category.LOG], "m")["messages"][-1]["content"]
    rows = re.findall(r"^2023-11-16 18:\d\d:[\d.]+,\d+,\d+$", log, re.M)
    assert len(rows) > 100 and len(CJK.findall(log)) == 0
    assert len(log.split("TIMESTAMP,")[0]) > 1024  # the prose comes first, beyond 1 KB
    tools = synth.body(by_category[Category.TOOLS], "m")
    assert tools["tools"] and all(t["function"]["parameters"]["type"] == "object"
                                  for t in tools["tools"])
    call = tools["messages"][2]["tool_calls"][0]
    assert isinstance(json.loads(call["function"]["arguments"]), dict)
    assert tools["messages"][3]["tool_call_id"] == call["id"]
    assert isinstance(json.loads(tools["messages"][3]["content"]), dict)


def test_bodies_are_deterministic_and_stream_with_usage(synth: Synthesizer,
                                                        workload: list) -> None:
    spec = next(s for s in workload if s.stream)
    body = synth.body(spec, "m")
    assert body == synth.body(spec, "m")
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == spec.max_tokens


def _azure_csv(path: Path) -> Path:
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.0000000,100,10\n"
        "2023-11-16 18:00:01.0000000,9000,20\n"
        "2023-11-16 18:00:04.0000000,70000,30\n",
        encoding="utf-8")
    return path


def test_load_azure_trace_as_it_is_and_rescaled(tmp_path: Path) -> None:
    path = _azure_csv(tmp_path / "AzureLLMInferenceTrace_code.csv")
    specs = load_trace(path)
    assert [(s.arrival_s, s.prompt_tokens, s.max_tokens) for s in specs] == [
        (0.0, 100, 10), (1.0, 9000, 20), (4.0, 70000, 30)]
    assert {s.category for s in specs} == {Category.CODE}
    assert [s.kind for s in specs] == [Kind.TYPICAL, Kind.TYPICAL, Kind.OVERSIZE]
    rescaled = load_trace(path, rate_per_s=2.0)
    assert rescaled[-1].arrival_s == pytest.approx(1.0)


def test_load_mooncake_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps({"timestamp": t, "input_length": i,
                                          "output_length": o, "hash_ids": [1]})
                              for t, i, o in ((0, 6758, 500), (1500, 20000, 300))) + "\n",
                    encoding="utf-8")
    specs = load_trace(path, limit=2)
    assert [(s.arrival_s, s.prompt_tokens, s.max_tokens) for s in specs] == [
        (0.0, 6758, 500), (1.5, 20000, 300)]
    assert all(s.category is not Category.CODE for s in specs)


def test_fit_table_takes_midpoint_quantiles(tmp_path: Path) -> None:
    rows = "".join(f"2023-11-16 18:00:{i:02d}.0000000,{100 * (i + 1)},{i + 1}\n"
                   for i in range(40))
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows, encoding="utf-8")
    table = fit_table(path, points=4)
    assert table["requests"] == 40
    # rows at the quantile midpoints (i + 0.5) / 4 of 40 sorted rows: 5, 15, 25, 35
    assert [tuple(p) for p in table["pairs"]] == [(600, 6), (1600, 16), (2600, 26), (3600, 36)]
    assert table["requests_per_s"] == pytest.approx(40 / 39, rel=1e-3)
