"""Conventions shared by the subcommands: the `[tools]` extra check, warnings, `--json`, and the
one `--pool` syntax.

One place decides these so that every command reads the same: a command whose optional
dependencies are missing says which extra to install *before* it does any work (not a
``ModuleNotFoundError`` after a long simulation); warnings go to stderr so that ``--json``
leaves stdout to exactly one JSON object; ``--pool`` is ``KEY=VALUE,...`` everywhere, with the
``NAME=MAX_MODEL_LEN`` shorthand accepted wherever a pool is named.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Mapping

#: the optional dependencies the `tools` extra installs, by import name (pyproject.toml)
TOOLS_EXTRA = "tools"
INSTALL_TOOLS = "pip install 'litellm-dualpool[tools]'"
#: exit status of a command that cannot run in this environment (same as a usage error)
EXIT_UNAVAILABLE = 2


def missing_modules(names: Iterable[str]) -> list[str]:
    """The names in `names` that cannot be imported here.

    Imports them rather than only looking them up, so a broken install (a module present whose
    own dependencies are missing) counts as missing too; the commands import them next anyway.
    """
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def extra_message(command: str, missing: Iterable[str], *, purpose: str = "") -> str:
    """The one message for a missing extra: what is missing, for what, and the install line."""
    what = f" {purpose}" if purpose else ""
    return (f"litellm-dualpool {command}{what} needs the [{TOOLS_EXTRA}] extra (missing: "
            f"{', '.join(missing)}); install it with: {INSTALL_TOOLS}")


def require_modules(command: str, names: Iterable[str], *, purpose: str = "") -> bool:
    """True when `names` import; else print `extra_message` to stderr and return False."""
    missing = missing_modules(names)
    if missing:
        print(extra_message(command, missing, purpose=purpose), file=sys.stderr)
    return not missing


def warn(command: str, message: str) -> None:
    """A warning on stderr, named after its command (stdout stays for results and --json)."""
    print(f"litellm-dualpool {command}: warning: {message}", file=sys.stderr)


def add_json_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                  help_text: str | None = None) -> None:
    """`--json`: stdout then carries exactly one JSON object; humans' text goes to stderr."""
    parser.add_argument("--json", action="store_true",
                        help=help_text or "print one JSON object on stdout (and nothing else)")


class _DeprecatedAlias(argparse.Action):
    """Stores like the new flag, and says on stderr which flag to use instead."""

    def __init__(self, *args: object, new: str, **kwargs: object) -> None:
        self.new = new
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # argparse's Action signature

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"litellm-dualpool: warning: {option_string} is deprecated; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_hidden_alias(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, *,
                     dest: str, value_type: type = str, new: str | None = None) -> None:
    """An old spelling of a renamed flag: still accepted, not shown in --help; with `new`, a
    deprecation warning on stderr names the flag to use."""
    if new is None:
        parser.add_argument(old, dest=dest, type=value_type, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
        return
    parser.add_argument(old, dest=dest, type=value_type, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, action=_DeprecatedAlias, new=new)


def add_slo_ttft_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`plan` and `simulate`'s TTFT target, one flag for every form (`planner.model.Slo.parse`);
    the older spelling ``--ttft-slo`` still works."""
    parser.add_argument("--slo-ttft", metavar="TARGET", default="2",
                        help="P99 TTFT target: seconds (2, 2s, 500ms), a rule that grows with the "
                             "prompt (2s+1s/8k: 2 s plus 1 s per 8192 prompt tokens), or one per "
                             "request class (short=1s,long=4s+1s/8k[,boundary=8k]; long: over "
                             "boundary total tokens); the same rule for both fleets "
                             "(default %(default)s s)")
    add_hidden_alias(parser, "--ttft-slo", dest="slo_ttft", new="--slo-ttft")


def parse_pool(text: str, allowed: Mapping[str, str], *, index: int = 0) -> dict[str, str]:
    """One ``--pool`` value as fields: ``name=short,max_model_len=8192,...`` or the shorthand
    ``short=8192`` (name and max_model_len), optionally ``short=8192@0.95`` (with ``load``).

    `allowed` maps each accepted key to its alias target (a key maps to itself; an old key such
    as ``tp`` maps to ``tensor_parallel_size``). Raises ValueError naming the pool's index.
    """
    fields: dict[str, str] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1:
        key, sep, value = parts[0].partition("=")
        if sep and key and key not in allowed:  # the shorthand NAME=LEN[@LOAD]
            limit, at, load = value.partition("@")
            fields = {"name": key, "max_model_len": limit}
            if at:
                if "load" not in allowed:
                    raise ValueError(f"pool[{index}]: this command takes no @LOAD, got {text!r}")
                fields["load"] = load
            return fields
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"pool[{index}]: expected NAME=MAX_MODEL_LEN or KEY=VALUE,... with KEY "
                             f"in {sorted(set(allowed))}, got {part!r}")
        fields[allowed[key]] = value
    if "name" not in fields:
        raise ValueError(f"pool[{index}].name: a pool needs a name, got {text!r}")
    return fields
