"""Pool limits read from the backends: parsing and bounds (limits.py), the HTTP edge
(limits_fetch.py, respx), start-up and retries (proxy/backend_limits.py), the engine's mapping of
router deployments to discovered pools, capacity from LiteLLM's max_parallel_requests, and
``check-config --probe`` against a real emulator."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml

from litellm_dualpool.cli import main
from litellm_dualpool.config import (
    deployment_capacity,
    layout_pools,
    load_plugin_config,
    parse_pools,
)
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.limits import (
    MAX_MODEL_LEN_BOUND,
    MAX_RESPONSE_BYTES,
    LimitError,
    LimitTarget,
    Outcome,
    Probe,
    limit_target,
    models_url,
    parse_models_body,
    served_model_name,
)
from litellm_dualpool.limits_fetch import fetch_limit
from litellm_dualpool.proxy.backend_limits import LimitDiscovery
from litellm_dualpool.proxy.engine import DualPoolEngine

BASE = "http://10.0.0.{n}:8000/v1"


def entry(group: str, n: int, **info: Any) -> dict[str, Any]:
    return {"model_name": group,
            "litellm_params": {"model": "hosted_vllm/meta-llama/Llama-3-70B", "api_base": BASE.format(n=n),
                               "api_key": "sk-backend"},
            "model_info": info}


def body(*cards: dict[str, Any]) -> bytes:
    return json.dumps({"object": "list", "data": list(cards)}).encode()


# -- pure parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "served"), [
    ("hosted_vllm/meta-llama/Llama-3-70B", "meta-llama/Llama-3-70B"),
    ("openai/llama", "llama"),
    ("meta-llama/Llama-3-70B", "meta-llama/Llama-3-70B"),  # no provider prefix: as is
    ("llama", "llama"),
])
def test_served_model_name_drops_the_provider_prefix(model: str, served: str) -> None:
    assert served_model_name(model) == served


@pytest.mark.parametrize(("api_base", "url"), [
    ("http://h:8000/v1", "http://h:8000/v1/models"),
    ("http://h:8000/v1/", "http://h:8000/v1/models"),
    ("http://h:8000", "http://h:8000/v1/models"),
])
def test_models_url(api_base: str, url: str) -> None:
    assert models_url(api_base) == url


def test_a_vllm_model_list_gives_the_served_models_limit() -> None:
    answer = body({"id": "other", "max_model_len": 4096}, {"id": "m", "max_model_len": 32768})
    assert parse_models_body(answer, "m") == 32768


@pytest.mark.parametrize(("answer", "words"), [
    (b"not json", "not JSON"),
    (b'{"object": "list"}', "no 'data' list"),
    (b"[1, 2]", "no 'data' list"),
    (body({"id": "other", "max_model_len": 4096}), "does not serve 'm' (it serves 'other')"),
    (body({"id": "m"}), "has no max_model_len"),
    (body({"id": "m", "max_model_len": True}), "not an integer"),
    (body({"id": "m", "max_model_len": 0}), "not an integer"),
    (body({"id": "m", "max_model_len": -5}), "not an integer"),
    (body({"id": "m", "max_model_len": 8192.0}), "not an integer"),
    (body({"id": "m", "max_model_len": "8192"}), "not an integer"),
    (body({"id": "m", "max_model_len": MAX_MODEL_LEN_BOUND + 1}), "not an integer"),
    (b" " * (MAX_RESPONSE_BYTES + 1), "larger than"),
])
def test_a_backend_answer_without_a_usable_limit_is_refused(answer: bytes, words: str) -> None:
    with pytest.raises(LimitError) as caught:
        parse_models_body(answer, "m")
    assert words in str(caught.value)


def test_a_target_resolves_environment_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_BASE", "http://h:9/v1/")
    monkeypatch.setenv("BACKEND_KEY", "sk-env")
    target = limit_target(3, {"model_name": "g", "litellm_params": {
        "model": "hosted_vllm/m", "api_base": "os.environ/BACKEND_BASE",
        "api_key": "os.environ/BACKEND_KEY"}, "model_info": {"max_model_len": 100}})
    assert target is not None
    assert (target.url, target.key, target.configured, target.path) == (
        "http://h:9/v1/models", ("hosted_vllm/m", "http://h:9/v1"), 100, "model_list[3]")
    assert target.headers() == {"Authorization": "Bearer sk-env"}
    assert "sk-env" not in repr(target)


# -- config: pending deployments and waiting groups -----------------------------------------------
def test_a_pool_label_makes_a_group_ours_and_its_limits_come_from_the_backends() -> None:
    model_list = [entry("g", 1, pool="short"), entry("g", 2, pool="long"), entry("other", 3)]
    layout = layout_pools(model_list)
    assert layout.groups == {} and layout.waiting_groups == ("g",)
    assert [(p.index, p.model_group) for p in layout.pending] == [(0, "g"), (1, "g")]
    groups = parse_pools(model_list, discovered={0: 4096, 1: 32768})
    assert [(p.name, p.max_model_len) for p in groups["g"].pools] == [("short", 4096),
                                                                      ("long", 32768)]
    assert "other" not in groups


def test_a_group_with_two_known_pools_is_formed_without_its_pending_deployment() -> None:
    model_list = [entry("g", 1, max_model_len=4096), entry("g", 2, max_model_len=32768),
                  entry("g", 3)]
    layout = layout_pools(model_list)
    assert [p.deployment_count for p in layout.groups["g"].pools] == [1, 1]
    assert [p.index for p in layout.pending] == [2] and layout.waiting_groups == ()


def test_a_group_that_declares_no_pools_is_left_alone() -> None:
    # neither max_model_len nor pool: not a dual-pool group, its model_info is LiteLLM's business
    layout = layout_pools([entry("other", 1, hardware="x" * 300, max_num_seqs="many"),
                           entry("other", 2)])
    assert (layout.groups, layout.pending, layout.waiting_groups) == ({}, (), ())


def test_without_discovery_every_deployment_needs_its_limit() -> None:
    model_list = [entry("g", 1, max_model_len=4096), entry("g", 2)]
    config = {"model_list": model_list, "dualpool_settings": {"discovery": {"enabled": False}}}
    with pytest.raises(ConfigError) as caught:
        load_plugin_config(config)
    assert caught.value.path == "model_list[1].model_info.max_model_len"
    assert "discovery is off" in str(caught.value)


@pytest.mark.parametrize(("settings", "path"), [
    ({"timeout_seconds": 0}, "dualpool_settings.discovery.timeout_seconds"),
    ({"timeout_seconds": 600}, "dualpool_settings.discovery.timeout_seconds"),
    ({"on_mismatch": "ignore"}, "dualpool_settings.discovery.on_mismatch"),
    ({"retry_seconds": 0.1}, "dualpool_settings.discovery.retry_seconds"),
    ({"enable": True}, "dualpool_settings.discovery.enable"),
])
def test_discovery_settings_errors_name_their_path(settings: dict[str, Any], path: str) -> None:
    config = {"model_list": [entry("g", 1, max_model_len=1), entry("g", 2, max_model_len=2)],
              "dualpool_settings": {"discovery": settings}}
    with pytest.raises(ConfigError) as caught:
        load_plugin_config(config)
    assert caught.value.path == path


# -- capacity -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("info", "params", "capacity"), [
    ({"max_in_flight": 10, "max_num_seqs": 128}, {"max_parallel_requests": 4}, 10),
    ({"max_num_seqs": 128}, {"max_parallel_requests": 32}, 32),
    ({"max_num_seqs": 16}, {"max_parallel_requests": 32}, 16),
    ({}, {"max_parallel_requests": 32}, 32),
    ({}, {"rpm": 600, "tpm": 100_000}, 64),  # rates are not a concurrency: the default
    ({}, {"max_parallel_requests": 0}, 64),
    ({}, {}, 64),
])
def test_capacity_chain(info: dict[str, Any], params: dict[str, Any], capacity: int) -> None:
    assert deployment_capacity(info, 64, params) == capacity


def test_max_parallel_requests_sets_a_pools_capacity() -> None:
    model_list = [entry("g", 1, max_model_len=4096), entry("g", 2, max_model_len=4096),
                  entry("g", 3, max_model_len=32768, max_num_seqs=16)]
    model_list[0]["litellm_params"]["max_parallel_requests"] = 8
    model_list[2]["litellm_params"]["max_parallel_requests"] = 100
    short, long = parse_pools(model_list)["g"].pools
    assert (short.max_in_flight, long.max_in_flight) == (8 + 64, 16)


# -- the HTTP edge --------------------------------------------------------------------------------
def target(n: int = 1, configured: int | None = None) -> LimitTarget:
    found = limit_target(n, entry("g", n, **({"max_model_len": configured} if configured else {})))
    assert found is not None
    return found


@respx.mock
def test_fetch_sends_the_deployments_key_and_reads_the_limit() -> None:
    route = respx.get("http://10.0.0.1:8000/v1/models").mock(return_value=httpx.Response(
        200, content=body({"id": "meta-llama/Llama-3-70B", "max_model_len": 8192})))
    probe = fetch_limit(target(), timeout_seconds=1)
    assert (probe.discovered, probe.outcome) == (8192, Outcome.DISCOVERED)
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-backend"


@respx.mock
@pytest.mark.parametrize(("response", "words"), [
    (httpx.Response(401, json={"error": "no"}), "HTTP 401"),
    (httpx.Response(200, content=b"x" * (MAX_RESPONSE_BYTES + 10)), "larger than"),
    (httpx.Response(200, content=body({"id": "meta-llama/Llama-3-70B", "max_model_len": -1})),
     "not an integer"),
    (httpx.ConnectError("refused"), "ConnectError"),
    (httpx.ReadTimeout("slow"), "no answer from http://10.0.0.1:8000/v1/models within 1 s"),
])
def test_fetch_failures_say_why(response: Any, words: str) -> None:
    respx.get("http://10.0.0.1:8000/v1/models").mock(side_effect=[response])
    probe = fetch_limit(target(), timeout_seconds=1)
    assert probe.outcome is Outcome.UNREACHABLE
    assert probe.error is not None and words in probe.error


# -- start-up and retries -------------------------------------------------------------------------
class FakeFetch:
    """The backends' answers by model_list index (None: unreachable); records what was asked."""

    def __init__(self, limits: dict[int, int | None]) -> None:
        self.limits = limits
        self.asked: list[list[int]] = []

    def __call__(self, targets: Sequence[LimitTarget], *, timeout_seconds: float) -> list[Probe]:
        self.asked.append([t.index for t in targets])
        return [Probe(t, self.limits.get(t.index), None if self.limits.get(t.index) else "down")
                for t in targets]


