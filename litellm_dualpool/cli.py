"""`litellm-dualpool` command line: parse, hand over to the library, render. No logic here.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``;
it is imported only when chosen, so `litellm-dualpool emulate` never imports litellm. Commands
that need the optional `[tools]` extra are checked before their module is imported, so a gateway
installed without it gets one line naming the extra instead of a ``ModuleNotFoundError``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from litellm_dualpool import __version__
from litellm_dualpool.commands.common import EXIT_UNAVAILABLE, require_modules

#: what users read on `litellm-dualpool --help` (the module docstring is for developers)
DESCRIPTION = """\
Dual-pool token-budget routing for vLLM fleets behind the LiteLLM proxy.

The plugin itself runs inside `litellm --config FILE`; these commands check its configuration,
estimate requests, and size, simulate and emulate fleets."""

EPILOG = """\
conventions: every command takes --json (stdout then carries one JSON object, nothing else);
warnings go to stderr; pools are --pool NAME=MAX_MODEL_LEN or --pool KEY=VALUE,...
commands marked [tools] need: pip install 'litellm-dualpool[tools]'

examples:
  litellm-dualpool check-config proxy_config/nvidia-llama3-70b.yaml
  echo '{"model": "llama-3-70b", "messages": [{"role": "user", "content": "hi"}]}' \\
      | litellm-dualpool estimate --pool short=8192 --pool long=65536
  litellm-dualpool emulate --model llama-3-70b --max-model-len 8192 --port 8001
  litellm-dualpool demo"""

#: the `[tools]` extra's modules, by import name, that the tools commands import
TOOLS_COMMON = ("numpy", "rich")
EMULATOR_MODULES = ("quicktok", "uvicorn", "starlette")


@dataclass(frozen=True, slots=True)
class Command:
    module: str  #: the module with configure(parser) and run(args)
    help: str  #: one line in the top-level help
    needs: tuple[str, ...] = ()  #: modules of the [tools] extra it cannot start without

    @property
    def summary(self) -> str:
        return self.help + (" [tools]" if self.needs else "")


COMMANDS: dict[str, Command] = {
    "check-config": Command("litellm_dualpool.commands.check_config",
                            "validate a LiteLLM YAML as the plugin sees it"),
    "estimate": Command("litellm_dualpool.commands.estimate",
                        "estimate the token budget and pool of a request body"),
    "plan": Command("litellm_dualpool.planner.command", "size short/long pools for a workload",
                    TOOLS_COMMON),
    "simulate": Command("litellm_dualpool.sim.command", "simulate a fleet on a trace",
                        TOOLS_COMMON),
    "emulate": Command("litellm_dualpool.emulator.command", "run an emulated vLLM server",
                       EMULATOR_MODULES),
    "demo": Command("litellm_dualpool.demo.command",
                    "the main job: gateway + emulated pools + workload, then a report",
                    (*TOOLS_COMMON, *EMULATOR_MODULES, "openai")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litellm-dualpool", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints usage, help, the version or an error, and exits
        return 2
    name, rest = argv[0], argv[1:]
    command = COMMANDS[name]
    if not require_modules(name, command.needs):
        return EXIT_UNAVAILABLE
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"litellm-dualpool {name}", description=command.help)
    module.configure(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
