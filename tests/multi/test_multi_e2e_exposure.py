"""What a tenant can read off a real proxy: `/metrics` and the budget header. Keys come from the shipped `custom_auth` (proxy_config/tenant_auth.py) over a tenants
file of the test's own; the backends are the stand-in vLLM servers.

- `/metrics` carries LiteLLM's series with every tenant's key alias, hashed key and client IP:
  a tenant key gets a 401 there; the master key and a `metrics_only` scrape key read it.
- `x-dualpool-budget-tokens` shows the live shared estimate: an ordinary tenant does not get
  it, the admin and a tenant whose policy sets `expose_budget_header` do.
- `dualpool_learned_spread_ratio` is on the scrape once the proxy has learned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from proxies import MASTER_KEY, Proxy, backends, proxy_config, running, samples

from tests.e2e.plugin_stack import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHIPPED_AUTH = Path(__file__).resolve().parents[2] / "proxy_config" / "tenant_auth.py"
PLAIN = "sk-e2e-plain-tenant-00001"
GRANTED = "sk-e2e-granted-tenant-001"
SCRAPER = "sk-e2e-metrics-scraper-01"
PLAIN_ALIAS = "plain-tenant-alias"
TENANTS = [
    {"key": PLAIN, "key_alias": PLAIN_ALIAS, "team_id": "team-plain"},
    {"key": GRANTED, "key_alias": "granted", "team_id": "team-granted",
     "metadata": {"dualpool_policy": {"expose_budget_header": True}}},
    {"key": SCRAPER, "key_alias": "prometheus", "metrics_only": True},
]
BUDGET, POOL = "x-dualpool-budget-tokens", "x-dualpool-pool"
TEXT = "Summarise the causes of the French Revolution in three sentences. " * 8


def write_tenants(path: Path) -> Path:
    """The tenants file tenant_auth.py reads: SHA-256 digests of the keys only."""
    entries = []
    for tenant in TENANTS:
        entry = {k: v for k, v in tenant.items() if k != "key"}
        entries.append({"key_sha256": hashlib.sha256(tenant["key"].encode()).hexdigest(), **entry})
    path.write_text(yaml.safe_dump({"tenants": entries}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    root = tmp_path_factory.mktemp("exposure")
    tenants = write_tenants(root / "tenants.yaml")
    with backends(root, ("short", 2048), ("long", 16384)) as pools:
        config = proxy_config("llama", pools, {"default_output_tokens": 64})
        started = Proxy("exposure", config, root / "proxy", auth_module=SHIPPED_AUTH,
                        env={"DUALPOOL_TENANTS_FILE": str(tenants)})
        with running(started) as (running_proxy,):
            yield running_proxy


def scrape(proxy: Proxy, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(proxy.url + "/metrics/", headers=headers, timeout=10, follow_redirects=True)


def test_metrics_are_the_admins_and_the_scrape_keys_not_the_tenants(proxy: Proxy) -> None:
    served = proxy.chat(PLAIN, TEXT, max_tokens=8)
    assert served.status_code == 200, served.text
    for key in (PLAIN, GRANTED, None, "sk-not-a-key-at-all-0001"):
        refused = scrape(proxy, key)
        assert refused.status_code == 401, (key, refused.status_code)
        assert "dualpool_" not in refused.text and PLAIN_ALIAS not in refused.text
    for key in (MASTER_KEY, SCRAPER):
        read = scrape(proxy, key)
        assert read.status_code == 200, read.text[-500:]
        assert samples(read.text, "dualpool_requests_total", model_group="llama")
    # what the 401 protects: LiteLLM's own series name the tenant's key alias
    assert PLAIN_ALIAS in scrape(proxy, MASTER_KEY).text
    # the scrape key reads /metrics and nothing else; an unknown key is a 401 (custom_auth's
    # PermissionError went to LiteLLM's database-outage classifier, which failed: 500)
    assert proxy.chat(SCRAPER, TEXT, max_tokens=8).status_code == 403
    assert proxy.chat("sk-not-a-key-at-all-0001", TEXT, max_tokens=8).status_code == 401


def test_the_budget_header_is_the_admins_and_granted_tenants_only(proxy: Proxy) -> None:
    plain = proxy.chat(PLAIN, TEXT, max_tokens=8)
    assert plain.status_code == 200, plain.text
    assert plain.headers[POOL] == "short"
    assert BUDGET not in plain.headers
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {PLAIN}"},
                      json={"model": "llama", "stream": True, "max_tokens": 8,
                            "messages": [{"role": "user", "content": TEXT}]}) as stream:
        assert stream.status_code == 200
        assert stream.headers[POOL] == "short" and BUDGET not in stream.headers
        assert "[DONE]" in "".join(stream.iter_text())
    for key in (GRANTED, MASTER_KEY):
        response = proxy.chat(key, TEXT, max_tokens=8)
        assert response.status_code == 200, response.text
        assert response.headers[POOL] == "short"
        assert 8 < int(response.headers[BUDGET]) <= 2048


def test_the_learned_spread_is_on_the_scrape(proxy: Proxy) -> None:
    for _ in range(3):  # the admin's usage is trusted: learned at once
        assert proxy.chat(MASTER_KEY, TEXT, max_tokens=8).status_code == 200

    def spreads() -> list[tuple[str, float]]:
        return samples(proxy.metrics(), "dualpool_learned_spread_ratio", model_group="llama")

    eventually(lambda: bool(spreads()))
    for labels, spread in spreads():
        assert 'category="' in labels
        assert 0.0 < spread < 1.0, (labels, spread)
