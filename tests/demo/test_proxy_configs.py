"""Every shipped LiteLLM YAML loads with the plugin's validator and with the real proxy's loader;
the example per-tenant auth module maps keys to tenants."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from litellm_dualpool.config import load_plugin_config_file, read_yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "proxy_config"
#: the LiteLLM configs we ship (tenants.example.yaml is data for tenant_auth.py, not a config)
SHIPPED = {
    "demo.yaml": {"llama-3-70b": [("short", 8192), ("long", 65536)]},
    "nvidia-llama3-70b.yaml": {"llama-3-70b": [("short", 8192), ("long", 65536)]},
    "amd-qwen3-235b-mi300x.yaml": {"qwen3-235b": [("short", 8192), ("long", 131072)]},
}
#: what the configs read from the environment (os.environ/NAME), with throwaway values
CONFIG_ENV = {
    "LITELLM_MASTER_KEY": "sk-config-test-" + "x" * 24,
    "VLLM_API_KEY": "vllm-key",
    "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6379", "REDIS_PASSWORD": "",
    **{f"VLLM_SHORT_{i}_URL": f"http://127.0.0.1:{9100 + i}/v1" for i in range(3)},
    "VLLM_LONG_0_URL": "http://127.0.0.1:9200/v1",
    **{f"DUALPOOL_DEMO_SHORT_{i}_API_BASE": f"http://127.0.0.1:{9300 + i}/v1" for i in range(2)},
    "DUALPOOL_DEMO_LONG_0_API_BASE": "http://127.0.0.1:9400/v1",
}


def test_every_yaml_in_proxy_config_is_covered() -> None:
    found = {p.name for p in CONFIG_DIR.glob("*.yaml")} - {"tenants.example.yaml"}
    assert found == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_plugin_validator_accepts_shipped_config(name: str) -> None:
    config = load_plugin_config_file(CONFIG_DIR / name)
    pools = {group: [(p.name, p.max_model_len) for p in spec.pools]
             for group, spec in config.groups.items()}
    assert pools == SHIPPED[name]
    raw = read_yaml(CONFIG_DIR / name)
    assert "litellm_dualpool.proxy_handler_instance" in raw["litellm_settings"]["callbacks"]
    assert raw["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    # /metrics stays behind auth (LiteLLM's default), so custom_auth decides who reads it
    assert raw["litellm_settings"].get("require_auth_for_metrics_endpoint", True) is True
    if name != "demo.yaml":  # fleet configs: replicas share state through Redis, tenants have keys
        assert {"redis_host", "redis_port", "redis_password"} <= set(raw["router_settings"])
        assert raw["general_settings"]["custom_auth"] == "tenant_auth.user_api_key_auth"


# Loads each config with LiteLLM's own ProxyConfig.load_config (what `litellm --config` runs),
# one after the other in one fresh interpreter (LiteLLM's import dominates the cost). The demo
# config goes first: custom_auth, once loaded, stays set in LiteLLM's module state.
_LOADER = """
import asyncio, json, os, sys
import litellm
from litellm.proxy import proxy_server
from prometheus_client import CollectorRegistry
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy import DualPoolCallback

async def load(path):
    os.environ["LITELLM_DUALPOOL_CONFIG"] = path
    router, _, _ = await proxy_server.ProxyConfig().load_config(router=None, config_file_path=path)
    # the proxy imported the plugin's instance (a process-wide singleton, built from the first
    # config); a fresh one shows how the plugin reads *this* config from the proxy environment
    installed = any(isinstance(c, DualPoolCallback) for c in litellm.callbacks)
    plugin = DualPoolCallback.from_proxy_environment(metrics=DualPoolMetrics(CollectorRegistry()))
    return {
        "installed": installed,
        "max_model_lens": sorted(d["model_info"]["max_model_len"] for d in router.model_list
                                 if "max_model_len" in (d.get("model_info") or {})),
        "api_bases": sorted({d["litellm_params"].get("api_base") for d in router.model_list}),
        "groups": {g: [[p.name, p.max_model_len] for p in s.pools]
                   for g, s in plugin.engine.groups.items()},
        "custom_auth": proxy_server.user_custom_auth is not None,
        "master_key_resolved": proxy_server.master_key == os.environ["LITELLM_MASTER_KEY"],
    }

async def main(paths):
    for path in paths:
        print(json.dumps({"path": path, **(await load(path))}), flush=True)

asyncio.run(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.litellm_compat
def test_real_proxy_loader_accepts_shipped_configs() -> None:
    names = sorted(SHIPPED, key=lambda n: n != "demo.yaml")
    env = {**os.environ, **CONFIG_ENV, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_OFFLINE_MODE": "true"}
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, *(str(CONFIG_DIR / n) for n in names)], cwd=REPO,
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["path"]).name for r in reports] == names
    for name, loaded in zip(names, reports, strict=True):
        expected = SHIPPED[name]
        assert loaded["groups"] == {g: [list(p) for p in pools] for g, pools in expected.items()}
        assert loaded["max_model_lens"][0] == 8192 and loaded["max_model_lens"][-1] in (65536, 131072)
        assert "os.environ" not in json.dumps(loaded["api_bases"])
        assert loaded["master_key_resolved"] is True
        assert loaded["installed"] is True
        assert loaded["custom_auth"] is (name != "demo.yaml")


