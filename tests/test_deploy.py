"""The deployment files hold together: what they mount exists, and the configs they carry are valid.
(No Docker engine here: docker-compose.yml is checked, not run.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import build, parse

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OPENAI_API_KEY": "k"}


def test_compose_mounts_exist_and_gateway_config_is_valid() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"gateway", "vllm", "prometheus"}
    assert (ROOT / compose["services"]["gateway"]["build"] / "Dockerfile").exists()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    settings = build(parse(yaml.safe_load((ROOT / "deploy/crossover.yaml").read_text())), ENV)
    assert settings.routers["auto"].api.model == "gpt-4o"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"gateway:4000", "vllm:8000"}


def test_kubernetes_config_map_holds_a_valid_config() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/gateway.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    build(parse(yaml.safe_load(config_map["data"]["crossover.yaml"])), ENV)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
