"""Reading `vllm bench serve --save-result` files: the real files in data/ (see data/README.md)
and copies of them with one field changed, for each refusal."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.planner.model import Hardware, LengthMix, Planner
from litellm_dualpool.planner.vllm_bench import (
    LENGTH_TOLERANCE,
    SATURATION_SHARE,
    VllmBench,
    check_lengths,
    read_vllm_bench,
)

DATA = Path(__file__).with_name("data")
SHORT = DATA / "vllm-bench-short-256in-32out.json"  # --request-rate inf, 40 prompts
RATE4 = DATA / "vllm-bench-short-256in-32out-rate4.json"  # --request-rate 4: kept up
OVERLONG = DATA / "vllm-bench-overlong-1900in.json"  # some prompts over --max-model-len


def _raw(path: Path = SHORT) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _edited(tmp_path: Path, **changes: Any) -> Path:
    """The real short-pool file with some keys changed (None: removed)."""
    data = _raw()
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(data))
    return out


def test_reads_a_real_saturating_run() -> None:
    raw = _raw()
    bench = read_vllm_bench(SHORT)
    assert raw["request_rate"] == "inf" and raw["max_concurrency"] is None
    assert bench.request_throughput == raw["request_throughput"] > 0
    assert (bench.completed, bench.failed) == (40, 0)
    assert bench.request_rate == math.inf and bench.max_concurrency is None
    assert bench.mean_prompt_tokens == raw["total_input_tokens"] / 40 == 256
    assert bench.mean_output_tokens == raw["total_output_tokens"] / 40 == 32
    assert bench.warnings == ()
    assert bench.source == str(SHORT)
    assert json.loads(json.dumps(bench.to_dict()))["request_rate"] == "inf"  # as vLLM writes it


def test_refuses_a_run_that_kept_up_with_its_offered_rate() -> None:
    raw = _raw(RATE4)
    assert raw["request_rate"] == 4.0 and raw["request_throughput"] >= SATURATION_SHARE * 4.0
    with pytest.raises(ConfigError, match="--request-rate inf") as info:
        read_vllm_bench(RATE4, option="short_bench")
    assert info.value.path == "short_bench.request_rate"
    assert str(RATE4) in str(info.value)


@pytest.mark.parametrize(("factor", "accepted"), [(0.99, False), (1.01, True)])
def test_saturation_boundary(tmp_path: Path, factor: float, accepted: bool) -> None:
    """Offered just under / just over throughput / SATURATION_SHARE."""
    offered = _raw()["request_throughput"] / SATURATION_SHARE * factor
    path = _edited(tmp_path, request_rate=offered)
    if accepted:
        assert read_vllm_bench(path).request_rate == offered
    else:
        with pytest.raises(ConfigError, match="kept up"):
            read_vllm_bench(path)


def test_failed_requests_are_accepted_with_a_warning() -> None:
    raw = _raw(OVERLONG)
    bench = read_vllm_bench(OVERLONG)
    assert raw["failed"] > 0 and bench.failed == raw["failed"] and bench.completed == raw["completed"]
    assert bench.mean_prompt_tokens == raw["total_input_tokens"] / raw["completed"]
    (warning,) = bench.warnings
    assert f"{raw['failed']} of {raw['completed'] + raw['failed']} requests failed" in warning
    assert bench.to_dict()["warnings"] == [warning]


def test_max_concurrency_is_accepted_with_a_warning(tmp_path: Path) -> None:
    bench = read_vllm_bench(_edited(tmp_path, max_concurrency=8))
    assert bench.max_concurrency == 8
    assert any("--max-concurrency 8" in w for w in bench.warnings)


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"request_throughput": None}, "request_throughput", "missing"),
    ({"completed": None}, "completed", "missing"),
    ({"completed": 0}, "completed", "no request completed"),
    ({"request_throughput": 0}, "request_throughput", "positive"),
    ({"request_throughput": -3.5}, "request_throughput", "positive"),
    ({"request_throughput": "16.6"}, "request_throughput", "not a number"),
    ({"total_output_tokens": None}, "total_output_tokens", "missing"),
    ({"request_rate": "fast"}, "request_rate", "inf"),
    ({"max_concurrency": "8"}, "max_concurrency", "integer"),
])
def test_refusals_name_the_file_and_the_field(tmp_path: Path, changes: dict[str, Any], field: str,
                                              message: str) -> None:
    path = _edited(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message) as info:
        read_vllm_bench(path, option="long_bench")
    assert info.value.path == f"long_bench.{field}"
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("request_throughput: 16.6\n", "not a JSON file"),
    (SHORT.read_text() + "\n" + SHORT.read_text(), "--append-result"),  # two runs appended
    ("[1, 2]", "JSON list, not the object"),
])
def test_refuses_what_is_not_one_result_object(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        read_vllm_bench(path, option="short_bench")
    assert info.value.path == "short_bench" and str(path) in str(info.value)


def test_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_vllm_bench(tmp_path / "absent.json")


def _bench(prompt: float, output: float) -> VllmBench:
    return VllmBench("b.json", 10.0, 40, 0, math.inf, None, prompt, output)


@pytest.mark.parametrize(("prompt", "output", "warns"), [
    (1000, 200, False),
    (1000 * (1 + LENGTH_TOLERANCE), 200, False),  # the tolerance itself is still accepted
    (1000 * (1 - LENGTH_TOLERANCE) - 1, 200, True),
    (1000, 200 * (1 + LENGTH_TOLERANCE) + 1, True),
])
def test_length_check_tolerance(prompt: float, output: float, warns: bool) -> None:
    check = check_lengths(_bench(prompt, output), 1000.0, 200.0)
    assert (check.warning is not None) == warns
    assert check.to_dict()["warning"] == check.warning
    if warns:
        assert "b.json" in (check.warning or "")


def test_length_check_of_an_empty_pool_does_not_warn() -> None:
    check = check_lengths(_bench(10, 10), None, None)
    assert check.warning is None and check.to_dict()["pool_mean_prompt_tokens"] is None


def test_planner_refuses_a_throughput_and_a_bench_for_one_role() -> None:
    mix = LengthMix.from_totals([500, 1000, 3000, 9000])
    hw = Hardware.build("h100", "llama-3.1-8b", tensor_parallel_size=1)
    with pytest.raises(ConfigError) as info:
        Planner(mix, 10.0, hw, measured_mu={"short": 3.0}, measured_bench={"short": _bench(500, 80)})
    assert info.value.path == "short"


def test_planner_uses_the_bench_throughput_and_checks_each_pool_of_its_role() -> None:
    mix = LengthMix.from_totals([500, 1000, 3000, 9000] * 50)
    hw = Hardware.build("h100", "llama-3.1-8b", tensor_parallel_size=1)
    planner = Planner(mix, 10.0, hw, measured_bench={"short": _bench(1200, 80), "long": _bench(1000, 200)})
    fleet = planner.split([4096])
    short, long = fleet.pools
    assert short.mu_per_instance == 10.0 and long.mu_per_instance == 10.0
    assert short.length_check is not None and long.length_check is not None
    sub = mix.within(0, 4096)  # the short pool's own requests: totals 500, 1000 and 3000
    assert short.length_check.pool_mean_prompt_tokens == pytest.approx(float(sub.prompt_tokens.mean()))
    assert long.length_check.pool_mean_prompt_tokens == pytest.approx(9000 - 1350)
    assert long.length_check.warning is not None  # 1000 prompt tokens against 7650
    assert "output 80" in (short.length_check.warning or "")  # 80 output tokens against 225
    assert short.to_dict()["length_check"] == short.length_check.to_dict()
    middle = planner.split([2048, 4096]).pools[1]  # no bench for the middle pool's role
    assert middle.name == "ctx4096" and middle.length_check is None
    assert middle.mu_per_instance != 10.0
