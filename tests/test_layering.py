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
    "planner.py": {"litellm", "litellm_dualpool.proxy"},
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
