"""The architecture as a test: the core stays free of LiteLLM and I/O; only proxy/ imports litellm."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "litellm_dualpool"

FORBIDDEN = {
    "core": {"litellm", "prometheus_client", "fastapi", "starlette", "asyncio", "redis", "httpx",
             "litellm_dualpool.proxy", "litellm_dualpool.sim", "litellm_dualpool.emulator",
             "litellm_dualpool.metrics"},
    "sim": {"litellm", "litellm_dualpool.proxy", "litellm_dualpool.emulator"},
    "planner": {"litellm", "litellm_dualpool.proxy"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(part: str, forbidden: set[str]) -> list[str]:
    root = PACKAGE / part
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    bad = []
    for file in files:
        for name in _imports(file):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{file.relative_to(PACKAGE)} imports {name}")
    return bad


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_boundaries(part: str) -> None:
    if not (PACKAGE / part).exists():
        pytest.fail(f"{part} is missing from the package")
    assert _violations(part, FORBIDDEN[part]) == []


def test_only_proxy_imports_litellm() -> None:
    bad = []
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(PACKAGE)
        if rel.parts[0] == "proxy":
            continue
        bad += [f"{rel} imports {n}" for n in _imports(file) if n == "litellm" or n.startswith("litellm.")]
    assert bad == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports(path: Path) -> set[str]:
    """The package modules `path` imports anywhere (function-level imports included: a cycle
    broken by an import inside a function is still a cycle), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("litellm_dualpool")}


def test_the_package_has_no_import_cycle() -> None:
    modules = {_module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _package_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt):], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def _calls(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None)
            if called in names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} calls {called}")
    return found


def test_only_the_core_builds_budgets_and_decides() -> None:
    """The proxy and the simulator route through `core.plan.plan_request`: neither assembles the
    estimate -> TokenBudget -> decide chain of its own."""
    bad = []
    for file in sorted(PACKAGE.rglob("*.py")):
        if file.relative_to(PACKAGE).parts[0] != "core":
            bad += _calls(file, {"TokenBudget", "decide"})
    assert bad == []


def test_the_simulator_routes_with_the_core_plan_entry() -> None:
    routers = PACKAGE / "sim" / "routers.py"
    assert "litellm_dualpool.core.plan" in _imports(routers)
    assert _calls(routers, {"plan_request"})