def discovery(model_list: list[dict[str, Any]], fetch: FakeFetch,
              **settings: Any) -> LimitDiscovery:
    raw = {"model_list": model_list, "dualpool_settings": {"discovery": settings}}
    return LimitDiscovery(raw, load_plugin_config(raw, source="litellm.yaml"), fetch=fetch)


def test_start_places_deployments_by_their_backends_limits() -> None:
    fetch = FakeFetch({0: 4096, 1: 32768})
    config, _ = discovery([entry("g", 1, pool="short"), entry("g", 2, pool="long")],
                               fetch).start()
    assert [(p.name, p.max_model_len) for p in config.groups["g"].pools] == [("short", 4096),
                                                                             ("long", 32768)]
    assert config.pending == () and fetch.asked == [[0, 1]]
    assert config.discovered_limits == {("hosted_vllm/meta-llama/Llama-3-70B", BASE.format(n=1)): 4096,
                                        ("hosted_vllm/meta-llama/Llama-3-70B", BASE.format(n=2)): 32768}


def test_a_mismatch_warns_and_the_configured_limit_is_used(caplog: pytest.LogCaptureFixture) -> None:
    fetch = FakeFetch({0: 2048, 1: 32768})
    with caplog.at_level(logging.WARNING, logger="litellm_dualpool"):
        config, _ = discovery([entry("g", 1, max_model_len=4096), entry("g", 2, max_model_len=32768)],
                              fetch).start()
    assert config.groups["g"].pools[0].max_model_len == 4096
    assert ("model_info.max_model_len is 4096 but the backend serves max_model_len 2048"
            in caplog.text)


