"""`litellm-dualpool` command line: parse, hand over to the library, render. No logic here.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``;
it is imported only when chosen, so `litellm-dualpool emulate` never imports litellm.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "estimate": ("litellm_dualpool.commands.estimate", "estimate the token budget of a request body"),
    "check-config": ("litellm_dualpool.commands.check_config", "validate a LiteLLM YAML as the plugin sees it"),
    "emulate": ("litellm_dualpool.emulator.command", "run an emulated vLLM server"),
    "simulate": ("litellm_dualpool.sim.command", "simulate a fleet on a trace"),
    "plan": ("litellm_dualpool.planner_command", "size short/long pools for a workload"),
    "demo": ("litellm_dualpool.demo.command", "the main job: gateway + emulated pools + workload"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litellm-dualpool", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints usage / error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"litellm-dualpool {name}", description=COMMANDS[name][1])
    module.configure(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
