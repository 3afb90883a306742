"""Plugin configuration: pools from model_info, dualpool_settings validation, check-config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from litellm_dualpool.cli import main
from litellm_dualpool.config import (
    DualPoolSettings,
    deployment_capacity,
    load_plugin_config,
    load_plugin_config_file,
    parse_pools,
)
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.metrics import DualPoolMetrics


def deployment(group: str, **info: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model_name": group, "litellm_params": {"model": "hosted_vllm/m"}}
    if info:
        entry["model_info"] = info
    return entry


def test_pools_are_grouped_by_max_model_len_smallest_first() -> None:
    groups = parse_pools([
        deployment("llama", max_model_len=65536, hardware="H100"),
        deployment("llama", max_model_len=8192, max_num_seqs=128),
        deployment("llama", max_model_len=8192, max_num_seqs=128),
        deployment("embed"),
    ])
    assert list(groups) == ["llama"]
    short, long = groups["llama"].pools
    assert (short.name, short.max_model_len, short.deployment_count, short.max_in_flight) == (
        "short", 8192, 2, 256)
    assert (long.name, long.max_model_len, long.hardware, long.max_in_flight) == (
        "long", 65536, "H100", DualPoolSettings().spillover.default_max_in_flight_per_deployment)


def test_max_in_flight_sets_the_spillover_capacity_before_max_num_seqs() -> None:
    groups = parse_pools([
        deployment("llama", max_model_len=8192, max_num_seqs=256, max_in_flight=54),
        deployment("llama", max_model_len=8192, max_num_seqs=256),
        deployment("llama", max_model_len=65536),
    ])
    short, long = groups["llama"].pools
    assert short.max_in_flight == 54 + 256  # each deployment's own capacity
    assert long.max_in_flight == DualPoolSettings().spillover.default_max_in_flight_per_deployment
    with pytest.raises(ConfigError) as info:
        parse_pools([deployment("x", max_model_len=8192, max_in_flight=0),
                      deployment("x", max_model_len=65536)])
    assert info.value.path.endswith("model_info.max_in_flight")
    # the same rule for the backend-metrics poller, which reads raw model_info
    assert deployment_capacity({"max_in_flight": 5, "max_num_seqs": 9}, 64) == 5
    assert deployment_capacity({"max_num_seqs": 9, "max_in_flight": True}, 64) == 9
    assert deployment_capacity({}, 64) == deployment_capacity(None, 64) == 64


def test_pool_labels_and_a_middle_pool() -> None:
    groups = parse_pools([deployment("q", max_model_len=4096, pool="tiny"),
                          deployment("q", max_model_len=16384),
                          deployment("q", max_model_len=131072, pool="huge")])
    assert [p.name for p in groups["q"].pools] == ["tiny", "ctx16384", "huge"]


@pytest.mark.parametrize(("model_list", "path", "words"), [
    ([deployment("g", max_model_len=8192), deployment("g", max_model_len=8192)],
     "model_list[0].model_info.max_model_len", "single pool"),
    ([deployment("g", max_model_len=8192), deployment("g")],
     "model_list[1].model_info.max_model_len", "every deployment"),
    ([deployment("g", max_model_len=8192), deployment("g", max_model_len=-1)],
     "model_list[1].model_info.max_model_len", "greater than 0"),
    ([deployment("g", max_model_len=8192, pool="a"), deployment("g", max_model_len=9000, pool="a")],
     "model_list[1].model_info.pool", "names two pools"),
    ([deployment("g", max_model_len=8192, pool="a"), deployment("g", max_model_len=8192, pool="b"),
      deployment("g", max_model_len=9000)], "model_list[0].model_info.pool", "different pool labels"),
    ("not a list", "model_list", "list"),
])
def test_pool_declaration_errors_name_their_path(model_list: Any, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pools(model_list)
    assert caught.value.path == path
    assert words in str(caught.value)


@pytest.mark.parametrize(("settings", "path"), [
    ({"headroom": 0.1}, "dualpool_settings.headroom"),
    ({"headroom_fraction": 2}, "dualpool_settings.headroom_fraction"),
    ({"spillover": {"load_fractoin": 0.8}}, "dualpool_settings.spillover.load_fractoin"),
    ({"calibration": {"ema_beta": 1.0}}, "dualpool_settings.calibration.ema_beta"),
    ({"routing": "random"}, "dualpool_settings.routing"),
    ({"calibration": {"min_bytes_per_token": 5, "max_bytes_per_token": 4}},
     "dualpool_settings.calibration"),
    ({"arbitration": {"timeout_ms": 0}}, "dualpool_settings.arbitration.timeout_ms"),
    ({"arbitration": {"max_concurrent": 0}}, "dualpool_settings.arbitration.max_concurrent"),
    ({"arbitration": {"enabled": "yes please"}}, "dualpool_settings.arbitration.enabled"),
    ({"arbitration": {"timeout": 50}}, "dualpool_settings.arbitration.timeout"),
    ({"arbitration": {"providers": []}}, "dualpool_settings.arbitration.providers"),
])
def test_settings_errors_name_their_path(settings: dict[str, Any], path: str) -> None:
    config = {"model_list": [deployment("g", max_model_len=1), deployment("g", max_model_len=2)],
              "dualpool_settings": settings}
    with pytest.raises(ConfigError) as caught:
        load_plugin_config(config)
    assert caught.value.path == path


def test_recovery_group_name_must_be_free() -> None:
    config = {"model_list": [deployment("g", max_model_len=1), deployment("g", max_model_len=2),
                             deployment("g::dualpool-recovery")]}
    with pytest.raises(ConfigError, match="recovery"):
        load_plugin_config(config)


def test_settings_reach_the_core() -> None:
    settings = DualPoolSettings.model_validate(
        {"headroom_fraction": 0.1, "spillover": {"enabled": False},
         "calibration": {"cold_start_bytes_per_token": 3.5, "gamma": 1.0}})
    assert settings.policy_settings().headroom_fraction == 0.1
    assert settings.policy_settings().spillover_load_fraction is None
    core = settings.calibration.to_core()
    assert (core.cold_start_bytes_per_token, core.gamma) == (3.5, 1.0)


def test_include_files_are_merged(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"model_list": [
        deployment("g", max_model_len=65536)]}))
    (tmp_path / "main.yaml").write_text(yaml.safe_dump({
        "include": ["models.yaml"], "model_list": [deployment("g", max_model_len=8192)],
        "dualpool_settings": {"default_output_tokens": 256}}))
    config = load_plugin_config_file(tmp_path / "main.yaml")
    assert [p.max_model_len for p in config.groups["g"].pools] == [8192, 65536]
    assert config.settings.default_output_tokens == 256


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"model_list": [deployment("g", max_model_len=8192),
                                                   deployment("g", max_model_len=65536)]}))
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "pool short" in out and "65536" in out and "g::dualpool-recovery" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model_list": [deployment("g", max_model_len=8192),
                                                  deployment("g", max_model_len=65536)],
                                   "dualpool_settings": {"unknown_knob": 1}}))
    assert main(["check-config", str(bad)]) == 1
    assert "dualpool_settings.unknown_knob" in capsys.readouterr().err


@pytest.mark.litellm_compat
def test_the_proxy_instance_is_built_from_the_proxy_config(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from litellm_dualpool.proxy import DualPoolCallback
    from litellm_dualpool.proxy.discovery import proxy_config_path

    path = tmp_path / "litellm.yaml"
    path.write_text(yaml.safe_dump({"model_list": [deployment("g", max_model_len=8192),
                                                   deployment("g", max_model_len=65536)]}))
    monkeypatch.delenv("LITELLM_DUALPOOL_CONFIG", raising=False)
    monkeypatch.delenv("CONFIG_FILE_PATH", raising=False)
    monkeypatch.setenv("WORKER_CONFIG", json.dumps({"config": str(path), "debug": False}))
    assert proxy_config_path() == str(path)
    plugin = DualPoolCallback.from_proxy_environment(metrics=DualPoolMetrics(CollectorRegistry()))
    assert [p.name for p in plugin.engine.groups["g"].pools] == ["short", "long"]
    monkeypatch.setenv("LITELLM_DUALPOOL_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="cannot read"):
        DualPoolCallback.from_proxy_environment(metrics=DualPoolMetrics(CollectorRegistry()))