def test_a_mismatch_stops_the_start_with_on_mismatch_error() -> None:
    fetch = FakeFetch({0: 2048, 1: 32768})
    with pytest.raises(ConfigError) as caught:
        discovery([entry("g", 1, max_model_len=4096), entry("g", 2, max_model_len=32768)], fetch,
                  on_mismatch="error").start()
    assert caught.value.path == "model_list[0].model_info.max_model_len"
    assert "serves max_model_len 2048" in str(caught.value)


def test_a_group_that_cannot_form_two_pools_stops_the_start_naming_the_backend() -> None:
    fetch = FakeFetch({0: 4096})
    with pytest.raises(ConfigError) as caught:
        discovery([entry("g", 1, pool="short"), entry("g", 2, pool="long")], fetch).start()
    assert "cannot form two pools" in str(caught.value)
    assert "model_list[1]" in str(caught.value) and "http://10.0.0.2:8000/v1/models" in str(caught.value)


def test_a_deployment_down_at_start_takes_no_traffic_until_a_retry_reads_it(
        caplog: pytest.LogCaptureFixture) -> None:
    fetch = FakeFetch({0: 4096, 1: 32768})
    model_list = [entry("g", 1, pool="short"), entry("g", 2, pool="long"), entry("g", 3, pool="short")]
    found = discovery(model_list, fetch)
    with caplog.at_level(logging.ERROR, logger="litellm_dualpool"):
        config, _ = found.start()
    assert [p.index for p in config.pending] == [2]
    assert "takes no traffic until its limit is read" in caplog.text
    engine = DualPoolEngine(config)
    router_list = [dict(e, model_info=dict(e["model_info"], id=f"id{i}"))
                   for i, e in enumerate(model_list)]
    engine.learn_deployment_ids(router_list)
    group = engine.groups["g"]
    assert [getattr(engine.pool_of(group, d), "name", None) for d in router_list] == [
        "short", "long", None]
    assert found.retry() is None  # still down: nothing changes
    fetch.limits[2] = 4096
    updated = found.retry()
    assert updated is not None and updated.pending == ()
    assert fetch.asked[1:] == [[2], [2]]
    engine.update_config(updated)
    engine.learn_deployment_ids(router_list)
    assert engine.pool_of(engine.groups["g"], router_list[2]).name == "short"  # type: ignore[union-attr]  # asserted by the comparison
    assert engine.groups["g"].pools[0].deployment_count == 2


