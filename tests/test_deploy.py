"""The deployment files hold together: what they mount exists, the configs they carry are valid, and
Prometheus, its alert rules, Grafana's provisioning and the dashboard point at each other.
(No Docker engine here: docker-compose.yml is checked, not run; tests/test_prometheus.py runs the
Prometheus config, the alert rules and every dashboard query against a real Prometheus; the Helm chart
is rendered and validated by tests/test_helm.py.)"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from gateway.config import build, parse

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OPENAI_API_KEY": "k"}
DASHBOARD = ROOT / "deploy/grafana/dashboards/crossover.json"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def mounts(service: str) -> dict[str, str]:
    """Container path → host path (relative to the repo) of a service's bind mounts."""
    found = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = source[2:]
    return found


def test_compose_mounts_exist_and_gateway_config_is_valid() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "vllm", "prometheus", "grafana"}
    assert (ROOT / services["gateway"]["build"] / "Dockerfile").exists()
    for name in services:
        for source in mounts(name).values():
            assert (ROOT / source).exists(), source
    settings = build(parse(yaml.safe_load((ROOT / "deploy/crossover.yaml").read_text())), ENV)
    assert settings.routers["auto"].api.model == "gpt-4o"


def test_prometheus_scrapes_both_services_and_finds_its_rules_in_the_container() -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    targets = {name: [t for c in job["static_configs"] for t in c["targets"]] for name, job in jobs.items()}
    assert targets == {"crossover": ["gateway:4000"], "vllm": ["vllm:8000"]}
    services = compose()["services"]
    for target in ("gateway:4000", "vllm:8000"):
        assert target.split(":")[0] in services
    # rule_files are relative to the config file: each must be mounted beside prometheus.yml.
    prometheus = mounts("prometheus")
    config_at = next(t for t, s in prometheus.items() if s == "deploy/prometheus.yml")
    assert scrape["rule_files"] == ["alerts.yml"]
    for rule_file in scrape["rule_files"]:
        in_container = str(PurePosixPath(config_at).parent / rule_file)
        assert prometheus.get(in_container) == f"deploy/{rule_file}", in_container


def test_alert_rules_are_complete() -> None:
    rules = [
        r for g in yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    names = {r["alert"] for r in rules}
    assert names == {
        "CrossoverHighErrorRate",
        "CrossoverLocalQueueBacklog",
        "CrossoverBackendCircuitOpen",
        "CrossoverSpendRateHigh",
        "CrossoverGatewayDown",
    }
    for rule in rules:
        assert rule["expr"].strip() and rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warn"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    spend = next(r for r in rules if r["alert"] == "CrossoverSpendRateHigh")
    assert "tune" in spend["annotations"]["description"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    grafana = mounts("grafana")
    provisioning = next(t for t, s in grafana.items() if s == "deploy/grafana/provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    dashboards_at = next(t for t, s in grafana.items() if s == "deploy/grafana/dashboards")

    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    [source] = datasources["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    assert source["url"] == "http://prometheus:9090"  # the compose service and its port
    assert "9090:9090" in compose()["services"]["prometheus"]["ports"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]

    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/crossover.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_at == "/var/lib/grafana/dashboards"
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_at}/{DASHBOARD.name}"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "crossover" and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "prometheus" and t["expr"].strip(), panel["title"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Blended cost per query",
        "Savings against all-API",
        "Spend rate by route",
        "Route mix",
        "Request latency by route (p50, p95)",
        "Time to first token by route (p50, p95)",
        "Error rate by route",
        "Local queue depth",
        "KV-cache utilisation",
        "GPU cost rate",
    ):
        assert wanted in titles, wanted
