"""`litellm-dualpool check-config FILE [--probe]`: validate a LiteLLM YAML as the plugin sees it.

Prints the dual-pool groups with their pools and the effective settings; exits 1 with the
offending path when the plugin would refuse to start. ``--probe`` also asks every deployment's
backend for its ``max_model_len`` (``GET /v1/models``, as the proxy does at start), prints it
beside the configured value, and exits 1 on a mismatch or a backend that does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from litellm_dualpool.config import PluginConfig, load_plugin_config, read_yaml
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.limits import Outcome, Probe, limit_targets


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the LiteLLM proxy YAML (litellm --config FILE)")
    parser.add_argument("--json", action="store_true", help="print the plugin's view as JSON")
    parser.add_argument("--probe", action="store_true",
                        help="ask each deployment's backend (GET /v1/models) for its max_model_len "
                             "and compare it with the configured one; exit 1 on a mismatch or "
                             "an unreachable backend")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="timeout of each backend's answer with --probe (default: "
                             "dualpool_settings.discovery.timeout_seconds)")


def probe_view(probes: list[Probe]) -> list[dict[str, object]]:
    return [{"deployment": p.target.path, "model_group": p.target.model_group,
             "served_model": p.target.served_model, "url": p.target.url,
             "configured_max_model_len": p.target.configured,
             "discovered_max_model_len": p.discovered, "outcome": p.outcome.value,
             "error": p.error} for p in probes]


def view(config: PluginConfig) -> dict[str, object]:
    suffix = config.settings.recovery.group_suffix
    return {
        "groups": {
            name: {
                "pools": [{"name": p.name, "max_model_len": p.max_model_len,
                           "deployments": p.deployment_count, "max_in_flight": p.max_in_flight,
                           "hardware": p.hardware} for p in group.pools],
                "recovery_group": name + suffix if config.settings.recovery.enabled else None,
            } for name, group in config.groups.items()},
        "pending": [{"deployment": p.path, "model_group": p.model_group}
                    for p in config.pending],
        "settings": config.settings.model_dump(mode="json"),
    }


def _probe(raw: dict[str, Any], config: PluginConfig,
           timeout: float | None) -> tuple[PluginConfig, list[Probe]]:
    from litellm_dualpool.limits_fetch import fetch_limits

    groups = [*config.groups, *config.waiting_groups]
    probes = fetch_limits(limit_targets(raw.get("model_list"), groups),
                          timeout_seconds=timeout or config.settings.discovery.timeout_seconds)
    found = {p.target.index: p.discovered for p in probes
             if p.outcome is Outcome.DISCOVERED and p.discovered is not None}
    return load_plugin_config(raw, source=config.source, discovered=found), probes


def run(args: argparse.Namespace) -> int:
    probes: list[Probe] | None = None
    if args.timeout is not None and not 0 < args.timeout <= 60:
        print(f"invalid: --timeout must be in (0, 60] seconds, got {args.timeout:g}", file=sys.stderr)
        return 2
    try:
        raw = read_yaml(args.file)
        config = load_plugin_config(raw, source=args.file)
        if args.probe:
            config, probes = _probe(raw, config, args.timeout)
        if not config.groups and not config.waiting_groups:
            raise ConfigError("no model group declares pools (model_info.max_model_len or "
                              "model_info.pool)", path=args.file)
    except ConfigError as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 1
    result = view(config)
    failed = [p for p in probes or [] if p.outcome in (Outcome.MISMATCH, Outcome.UNREACHABLE)]
    if probes is not None:
        result["probes"] = probe_view(probes)
        result["ok"] = not failed and not config.waiting_groups
    if args.json:
        print(json.dumps(result, indent=2))
        return 1 if probes is not None and not result["ok"] else 0
    wrong = sum(p.outcome is Outcome.MISMATCH for p in failed)
    print(f"{args.file}: " + ("OK" if not failed else
                              f"{wrong} mismatch(es), {len(failed) - wrong} unreachable"))
    groups: dict[str, Any] = result["groups"]  # type: ignore[assignment]  # view()'s JSON: a dict
    for name, group in groups.items():
        print(f"model group {name!r}:")
        for pool in group["pools"]:
            hardware = f", hardware {pool['hardware']}" if pool["hardware"] else ""
            print(f"  pool {pool['name']:<8} max_model_len {pool['max_model_len']:>8}  "
                  f"{pool['deployments']} deployment(s), capacity {pool['max_in_flight']} "
                  f"in flight{hardware}")
        if group["recovery_group"]:
            print(f"  misroute recovery via hidden group {group['recovery_group']!r}")
    for name in config.waiting_groups:
        print(f"model group {name!r}: pools formed from the backends' limits at start")
    for pending in config.pending:
        print(f"  {pending.path} ({pending.model_group!r}): max_model_len read from its backend "
              "at start" + (" (it did not answer)" if probes is not None else ""))
    if probes is not None:
        print("backend limits (GET /v1/models):")
        for p in probes:
            configured = p.target.configured if p.target.configured is not None else "-"
            found = p.discovered if p.discovered is not None else "-"
            print(f"  {p.target.path:<16} {p.target.url:<40} configured {configured!s:>8}  "
                  f"backend {found!s:>8}  {p.outcome.value}" + (f": {p.error}" if p.error else ""))
    settings = config.settings
    print(f"default output budget {settings.default_output_tokens} tokens, headroom "
          f"{settings.headroom_fraction:.0%}, routing {settings.routing}, spillover "
          f"{'at load ' + format(settings.spillover.load_fraction, '.2f') if settings.spillover.enabled else 'off'}")
    return 1 if failed or (probes is not None and config.waiting_groups) else 0
