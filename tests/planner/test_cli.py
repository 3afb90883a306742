"""`litellm-dualpool plan` and `simulate --plots` end to end: the JSON contract, the emitted
LiteLLM YAML read back by the plugin's own validator, and the figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from litellm_dualpool.cli import main
from litellm_dualpool.config import load_plugin_config_file
from litellm_dualpool.planner.plots import FILES, PLAN_FILES

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "data" / "traces"
CONV = TRACES / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
DATA = Path(__file__).with_name("data")
SHORT_BENCH = DATA / "vllm-bench-short-256in-32out.json"  # far shorter than any short pool's mean
LONG_BENCH = DATA / "vllm-bench-long-1152in-208out.json"  # ~the conv trace's means (1155 / 211)


def test_plan_json_contract_end_to_end() -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "litellm_dualpool.cli", "plan", "--trace", str(CONV), "--rate", "1000",
         "--gpu", "a100", "--model", "llama-3-70b", "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(plan["threshold"], int) and plan["threshold"] in (2048, 4096, 8192, 16384, 32768)
    homogeneous, dual = plan["homogeneous"], plan["dual_pool"]
    for fleet in (homogeneous, dual):
        assert isinstance(fleet["gpus"], int) and fleet["gpus"] > 0
        assert fleet["usd_per_year"] == pytest.approx(fleet["gpus"] * 2.21 * 8760)
    assert [p["name"] for p in dual["pools"]] == ["short", "long"]
    assert dual["pools"][0]["flags"]["max_model_len"] == plan["threshold"]
    assert sum(p["gpus"] for p in dual["pools"]) == dual["gpus"]
    assert plan["saving_fraction"] == pytest.approx(1 - dual["usd_per_year"] / homogeneous["usd_per_year"])
    # rho as goodput at the SLO: the closed form tells the discrete sizing's story; the paper's
    # saturation rho promises far more than the sizing finds
    assert plan["closed_form_saving_fraction"] == pytest.approx(plan["saving_fraction"], abs=0.05)
    assert plan["closed_form_saturation_saving_fraction"] > plan["closed_form_saving_fraction"] + 0.1
    # three baselines; the headline (homogeneous, saving_fraction) is the tuned one
    baselines = plan["baselines"]
    assert set(baselines) == {"paper", "vllm_default", "tuned_homogeneous"}
    tuned = baselines["tuned_homogeneous"]
    assert (tuned["gpus"], tuned["usd_per_year"]) == (homogeneous["gpus"], homogeneous["usd_per_year"])
    assert tuned["usd_per_year"] <= min(baselines["paper"]["usd_per_year"], baselines["vllm_default"]["usd_per_year"])
    assert set(tuned["config"]) == {"gpu", "tp", "max_num_seqs", "max_num_batched_tokens"}
    assert tuned["config"]["gpu"] == "a100"
    assert baselines["paper"]["config"]["max_num_seqs"] == 16
    assert (baselines["vllm_default"]["config"]["max_num_seqs"],
            baselines["vllm_default"]["config"]["max_num_batched_tokens"]) == (256, 2048)  # vLLM on A100
    assert plan["saving_vs_tuned_fraction"] == plan["saving_fraction"]
    assert plan["saving_vs_paper_fraction"] == pytest.approx(
        1 - dual["usd_per_year"] / baselines["paper"]["usd_per_year"])
    assert plan["binding_constraint"].split(":")[0] in ("short", "long")
    for pool in dual["pools"]:
        assert pool["gpu"] == "a100" and pool["tp"] in (2, 4, 8)
        assert pool["instances"] * pool["tp"] == pool["gpus"]
        assert pool["max_num_seqs"] == pool["flags"]["max_num_seqs"]
        assert pool["max_num_batched_tokens"] == pool["flags"]["max_num_batched_tokens"]
    for pool in (*homogeneous["pools"], *dual["pools"]):  # the KV check of each pool
        kv = pool["kv"]
        assert kv["max_num_seqs"] == pool["flags"]["max_num_seqs"]
        assert kv["can_preempt"] == (kv["max_num_seqs"] > kv["safe_max_num_seqs"])


def test_plan_sizes_measured_pools_from_vllm_bench_files() -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "litellm_dualpool.cli", "plan", "--trace", str(CONV), "--rate", "1000",
         "--gpu", "a100", "--model", "llama-3-70b", "--thresholds", "8192", "--short-bench", str(SHORT_BENCH),
         "--long-bench", str(LONG_BENCH), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    mu = {role: json.loads(path.read_text())["request_throughput"]
          for role, path in (("short", SHORT_BENCH), ("long", LONG_BENCH))}
    tp = plan["hardware"]["tensor_parallel_size"]
    (homogeneous,) = plan["homogeneous"]["pools"]
    short, long = plan["dual_pool"]["pools"]
    for pool, role in ((homogeneous, "long"), (short, "short"), (long, "long")):
        assert pool["mu_per_instance"] == mu[role]
        instances = max(1, math.ceil(pool["rate_per_second"] / (0.9 * mu[role]) - 1e-9))
        assert (pool["instances"], pool["gpus"]) == (instances, instances * tp)
        assert pool["prediction"] is None  # a measured throughput skips the queueing check
        assert pool["length_check"]["file"] == str(SHORT_BENCH if role == "short" else LONG_BENCH)
    assert plan["measured_bench"]["short"]["request_throughput"] == mu["short"]
    assert plan["rho"] == mu["short"] / mu["long"]
    # the short file's 256/32 tokens against the short pool's ~1155/211: warned, in JSON and table
    check = short["length_check"]
    assert (check["bench_mean_prompt_tokens"], check["bench_mean_output_tokens"]) == (256, 32)
    assert check["pool_mean_prompt_tokens"] > 700 and check["warning"] is not None
    assert "differ by more than 25%" in check["warning"] and "differ by more than" in " ".join(proc.stderr.split())
    # the long file's 1152/208 against the whole trace (the homogeneous pool): no warning
    check = homogeneous["length_check"]
    assert check["pool_mean_prompt_tokens"] == pytest.approx(1155, abs=1)
    assert check["warning"] is None


def test_bench_file_and_throughput_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "--trace", str(CONV), "--short-throughput", "3", "--short-bench", str(SHORT_BENCH)])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    unsaturated = DATA / "vllm-bench-short-256in-32out-rate4.json"
    assert main(["plan", "--trace", str(CONV), "--short-bench", str(unsaturated)]) == 2
    assert "short_bench.request_rate" in capsys.readouterr().err
    # one measured short figure cannot rank several short-pool lengths
    assert main(["plan", "--trace", str(CONV), "--short-throughput", "3"]) == 2
    assert "thresholds" in capsys.readouterr().err
    assert main(["plan", "--trace", str(CONV), "--short-bench", str(SHORT_BENCH), "--thresholds", "4096,8192"]) == 2
    assert "short instance's --max-model-len" in capsys.readouterr().err


def test_emit_config_is_accepted_by_the_plugin(tmp_path: Path) -> None:
    code = main(["plan", "--prompt-percentiles", "50=1000,90=2700,99=4100,100=14000",
                 "--output-percentiles", "50=130,90=420,100=1000", "--rate", "50", "--gpu", "h100",
                 "--model", "llama-3.1-8b", "--tensor-parallel-size", "1", "--thresholds", "4096,8192",
                 "--emit-config", str(tmp_path), "--model-group", "chat"])
    assert code == 0
    config = load_plugin_config_file(tmp_path / "litellm_config.yaml")
    group = config.groups["chat"]
    assert [p.name for p in group.pools] == ["short", "long"]
    assert group.pools[0].max_model_len in (4096, 8192) and group.pools[1].max_model_len == 65536
    # the spillover capacity the planner derived reaches the plugin through model_info
    emitted = yaml.safe_load((tmp_path / "litellm_config.yaml").read_text())
    infos = {d["model_info"]["pool"]: d["model_info"] for d in emitted["model_list"]}
    counts = {p.name: p.deployment_count for p in group.pools}
    assert [p.max_in_flight for p in group.pools] == [
        infos[p.name]["max_in_flight"] * counts[p.name] for p in group.pools]
    assert all(0 < info["max_in_flight"] <= info["max_num_seqs"] for info in infos.values())
    text = (tmp_path / "litellm_config.yaml").read_text()
    assert "litellm_dualpool.proxy_handler_instance" in text
    assert "os.environ/LITELLM_MASTER_KEY" in text
    for script, marker in (("vllm_serve_cuda.sh", "--gpus all"), ("vllm_serve_rocm.sh", "/dev/kfd")):
        body = (tmp_path / script).read_text()
        assert marker in body and body.count("--max-model-len") == 4  # bare + docker, two pools
        assert f"--max-model-len {group.pools[0].max_model_len}" in body
        assert os.access(tmp_path / script, os.X_OK)


def test_plan_refuses_bad_input_with_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--prompt-percentiles", "50=1000", "--gpu", "h100"]) == 2  # no --rate
    assert "rate" in capsys.readouterr().err
    assert main(["plan", "--trace", str(CONV), "--gpu", "b200"]) == 2
    assert "unknown gpu" in capsys.readouterr().err


def test_simulate_writes_plots_and_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--synthetic", "1500", "--rate", "40", "--gpu", "h100", "--model", "llama-3.1-8b",
                 "--tensor-parallel-size", "1", "--no-progress", "--baseline", "--plots", str(tmp_path), "--json",
                 "--pool", "name=short,max_model_len=8192,max_num_seqs=64,max_num_batched_tokens=1024,instances=2",
                 "--pool", "name=long,max_model_len=65536,max_num_seqs=16,max_num_batched_tokens=1024,instances=1"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["baselines"][0]["router"] == "homogeneous"
    assert payload["baselines"][0]["fleet"]["gpus"] == payload["fleet"]["gpus"] == 3
    for name in FILES:
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_emit_config_deploys_each_pool_on_its_own_gpu_type(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """H100 and L40S allowed, L40S priced at $1.90: three H100s serve the short traffic cheapest,
    while the long pool's two instances (its 2% of requests) are cheaper on L40S. The YAML and the
    serve scripts carry each pool's own hardware and flags."""
    code = main(["plan", "--prompt-percentiles", "50=1000,90=2700,99=4100,100=14000",
                 "--output-percentiles", "50=130,90=420,100=1000", "--rate", "50", "--gpu", "h100,l40s",
                 "--price", "h100=4.02,l40s=1.9", "--tensor-parallel-size", "1", "--model", "llama-3.1-8b", "--thresholds", "4096",
                 "--max-pools", "2", "--emit-config", str(tmp_path), "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pools = {p["name"]: p for p in plan["dual_pool"]["pools"]}
    assert {p["gpu"] for p in pools.values()} == {"h100", "l40s"}  # a mixed fleet
    for p in pools.values():
        price = {"h100": 4.02, "l40s": 1.9}[p["gpu"]]
        assert p["usd_per_year"] == pytest.approx(p["gpus"] * price * 8760)
    assert plan["dual_pool"]["usd_per_year"] == pytest.approx(sum(p["usd_per_year"] for p in pools.values()))
    load_plugin_config_file(tmp_path / "litellm_config.yaml")  # the plugin accepts it
    emitted = yaml.safe_load((tmp_path / "litellm_config.yaml").read_text())
    by_pool: dict[str, set[str]] = {}
    for d in emitted["model_list"]:
        by_pool.setdefault(d["model_info"]["pool"], set()).add(d["model_info"]["hardware"])
    assert by_pool == {name: {f"{p['tp']}x {p['gpu']}"} for name, p in pools.items()}
    assert [sum(d["model_info"]["pool"] == n for d in emitted["model_list"]) for n in pools] == [
        p["instances"] for p in pools.values()]
    script = (tmp_path / "vllm_serve_cuda.sh").read_text()
    for name, p in pools.items():
        block = script.split(f"  {name})")[1].split(";;")[0]
        assert f"{p['instances']} instances of {p['tp']}x {p['gpu']}" in block
        assert f"--tensor-parallel-size {p['tp']}" in block
        assert f"--max-num-seqs {p['max_num_seqs']}" in block
        assert f"--max-num-batched-tokens {p['max_num_batched_tokens']}" in block


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; AssertionError if it is none."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plan_plots_draw_the_sweep_and_gpus_per_pool(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    out = tmp_path / "figures"
    code = main(["plan", "--prompt-percentiles", "50=1000,90=2700,99=4100,100=14000",
                 "--output-percentiles", "50=130,90=420,100=1000", "--rate", "50", "--gpu", "h100",
                 "--model", "llama-3.1-8b", "--tensor-parallel-size", "1",
                 "--thresholds", "2048,4096,8192", "--plots", str(out), "--json"])
    assert code == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out.strip().splitlines()[-1])
    assert payload["plots"] == [str(out / name) for name in PLAN_FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(PLAN_FILES)
    for name in PLAN_FILES:
        width, height = _png_size((out / name).read_bytes())
        assert width > 300 and height > 200
        pixels = matplotlib.image.imread(out / name)  # decodes: a whole, valid image
        assert pixels.shape[:2] == (height, width)
        assert pixels.std() > 0.01  # something is drawn, not a blank canvas
    assert f"wrote {out / PLAN_FILES[0]}" in captured.err