# -- the example per-tenant auth --------------------------------------------------------------

def _tenant_auth() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenant_auth", CONFIG_DIR / "tenant_auth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on(path: str, root_path: str = "") -> Request:
    """A request for `path` as LiteLLM hands it to custom_auth (mounted under `root_path`)."""
    return Request({"type": "http", "method": "GET", "path": root_path + path,
                    "root_path": root_path, "headers": [], "query_string": b""})


CHAT = on("/v1/chat/completions")
MASTER = "sk-master-" + "m" * 24


@pytest.fixture
def tenants_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text((CONFIG_DIR / "tenants.example.yaml").read_text(encoding="utf-8"))
    monkeypatch.setenv("DUALPOOL_TENANTS_FILE", str(path))
    monkeypatch.setenv("LITELLM_MASTER_KEY", MASTER)
    return path


async def test_tenant_keys_map_to_their_team_and_policy(tenants_file: Path) -> None:
    auth = _tenant_auth()
    batch = await auth.user_api_key_auth(CHAT, "Bearer sk-example-batch-team-change-me")
    assert batch.team_id == "team-batch" and batch.key_alias == "batch-summaries"
    assert batch.team_metadata["dualpool_policy"] == {"allow_long_pool": False}
    assert batch.metadata["dualpool_policy"]["default_output_tokens"] == 512
    agents = await auth.user_api_key_auth(CHAT, "sk-example-agents-team-change-me")
    assert agents.team_id == "team-agents" and agents.metadata["dualpool_policy"]["allow_force_pool"]
    admin = await auth.user_api_key_auth(CHAT, "Bearer " + MASTER)
    assert admin.user_role == "proxy_admin"
    with pytest.raises(HTTPException) as unknown:  # an HTTPException: LiteLLM keeps its status
        await auth.user_api_key_auth(CHAT, "Bearer sk-not-a-tenant")
    assert unknown.value.status_code == 401


async def test_tenant_file_changes_are_picked_up_and_bad_digests_named(tenants_file: Path) -> None:
    auth = _tenant_auth()
    new_key = "sk-new-tenant-key"
    tenants_file.write_text(
        f"tenants:\n  - key_sha256: {hashlib.sha256(new_key.encode()).hexdigest()}\n"
        "    team_id: team-new\n", encoding="utf-8")
    os.utime(tenants_file, (1, 1))  # a different mtime even within the same second
    assert (await auth.user_api_key_auth(CHAT, new_key)).team_id == "team-new"
    tenants_file.write_text("tenants:\n  - key_sha256: not-a-digest\n", encoding="utf-8")
    os.utime(tenants_file, (2, 2))
    with pytest.raises(ValueError, match=r"tenants\[0\]\.key_sha256"):
        await auth.user_api_key_auth(CHAT, new_key)


@pytest.mark.parametrize("route", [on("/metrics"), on("/metrics/"), on("/metrics/", "/gateway")])
async def test_metrics_are_the_admins_and_the_scrape_keys_only(tenants_file: Path,
                                                               route: Request) -> None:
    # LiteLLM's /metrics carries every tenant's key alias, hashed key and client IP: a tenant
    # key is refused there, the master key and a metrics_only key read it
    auth = _tenant_auth()
    for tenant in ("sk-example-batch-team-change-me", "sk-example-agents-team-change-me"):
        with pytest.raises(HTTPException, match="/metrics is for the proxy admin") as refused:
            await auth.user_api_key_auth(route, "Bearer " + tenant)
        assert refused.value.status_code == 403
    assert (await auth.user_api_key_auth(route, "Bearer " + MASTER)).user_role == "proxy_admin"
    scraper = await auth.user_api_key_auth(route, "Bearer sk-example-metrics-scraper-change-me")
    assert scraper.key_alias == "prometheus"


async def test_a_scrape_key_may_read_metrics_only(tenants_file: Path) -> None:
    auth = _tenant_auth()
    for path in ("/v1/chat/completions", "/v1/models", "/metricsx", "/health"):
        with pytest.raises(HTTPException, match="metrics_only key may read /metrics only"):
            await auth.user_api_key_auth(on(path), "sk-example-metrics-scraper-change-me")


def test_the_demo_starts_the_pools_its_yaml_declares() -> None:
    from litellm_dualpool.demo.orchestrator import pools_of_config

    pools = pools_of_config(CONFIG_DIR / "demo.yaml")
    assert [(p.name, p.instances, p.max_model_len, p.max_num_seqs, p.max_num_batched_tokens)
            for p in pools] == [("short", 2, 8192, 128, 16384), ("long", 1, 65536, 16, 8192)]
    assert pools[0].api_base_env == ("DUALPOOL_DEMO_SHORT_0_API_BASE",
                                     "DUALPOOL_DEMO_SHORT_1_API_BASE")
