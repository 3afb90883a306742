"""`litellm-dualpool check-config FILE`: validate a LiteLLM YAML as the plugin sees it.

Prints the dual-pool groups with their pools and the effective settings; exits 1 with the
offending path when the plugin would refuse to start.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from litellm_dualpool.config import PluginConfig, load_plugin_config_file
from litellm_dualpool.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the LiteLLM proxy YAML (litellm --config FILE)")
    parser.add_argument("--json", action="store_true", help="print the plugin's view as JSON")


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
        "settings": config.settings.model_dump(mode="json"),
    }


def run(args: argparse.Namespace) -> int:
    try:
        config = load_plugin_config_file(args.file)
        if not config.groups:
            raise ConfigError("no model group declares pools (model_info.max_model_len)",
                              path=args.file)
    except ConfigError as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 1
    result = view(config)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.file}: OK")
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
    settings = config.settings
    print(f"default output budget {settings.default_output_tokens} tokens, headroom "
          f"{settings.headroom_fraction:.0%}, routing {settings.routing}, spillover "
          f"{'at load ' + format(settings.spillover.load_fraction, '.2f') if settings.spillover.enabled else 'off'}")
    return 0