# -- check-config --probe against real emulators ----------------------------------------------------
@pytest.mark.e2e
def test_check_config_probe_compares_configured_and_served_limits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from litellm_dualpool.emulator.testing import start_emulators
    from litellm_dualpool.processes import free_port

    flags = {"served_model_name": ["llama"], "instant": True}
    with start_emulators(dict(flags, max_model_len=4096), dict(flags, max_model_len=16384)) as emus:
        def dep(base: str, **info: Any) -> dict[str, Any]:
            return {"model_name": "g", "litellm_params": {"model": "hosted_vllm/llama",
                                                          "api_base": base}, "model_info": info}

        short, long = (e.openai_base_url for e in emus)
        good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
        good.write_text(yaml.safe_dump({"model_list": [dep(short, pool="short"),
                                                       dep(long, max_model_len=16384)]}))
        dead = f"http://127.0.0.1:{free_port()}/v1"
        bad.write_text(yaml.safe_dump({"model_list": [
            dep(short, pool="short"), dep(long, max_model_len=32768),
            dep(dead, max_model_len=32768)]}))
        assert main(["check-config", str(good), "--probe", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["ok"] is True
        assert [(p["configured_max_model_len"], p["discovered_max_model_len"], p["outcome"])
                for p in result["probes"]] == [(None, 4096, "discovered"), (16384, 16384, "match")]
        assert [p["max_model_len"] for p in result["groups"]["g"]["pools"]] == [4096, 16384]

        assert main(["check-config", str(bad), "--probe", "--json", "--timeout", "5"]) == 1
        result = json.loads(capsys.readouterr().out)
        assert result["ok"] is False
        assert [p["outcome"] for p in result["probes"]] == ["discovered", "mismatch", "unreachable"]
        assert main(["check-config", str(bad), "--probe"]) == 1
        text = capsys.readouterr().out
        assert "1 mismatch(es), 1 unreachable" in text
        assert "configured    32768  backend    16384  mismatch" in text
        # without --probe nothing is asked: the short deployment's limit is read at start
        assert main(["check-config", str(good)]) == 0
        assert "max_model_len read from its backend at start" in capsys.readouterr().out
