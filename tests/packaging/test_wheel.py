"""The wheel as a gateway installs it: built from this checkout, installed into a fresh venv with
only `litellm[proxy]==1.106.12` (no `[tools]` extra). The plugin's commands must work there, the
demo's config must be inside, and the tools commands must say which extra they need.

Slow (a venv and LiteLLM's whole dependency tree: minutes), so `slow` and `e2e`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from litellm_dualpool import __version__

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
LITELLM_PROXY = "litellm[proxy]==1.106.12"
#: building and installing LiteLLM's tree from the local registry takes minutes
INSTALL_SECONDS = 900
#: what the packaged demo.yaml reads from the environment
DEMO_ENV = {"LITELLM_MASTER_KEY": "sk-wheel-test-" + "x" * 24,
            **{f"DUALPOOL_DEMO_SHORT_{i}_API_BASE": f"http://127.0.0.1:{9300 + i}/v1"
               for i in range(2)},
            "DUALPOOL_DEMO_LONG_0_API_BASE": "http://127.0.0.1:9400/v1"}


def _run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A private temporary directory: pytest's numbered tmp dirs are shared by every pytest run
    of the machine's user and pruned at each session start, which removed a venv mid-test."""
    with tempfile.TemporaryDirectory(prefix="dualpool-wheel-test-") as path:
        yield Path(path)


#: what the wheel is built from (what examples/kubernetes/Dockerfile copies too)
SOURCES = ("pyproject.toml", "README.md", "litellm_dualpool")


@pytest.fixture(scope="module")
def wheel(workdir: Path) -> Path:
    """The wheel of this checkout (its root, not the copy installed in the test venv), built from
    a copy of its sources: an in-tree build would reuse a stale build/ directory and leave
    build/ and *.egg-info in the checkout (the latter even made pip skip the install)."""
    source = workdir / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    out = workdir / "wheel"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                  str(source)], env=_env(), timeout=INSTALL_SECONDS)
    assert built.returncode == 0, built.stdout + built.stderr
    [path] = out.glob("litellm_dualpool-*.whl")
    return path


@pytest.fixture(scope="module")
def gateway_venv(wheel: Path, workdir: Path) -> Path:
    """A fresh venv with the wheel and LiteLLM's proxy only; returns its bin directory."""
    root = workdir / "gateway-venv"
    venv.create(root, with_pip=True)
    bin_dir = root / "bin"
    installed = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel),
                      LITELLM_PROXY], env=_env(), cwd=workdir, timeout=INSTALL_SECONDS)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return bin_dir


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true", **extra)
    return env


def test_wheel_carries_the_demo_config_and_the_typed_marker(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "litellm_dualpool/demo/demo.yaml" in names
    assert "litellm_dualpool/py.typed" in names
    packaged = zipfile.ZipFile(wheel).read("litellm_dualpool/demo/demo.yaml")
    assert packaged == (REPO / "proxy_config" / "demo.yaml").read_bytes()
    assert wheel.name.startswith(f"litellm_dualpool-{__version__}-")


def test_installed_without_tools_the_cli_reports_its_version(gateway_venv: Path,
                                                             workdir: Path) -> None:
    result = _run([str(gateway_venv / "litellm-dualpool"), "--version"], env=_env(), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"litellm-dualpool {__version__}"
    # the tools extra is really absent, so the next test checks the real failure
    probe = _run([str(gateway_venv / "python"), "-c", "import quicktok"], env=_env(), cwd=workdir)
    assert probe.returncode != 0


# numpy, rich, uvicorn, starlette and openai come with litellm[proxy]: what a gateway lacks is
# quicktok (the emulator's and the demo's exact tokenizer) and matplotlib (simulate --plots)
@pytest.mark.parametrize(("argv", "missing"), [
    (["emulate"], "quicktok"), (["demo"], "quicktok"),
    (["simulate", "--synthetic", "100", "--plots", "figures"], "matplotlib")])
def test_installed_without_tools_the_tools_commands_name_the_extra(
        gateway_venv: Path, workdir: Path, argv: list[str], missing: str) -> None:
    result = _run([str(gateway_venv / "litellm-dualpool"), *argv], env=_env(), cwd=workdir)
    assert result.returncode == 2
    assert f"litellm-dualpool {argv[0]}" in result.stderr
    assert f"needs the [tools] extra (missing: {missing}" in result.stderr
    assert result.stdout == ""  # nothing ran: simulate stopped before simulating
    assert "pip install 'litellm-dualpool[tools]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_installed_without_tools_the_plugin_checks_the_packaged_demo_config(
        gateway_venv: Path, workdir: Path) -> None:
    """What a gateway needs works without [tools]: the plugin's config validation, here on the
    demo.yaml found through the installed package (not this checkout)."""
    python = str(gateway_venv / "python")
    where = _run([python, "-c", "import importlib.resources as r; print(r.files("
                  "'litellm_dualpool.demo').joinpath('demo.yaml'))"], env=_env(), cwd=workdir)
    assert where.returncode == 0, where.stderr
    config = Path(where.stdout.strip())
    assert config.is_file() and REPO not in config.parents
    checked = _run([str(gateway_venv / "litellm-dualpool"), "check-config", str(config), "--json"],
                   env=_env(**DEMO_ENV), cwd=workdir)
    assert checked.returncode == 0, checked.stderr
    assert '"llama-3-70b"' in checked.stdout
    plugin = _run([python, "-c", "import litellm_dualpool; "
                   "print(type(litellm_dualpool.proxy_handler_instance).__name__)"],
                  env=_env(**DEMO_ENV, LITELLM_DUALPOOL_CONFIG=str(config)), cwd=workdir,
                  timeout=300)
    assert plugin.returncode == 0, plugin.stderr[-3000:]
    assert plugin.stdout.strip().splitlines()[-1] == "DualPoolCallback"
