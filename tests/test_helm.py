"""The Helm chart (deploy/helm/crossover) renders with Helm's own engine (helm-python-sdk binds Helm's Go
SDK; no cluster), lints, and every object it renders, with the defaults and with every optional part
on, validates against the Kubernetes schemas (kubernetes-validate, strict: no unknown field) of the
oldest Kubernetes the chart supports and the newest. The Prometheus operator's ServiceMonitor and
KEDA's ScaledObject are custom resources those schemas do not cover: their structure is checked here.
Then the rendered gateway container runs: its arguments, environment and config, on loopback."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.config import build, parse
from tests.conftest import SIM_KEY
from tests.servers import Server, free_port, start

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy/helm/crossover"
KUBERNETES = ("1.29", "1.37")  # the chart's kubeVersion floor, and the newest schemas
ENV = {"OPENAI_API_KEY": "k"}
ALL_ON: dict[str, Any] = {
    "providerKeys": {"env": {"OPENAI_API_KEY": "sk-test"}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "redis": {"enabled": True},
    "vllm": {
        "enabled": True,
        "hfToken": {"existingSecret": "hf"},
        "modelCache": {"persistentVolumeClaim": True, "storageClassName": "fast"},
        "autoscaling": {"enabled": True},
    },
}
CUSTOM_RESOURCES = {"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}

Manifest = dict[str, Any]


def render(values: dict[str, Any] | None = None, namespace: str = "llm") -> list[Manifest]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name="crossover", namespace=namespace)
    return [
        doc
        for path, text in sorted(files.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def one(docs: list[Manifest], kind: str, name: str = "crossover") -> Manifest:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod(docs: list[Manifest], name: str = "crossover") -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", name)["spec"]["template"]
    return spec


def gateway_config(docs: list[Manifest]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["crossover.yaml"])
    return loaded


def kinds(docs: list[Manifest]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def test_chart_lints_clean() -> None:
    for values in ({}, ALL_ON):
        report = helm.lint(str(CHART), values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], (problems, report["errors"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {},
            [
                ("ConfigMap", "crossover"),
                ("Deployment", "crossover"),
                ("HorizontalPodAutoscaler", "crossover"),
                ("PodDisruptionBudget", "crossover"),
                ("Service", "crossover"),
            ],
        ),
        (
            ALL_ON,
            [
                ("ConfigMap", "crossover"),
                ("Deployment", "crossover"),
                ("Deployment", "crossover-redis"),
                ("Deployment", "crossover-vllm"),
                ("HorizontalPodAutoscaler", "crossover"),
                ("PersistentVolumeClaim", "crossover-vllm-models"),
                ("PodDisruptionBudget", "crossover"),
                ("ScaledObject", "crossover-vllm"),
                ("Secret", "crossover-keys"),
                ("Service", "crossover"),
                ("Service", "crossover-redis"),
                ("Service", "crossover-vllm"),
                ("ServiceMonitor", "crossover"),
                ("ServiceMonitor", "crossover-vllm"),
            ],
        ),
        (
            {"vllm": {"enabled": True, "autoscaling": {"enabled": True, "kind": "hpa"}}},
            [
                ("ConfigMap", "crossover"),
                ("Deployment", "crossover"),
                ("Deployment", "crossover-vllm"),
                ("HorizontalPodAutoscaler", "crossover"),
                ("HorizontalPodAutoscaler", "crossover-vllm"),
                ("PodDisruptionBudget", "crossover"),
                ("Service", "crossover"),
                ("Service", "crossover-vllm"),
            ],
        ),
    ],
    ids=["defaults", "all-on", "vllm-hpa"],
)
def test_every_object_validates_against_the_kubernetes_schemas(
    values: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    docs = render(values)
    assert kinds(docs) == expected
    for doc in docs:
        if doc["apiVersion"] in CUSTOM_RESOURCES:
            continue  # checked in test_custom_resources_point_at_what_they_watch
        for version in KUBERNETES:
            kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "crossover"


def test_a_schema_violation_is_caught() -> None:
    """The validation above is not vacuous: a wrong type in a rendered object fails it."""
    deployment = one(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES[0], strict=True)


def test_every_reference_between_objects_resolves() -> None:
    docs = render(ALL_ON)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        [selected] = [
            d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected["metadata"]["name"] == service["metadata"]["name"]
        container_ports = {p["name"] for p in selected["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, service["metadata"]["name"]
    for deployment in deployments:
        assert deployment["spec"]["selector"]["matchLabels"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    for scaler in (d for d in docs if d["kind"] in {"HorizontalPodAutoscaler", "PodDisruptionBudget"}):
        assert scaler["metadata"]["name"] == "crossover"
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "crossover"
    gateway = pod(docs)
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        gateway["metadata"]["labels"].items()
    )
    volumes = {v["name"]: v for v in gateway["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    [from_secret] = gateway["spec"]["containers"][0]["envFrom"]
    assert from_secret["secretRef"]["name"] == one(docs, "Secret", "crossover-keys")["metadata"]["name"]
    vllm = pod(docs, "crossover-vllm")["spec"]
    claim = next(v for v in vllm["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert (
        claim["claimName"] == one(docs, "PersistentVolumeClaim", "crossover-vllm-models")["metadata"]["name"]
    )


def test_custom_resources_point_at_what_they_watch() -> None:
    docs = render(ALL_ON, namespace="inference")
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        service = one(docs, "Service", monitor["metadata"]["name"])
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics" and endpoint["interval"].endswith("s")
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(monitor["spec"]) == {"selector", "endpoints"}

    scaled = one(docs, "ScaledObject", "crossover-vllm")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) == {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "triggers",
    }
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert one(docs, "Deployment", target["name"])  # the vLLM Deployment, which then has no replicas field
    assert "replicas" not in one(docs, "Deployment", "crossover-vllm")["spec"]
    for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[field], int), field
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert set(metadata) == {"serverAddress", "query", "threshold"}
    assert all(isinstance(v, str) for v in metadata.values())  # KEDA's metadata is string to string
    assert float(metadata["threshold"]) > 0 and metadata["serverAddress"].startswith("http")
    assert metadata["query"] == (
        'sum(vllm:num_requests_waiting{namespace="inference",service="crossover-vllm"})'
    )


def test_vllm_hpa_alternative_reads_the_queue_metric() -> None:
    docs = render({"vllm": {"enabled": True, "autoscaling": {"enabled": True, "kind": "hpa"}}})
    hpa = one(docs, "HorizontalPodAutoscaler", "crossover-vllm")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "crossover-vllm"
    [metric] = hpa["metrics"]
    assert metric["external"]["metric"]["selector"]["matchLabels"]["service"] == "crossover-vllm"


def test_values_are_checked_against_the_charts_schema() -> None:
    """values.schema.json: a misspelt or mistyped value fails the install instead of being ignored."""
    with pytest.raises(helm.HelmValuesError, match="'keda', 'hpa'"):
        render({"vllm": {"enabled": True, "autoscaling": {"enabled": True, "kind": "cron"}}})
    with pytest.raises(helm.HelmValuesError, match="'replica' not allowed"):
        render({"gateway": {"replica": 3}})
    with pytest.raises(helm.HelmValuesError, match="longestStreamSeconds"):
        render({"gateway": {"longestStreamSeconds": "5m"}})


def test_the_config_map_holds_a_valid_config_that_names_the_charts_services() -> None:
    build(parse(gateway_config(render())), ENV)
    docs = render({"redis": {"enabled": True}, "vllm": {"enabled": True}})
    config = gateway_config(docs)
    assert build(parse(config), ENV).redis is not None  # the gateway reads the chart's Redis
    vllm = urlsplit(config["backends"]["local"]["base_url"])
    service = one(docs, "Service", vllm.hostname)
    assert vllm.port == service["spec"]["ports"][0]["port"]
    redis = urlsplit(config["redis"]["url"])
    assert redis.scheme == "redis"
    assert redis.port == one(docs, "Service", redis.hostname)["spec"]["ports"][0]["port"]
    # A Redis of your own (config.redis.url) wins over the chart's.
    mine = {"redis": {"enabled": True}, "config": {"redis": {"url": "${REDIS_URL}"}}}
    assert gateway_config(render(mine))["redis"] == {"url": "${REDIS_URL}"}
    assert "redis" not in gateway_config(render())


def test_a_config_change_rolls_the_pods_and_nothing_else_does() -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotation: str = pod(render(values))["metadata"]["annotations"]["checksum/config"]
        return annotation

    base = checksum({})
    assert checksum({"config": {"routers": {"auto": {"threshold": 0.6}}}}) != base
    assert checksum({"redis": {"enabled": True}}) != base  # the config gains redis.url
    assert checksum({"gateway": {"replicas": 5, "autoscaling": {"enabled": False}}}) == base


def test_pods_drain_longer_than_the_longest_stream_and_run_unprivileged() -> None:
    values = {"gateway": {"longestStreamSeconds": 600, "preStopSeconds": 15}}
    spec = pod(render(values))["spec"]
    [container] = spec["containers"]
    assert "--timeout-graceful-shutdown=600" in container["args"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "15"]
    assert spec["terminationGracePeriodSeconds"] > 600 + 15
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert not container["securityContext"]["allowPrivilegeEscalation"]
    # Whatever the gateway writes is on a volume, since the root filesystem is read-only.
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {env["PROMETHEUS_MULTIPROC_DIR"], "/tmp"} <= mounted
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The image runs as the same unprivileged user by itself (docker-compose.yml has no securityContext).
    assert f"USER {spec['securityContext']['runAsUser']}" in (ROOT / "Dockerfile").read_text()


def test_vllm_lands_on_gpu_nodes_with_a_model_cache() -> None:
    docs = render({"vllm": {"enabled": True, "gpus": 2}})
    spec = pod(docs, "crossover-vllm")["spec"]
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "--tensor-parallel-size=2" in container["args"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["models"]  # no claim unless asked for
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["shm"] == "/dev/shm"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"] == mounts["models"]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert "replicas" in one(docs, "Deployment", "crossover-vllm")["spec"]  # no autoscaler owns it


def start_rendered_gateway(tmp_path: Path, sim: Server, longest_stream: int) -> Server:
    """The gateway container of the chart, as rendered, run here: its arguments (with this machine's
    address and port), its environment (the Secret's keys included) and its config file."""
    backend = {"base_url": sim.url + "/v1", "api_key": "${OPENAI_API_KEY}"}
    values = {
        "config": {"backends": {"local": backend, "openai": backend}},
        "providerKeys": {"env": {"OPENAI_API_KEY": SIM_KEY}},
        "gateway": {"longestStreamSeconds": longest_stream},
    }
    docs = render(values)
    [container] = pod(docs)["spec"]["containers"]
    config = tmp_path / "crossover.yaml"
    config.write_text(one(docs, "ConfigMap")["data"]["crossover.yaml"])
    port = free_port()
    here = {"--host": "127.0.0.1", "--port": str(port), "--config": str(config)}
    args = [f"{k}={here.get(k, v)}" for k, _, v in (a.partition("=") for a in container["args"][1:])]
    env = {e["name"]: e["value"] for e in container["env"]}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")  # the pod's emptyDir
    (tmp_path / "metrics").mkdir(exist_ok=True)
    env |= one(docs, "Secret", "crossover-keys")["stringData"]
    cmd = [sys.executable, "-m", "gateway.cli", container["args"][0], *args]
    return start(cmd, port, tmp_path / "gateway.log", container["readinessProbe"]["httpGet"]["path"], 30, env)


def stream_during_sigterm(gateway: Server, sim: Server, upstream_delay: float) -> dict[str, Any]:
    """Start a streamed request that the upstream holds for `upstream_delay` s, send the gateway SIGTERM
    while it is in flight, and report what the client got and when the gateway exited."""
    httpx.post(sim.url + "/_sim/faults", json=[{"delay": upstream_delay}])
    got: dict[str, Any] = {}

    def client() -> None:
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        try:
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as r:
                got["status"] = r.status_code
                got["text"] = "".join(r.iter_text())
        except httpx.HTTPError as exc:
            got["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)  # the request is with the upstream
    sent = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    try:
        gateway.process.wait(upstream_delay + 20)
    finally:
        got["exited_after"] = time.monotonic() - sent
        thread.join(60)
    return got


def test_the_rendered_gateway_serves_and_drains_a_stream_on_sigterm(
    tmp_path: Path, openai_sim: Server
) -> None:
    gateway = start_rendered_gateway(tmp_path, openai_sim, longest_stream=20)
    try:
        ready = httpx.get(gateway.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["backends"] == {"local": "ok", "openai": "ok"}
        got = stream_during_sigterm(gateway, openai_sim, upstream_delay=3)
    finally:
        gateway.stop()
    assert got.get("status") == 200, got
    events = [line[6:] for line in got["text"].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    said = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"])
    assert said == "echo: hi"
    assert gateway.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it drained on


def test_the_drain_ends_at_the_longest_stream_the_chart_names(tmp_path: Path, openai_sim: Server) -> None:
    gateway = start_rendered_gateway(tmp_path, openai_sim, longest_stream=1)
    try:
        got = stream_during_sigterm(gateway, openai_sim, upstream_delay=15)
    finally:
        gateway.stop()
    # Cut after about 1 s, not when the upstream answers (15 s) nor after the old fixed 30 s.
    assert got["exited_after"] < 10, got
    assert "data: [DONE]" not in got.get("text", ""), got


def test_a_restarted_gateway_container_starts_its_metrics_afresh(tmp_path: Path, openai_sim: Server) -> None:
    """The metrics directory is an emptyDir, which outlives a container restart (a liveness failure, an
    OOM kill): the new gateway must not add the old one's counts to its own."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for run in ("first", "after a restart"):
        gateway = start_rendered_gateway(tmp_path, openai_sim, longest_stream=1)
        try:
            assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
            counted = [
                line
                for line in httpx.get(gateway.url + "/metrics").text.splitlines()
                if line.startswith("crossover_requests_total{")
            ]
        finally:
            gateway.stop()
        assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 1, (run, counted)
