"""Reading Prometheus text the way the tests judge it: a metric whose family is not exposed at
all is a failure (a renamed metric must not read as a zero); a family without the labelled
sample asked for reads 0 (a counter not incremented yet)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

#: Sample-name suffixes of a family (counters' _total, histograms' parts, _created).
_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


def family_of(name: str) -> tuple[str, ...]:
    """The family names a sample name can belong to."""
    return (name, *(name[: -len(s)] for s in _SUFFIXES if name.endswith(s)))


def sample_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`; AssertionError when
    no family `name` belongs to is in `text`."""
    families = list(text_string_to_metric_families(text))
    candidates = family_of(name)
    if not any(f.name in candidates for f in families):
        raise AssertionError(f"metric {name} is not exposed")
    return sum(s.value for f in families for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def registry_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """`sample_value` for an in-process registry."""
    if not {f.name for f in registry.collect()} & set(family_of(name)):
        raise AssertionError(f"metric {name} is not registered")
    return registry.get_sample_value(name, labels) or 0.0
