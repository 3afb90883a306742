"""The Grafana dashboard queries only metrics the plugin exports, covers the shared-state
(Redis) health metrics, imports with a datasource input, and gives rates their units."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from litellm_dualpool.metrics import DualPoolMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "dualpool-dashboard.json"
METRIC = re.compile(r"\bdualpool_[a-z0-9_]+")
#: the series names a family of each type exposes (prometheus_client strips _total from names)
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created")}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _exported_series() -> set[str]:
    registry = CollectorRegistry()
    DualPoolMetrics(registry)
    return {family.name + suffix for family in registry.collect()
            for suffix in SUFFIXES[family.type]}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _queried(dashboard: dict[str, Any]) -> set[str]:
    texts = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    texts += [json.dumps(v.get("query", "")) for v in dashboard["templating"]["list"]]
    return {name for text in texts for name in METRIC.findall(text)}


def test_every_queried_dualpool_metric_is_exported(dashboard: dict[str, Any]) -> None:
    queried = _queried(dashboard)
    assert len(queried) >= 15
    assert sorted(queried - _exported_series()) == []


def test_every_exported_family_has_a_panel(dashboard: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    DualPoolMetrics(registry)
    families = {family.name for family in registry.collect()}
    queried = _queried(dashboard)
    unseen = {f for f in families if not any(q.startswith(f) for q in queried)}
    assert sorted(unseen) == []
    assert {f for f in families if f.startswith("dualpool_state_")}  # Redis health is covered


def test_dashboard_imports_with_a_datasource_input(dashboard: dict[str, Any]) -> None:
    [source] = dashboard["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == "prometheus"
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == "${" + source["name"] + "}"
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_have_units_and_distinct_ids(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        exprs = " ".join(t["expr"] for t in panel["targets"])
        if "tokens_total" in exprs:  # a token rate is tokens/s, not a bare number
            assert "tok/s" in unit, panel["title"]
        if "_seconds_bucket" in exprs:
            assert unit == "s", panel["title"]
