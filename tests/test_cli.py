"""The command line's conventions: --version, user-facing help, the [tools] extra checked up
front, --json leaving stdout to one JSON object, one --pool syntax, warnings on stderr, and the
demo's packaged config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from litellm_dualpool import __version__
from litellm_dualpool.cli import COMMANDS, main
from litellm_dualpool.commands.common import parse_pool

REPO = Path(__file__).resolve().parents[1]
ESTIMATE_BODY = {"model": "llama-3-70b", "max_tokens": 64,
                 "messages": [{"role": "user", "content": "How do pools work? " * 40}]}


def _cli_without(modules: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter where `modules` cannot be imported (a None entry in
    sys.modules is Python's own way of making an import fail), as without the [tools] extra."""
    code = ("import sys\n"
            f"for name in {modules!r}: sys.modules[name] = None\n"
            "from litellm_dualpool.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"litellm-dualpool {__version__}"


def test_top_level_help_is_for_users_and_marks_tools_commands(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "No logic here" not in out and "--version" in out
    assert "pip install 'litellm-dualpool[tools]'" in out
    for name, command in COMMANDS.items():
        assert name in out
        assert (f"{command.help} [tools]" in " ".join(out.split())) is bool(command.needs)


@pytest.mark.parametrize(("command", "missing"), [("emulate", "quicktok"), ("demo", "openai"),
                                                  ("simulate", "numpy"), ("plan", "rich")])
def test_tools_commands_name_the_extra_when_it_is_missing(command: str, missing: str) -> None:
    result = _cli_without([missing], command, "--help")
    assert result.returncode == 2
    assert result.stdout == ""  # not even --help: the command could not run anyway
    assert f"litellm-dualpool {command} needs the [tools] extra (missing: {missing})" in result.stderr
    assert "pip install 'litellm-dualpool[tools]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_plots_checks_matplotlib_before_simulating(tmp_path: Path) -> None:
    result = _cli_without(["matplotlib"], "simulate", "--synthetic", "2000", "--rate", "50",
                          "--no-progress", "--plots", str(tmp_path))
    assert result.returncode == 2
    assert "simulate --plots needs the [tools] extra (missing: matplotlib)" in result.stderr
    assert result.stdout == ""  # no table: it stopped before the simulation
    assert list(tmp_path.iterdir()) == []


def test_plan_plots_checks_matplotlib_before_planning(tmp_path: Path) -> None:
    result = _cli_without(["matplotlib"], "plan", "--prompt-percentiles", "50=1000,100=4000",
                          "--rate", "10", "--plots", str(tmp_path))
    assert result.returncode == 2
    assert "plan --plots needs the [tools] extra (missing: matplotlib)" in result.stderr
    assert result.stdout == ""  # no table: it stopped before the planning
    assert list(tmp_path.iterdir()) == []


def test_simulate_json_is_alone_on_stdout_and_an_overloaded_fleet_warns(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--synthetic", "400", "--rate", "200", "--gpu", "h100", "--model",
                 "llama-3.1-8b", "--tensor-parallel-size", "1", "--no-progress", "--json",
                 "--pool", "name=short,max_model_len=4096,max_num_seqs=8,instances=1",
                 "--pool", "name=long,max_model_len=16384,max_num_seqs=4,instances=1"])
    assert code == 0
    captured = capsys.readouterr()
    [line] = captured.out.splitlines()
    result = json.loads(line)
    assert result["fleet"]["slo_attainment"] < 0.5
    assert "litellm-dualpool simulate: warning: the fleet met the SLO for only" in captured.err
    assert "TTFT p99" in captured.err  # the human table, on stderr


def test_simulate_old_tp_spelling_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--synthetic", "50", "--rate", "5", "--gpu", "h100", "--model",
            "llama-3.1-8b", "--no-progress", "--json", "--pool", "short=4096", "--pool", "long=16384"]
    assert main([*argv, "--tp", "2"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert main([*argv, "--tensor-parallel-size", "2"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert [p["gpus"] for p in old["pools"]] == [p["gpus"] for p in new["pools"]]
    assert old["pools"][0]["gpus"] == 2 * old["pools"][0]["instances"]


def test_simulate_takes_a_pool_s_long_prefill_token_threshold_and_a_per_class_ttft_slo(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same pools with and without vLLM's --long-prefill-token-threshold: the flag reaches
    the engine (a long prompt no longer holds every step, so the first tokens come sooner);
    a per-class TTFT target is accepted and held per request."""
    argv = ["simulate", "--synthetic", "300", "--rate", "40", "--gpu", "h100", "--model", "llama-3.1-8b",
            "--tensor-parallel-size", "1", "--no-progress", "--json", "--router", "homogeneous",
            "--slo-ttft", "short=500ms,long=2s+1s/8k,boundary=4k"]
    pool = "name=all,max_model_len=16384,max_num_seqs=64,max_num_batched_tokens=4096,instances=2"
    assert main([*argv, "--pool", pool]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--pool", pool + ",long_prefill_token_threshold=256"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["fleet"]["requests"] == plain["fleet"]["requests"]
    assert capped["fleet"]["ttft_p50_seconds"] < plain["fleet"]["ttft_p50_seconds"]


@pytest.mark.parametrize(("text", "expected"), [
    ("short=8192", {"name": "short", "max_model_len": "8192"}),
    ("short=8192@0.95", {"name": "short", "max_model_len": "8192", "load": "0.95"}),
    ("name=short,max_model_len=8192,load=0.95",
     {"name": "short", "max_model_len": "8192", "load": "0.95"}),
    ("name=long,tp=8", {"name": "long", "tensor_parallel_size": "8"}),
])
def test_one_pool_syntax_with_its_shorthand(text: str, expected: dict[str, str]) -> None:
    keys = {"name": "name", "max_model_len": "max_model_len", "load": "load",
            "tensor_parallel_size": "tensor_parallel_size", "tp": "tensor_parallel_size"}
    assert parse_pool(text, keys) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("max_model_len=8192", "pool[3].name"),
    ("name=a,colour=red", "got 'colour=red'"),
    ("short=8192@0.9", "takes no @LOAD"),
])
def test_bad_pools_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_pool(text, {"name": "name", "max_model_len": "max_model_len"}, index=3)


def _run_estimate(argv: tuple[str, ...], body: dict[str, object]) -> str:
    result = subprocess.run([sys.executable, "-m", "litellm_dualpool.cli", "estimate", *argv],
                            input=json.dumps(body), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_estimate_keys_calibration_by_the_bodys_model_and_takes_both_pool_forms() -> None:
    short = json.loads(_run_estimate(("--json", "--pool", "short=8192", "--pool", "long=65536"),
                                     ESTIMATE_BODY))
    assert short["estimate"]["key"]["model_group"] == "llama-3-70b"
    long_form = json.loads(_run_estimate(
        ("--pool", "name=short,max_model_len=8192", "--pool", "name=long,max_model_len=65536",
         "--model-group", "other"), ESTIMATE_BODY))
    assert long_form["estimate"]["key"]["model_group"] == "other"
    assert long_form["decision"] == short["decision"]
    anonymous = {k: v for k, v in ESTIMATE_BODY.items() if k != "model"}
    assert json.loads(_run_estimate((), anonymous))["estimate"]["key"]["model_group"] == "default"


def test_demo_config_ships_in_the_package_identical_to_proxy_config() -> None:
    import importlib.resources

    packaged = importlib.resources.files("litellm_dualpool.demo").joinpath("demo.yaml")
    assert packaged.read_bytes() == (REPO / "proxy_config" / "demo.yaml").read_bytes()


def test_emulate_json_announces_where_it_listens(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "litellm_dualpool.cli", "emulate", "--instant", "--port", "0",
         "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["host"] == "127.0.0.1" and ready["pid"] == process.pid
        assert httpx.get(ready["url"] + "/health", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(("module", "extra"), [
    ("litellm_dualpool.planner.command", ["--trace", "t.csv"]),
    ("litellm_dualpool.sim.command", ["--synthetic", "10"]),
    ("litellm_dualpool.emulator.command", []),
])
def test_one_tensor_parallel_flag_everywhere_the_old_one_deprecated(
        module: str, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).configure(parser)
    for flags in (["--tensor-parallel-size", "2"], ["-tp", "2"]):
        assert parser.parse_args([*extra, *flags]).tensor_parallel_size == 2
        assert capsys.readouterr().err == ""
    assert parser.parse_args([*extra, "--tp", "4"]).tensor_parallel_size == 4
    assert ("--tp is deprecated; use --tensor-parallel-size"
            in capsys.readouterr().err)
    shown = parser.format_help()
    assert "--tensor-parallel-size" in shown and "--tp " not in shown


@pytest.mark.parametrize(("module", "extra"), [
    ("litellm_dualpool.planner.command", ["--trace", "t.csv"]),
    ("litellm_dualpool.sim.command", ["--synthetic", "10"]),
])
def test_one_ttft_target_flag_the_old_spelling_deprecated(
        module: str, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).configure(parser)
    assert parser.parse_args(extra).slo_ttft == "2"
    assert parser.parse_args([*extra, "--slo-ttft", "2s+1s/8k"]).slo_ttft == "2s+1s/8k"
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*extra, "--ttft-slo", "500ms"]).slo_ttft == "500ms"
    assert "--ttft-slo is deprecated; use --slo-ttft" in capsys.readouterr().err
    assert "--ttft-slo" not in parser.format_help()
