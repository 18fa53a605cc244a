"""The monitoring files work against the real thing: promtool accepts deploy/prometheus.yml and
deploy/alerts.yml, each alert fires when it should and not before (`promtool test rules`), and a real
Prometheus scraping a real gateway (local = the real vLLM, api = the simulators) answers every query
of the Grafana dashboard and of the alert rules with data.

Needs `prometheus` and `promtool` (scripts/setup-services.sh installs them)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import ANTHROPIC_KEY, SIM_KEY, base_config
from tests.servers import ROOT, Server, free_port, start, start_gateway, start_openai_sim

ALERTS = ROOT / "deploy/alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/crossover.json"
# What Grafana puts in place of its variables; $__range long enough to span the whole test.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
COMPARISON = re.compile(r"^(?P<query>.*?)\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$", re.DOTALL)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup-services.sh")
    return path


def promtool(*args: str | Path) -> str:
    done = subprocess.run(
        [tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, Grafana's variables substituted."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            queries.append((panel["title"], expr))
    return queries


def alert_queries() -> list[tuple[str, str]]:
    """(alert, the query under its threshold): what the alert compares, which has data even when
    the alert does not fire."""
    queries = []
    for rule in alert_rules():
        match = COMPARISON.match(rule["expr"].strip())
        assert match is not None, f"{rule['alert']}: expected `query <op> threshold`"
        queries.append((rule["alert"], match["query"]))
    return queries


# --- promtool: syntax and the rules' behaviour ---------------------------------------------------


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", ALERTS)
    # rule_files are resolved relative to the config file: check the pair as it is deployed.
    shutil.copy(PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    out = promtool("check", "config", tmp_path / "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out and "SUCCESS: 5 rules found" in out


def _alert_case(
    alert: str, series: dict[str, str], quiet_at: str, firing_at: str, labels: dict[str, str], summary: str
) -> dict[str, Any]:
    rule = next(r for r in alert_rules() if r["alert"] == alert)
    annotations = {"summary": summary, "description": rule["annotations"]["description"]}
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": quiet_at, "alertname": alert, "exp_alerts": []},
            {
                "eval_time": firing_at,
                "alertname": alert,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}] if labels else [],
            },
        ],
    }


def test_each_alert_fires_when_it_should_and_not_before(tmp_path: Path) -> None:
    ok = 'crossover_requests_total{route="local",backend="local",model="m",status_class="2xx"}'
    failed = 'crossover_requests_total{route="api",backend="openai",model="gpt-4o",status_class="5xx"}'
    cost = 'crossover_cost_usd_total{route="api",backend="openai",model="gpt-4o"}'
    idle = 'crossover_gpu_idle_cost_usd_total{backend="local"}'
    waiting = 'crossover_backend_requests_waiting{backend="local"}'
    up = 'up{job="crossover",instance="gateway:4000"}'
    circuit = 'crossover_circuit_open{backend="local"}'
    page, warn = {"severity": "page"}, {"severity": "warn"}
    tests = [
        # 10% of requests fail: pending for 5 minutes, then firing.
        _alert_case(
            "CrossoverHighErrorRate",
            {ok: "0+90x30", failed: "0+10x30"},
            "4m",
            "12m",
            page,
            "Crossover: 10% of requests fail with 5xx",
        ),
        # 4% fail: never.
        _alert_case("CrossoverHighErrorRate", {ok: "0+96x30", failed: "0+4x30"}, "4m", "20m", {}, ""),
        _alert_case(
            "CrossoverLocalQueueBacklog",
            {waiting: "20x30"},
            "9m",
            "15m",
            {"backend": "local", **warn},
            "Crossover: 20 requests queued in local backend local",
        ),
        _alert_case("CrossoverLocalQueueBacklog", {waiting: "10x30"}, "9m", "20m", {}, ""),
        _alert_case(
            "CrossoverBackendCircuitOpen",
            {circuit: "0 0 1x20"},
            "5m",
            "10m",
            {"backend": "local", **warn},
            "Crossover: backend local keeps failing; its circuit is open",
        ),
        # Open for a moment, closed again by a trial: never.
        _alert_case("CrossoverBackendCircuitOpen", {circuit: "0 1 1 0x20"}, "3m", "15m", {}, ""),
        # 1 USD a minute = 60 USD/hour of API spend. rate() over 15 minutes reads low until it has
        # 15 minutes of data: pending from about 15m, firing 15 minutes later.
        _alert_case(
            "CrossoverSpendRateHigh",
            {cost: "0+1x60"},
            "20m",
            "35m",
            warn,
            "Crossover: spending 60.00 USD/hour",
        ),
        # 30 USD/hour of API spend alone is under the threshold; with 30 USD/hour of idle GPU, over.
        _alert_case("CrossoverSpendRateHigh", {cost: "0+0.5x60"}, "10m", "40m", {}, ""),
        _alert_case(
            "CrossoverSpendRateHigh",
            {cost: "0+0.5x60", idle: "0+0.5x60"},
            "10m",
            "35m",
            warn,
            "Crossover: spending 60.00 USD/hour",
        ),
        _alert_case(
            "CrossoverGatewayDown",
            {up: "1 1 0x10"},
            "2m",
            "5m",
            {"job": "crossover", "instance": "gateway:4000", **page},
            "Crossover: gateway gateway:4000 is down",
        ),
        _alert_case("CrossoverGatewayDown", {up: "1x10"}, "2m", "8m", {}, ""),
    ]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests})
    )
    assert "SUCCESS" in promtool("test", "rules", spec)


# --- a real Prometheus scraping a real gateway -------------------------------------------------------


@pytest.fixture
def judge_sim(tmp_path: Path) -> Iterator[Server]:
    """A second OpenAI simulator as the shadow judge, so its calls cannot take the faults that drive()
    scripts on the first."""
    server = start_openai_sim(tmp_path, SIM_KEY)
    yield server
    server.stop()


@pytest.fixture
def cost_gateway(
    tmp_path: Path, vllm: Server, openai_sim: Server, anthropic_sim: Server, judge_sim: Server
) -> Iterator[Server]:
    """The shared set-up plus the cost model (the local vLLM priced as a GPU, its queue scraped, every
    request also priced on the all-API baseline) and shadow judging of every local answer of `hybrid`."""
    config = base_config(vllm.url, openai_sim.url, anthropic_sim.url)
    config["backends"]["local"].update({"gpu_usd_per_hour": 2.0, "gpus": 1, "scrape_metrics": True})
    config["backends"]["openai"]["circuit_breaker"] = {"failures": 100}  # its gauge, for the alert query
    config["backends"]["judge"] = {
        "kind": "openai_compatible",
        "base_url": judge_sim.url + "/v1",
        "api_key": "${SIM_OPENAI_KEY}",
        # Its own name: a request naming gpt-4o must still reach the `openai` backend.
        "models": [{"name": "judge-gpt-4o", "upstream": "gpt-4o"}],
    }
    config["routers"]["hybrid"]["shadow"] = {
        "sample": 1.0,
        "judge": "judge/judge-gpt-4o",
        "store": str(tmp_path / "outcomes.sqlite"),
    }
    config["accounting"] = {"baseline": "openai/gpt-4o"}
    server = start_gateway(
        tmp_path,
        config,
        env={"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY},
        name="cost-gateway",
    )
    yield server
    server.stop()


@pytest.fixture
def prometheus(tmp_path: Path, cost_gateway: Server, vllm: Server) -> Iterator[Server]:
    """deploy/prometheus.yml with the test's addresses and a 1 s scrape and rule interval."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    addresses = {"crossover": cost_gateway.url, "vllm": vllm.url}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [addresses[job["job_name"]].removeprefix("http://")]}]
    home = tmp_path / "prometheus"
    home.mkdir()
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, home / "alerts.yml")
    promtool("check", "config", home / "prometheus.yml")
    port = free_port()
    cmd = [
        tool("prometheus"),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    server = start(cmd, port, home / "prometheus.log", "/-/ready", 30)
    yield server
    server.stop()


def drive(gateway: Server, openai_sim: Server) -> None:
    """One round of traffic: easy requests to the local vLLM and forced ones to the simulators,
    streaming and not; one fallback (the API answers 503, local takes over) and one 5xx (a direct
    model whose only backend answers 500)."""
    easy = [{"role": "user", "content": "What is the capital of France?"}]
    api = {"x-crossover-route": "api"}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=60) as client:
        for headers in ({}, api):
            for router in ("auto", "hybrid"):
                reply = client.chat.completions.with_raw_response.create(
                    model=router, messages=easy, max_tokens=8, extra_headers=headers
                )
                assert reply.headers["x-crossover-route"] == ("api" if headers else "local")
            chunks = client.chat.completions.create(
                model="auto",
                messages=easy,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
            assert any(c.choices and c.choices[0].delta.content for c in chunks)
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 503}]).raise_for_status()
        reply = client.chat.completions.with_raw_response.create(
            model="auto", messages=easy, max_tokens=8, extra_headers=api
        )
        assert reply.headers["x-crossover-fallback-from"] == "openai"
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 500}]).raise_for_status()
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="gpt-4o", messages=easy, max_tokens=8)
        assert failed.value.status_code >= 500


def query(prometheus: Server, promql: str) -> dict[str, Any]:
    reply = httpx.get(prometheus.url + "/api/v1/query", params={"query": promql}, timeout=10)
    body: dict[str, Any] = reply.json()
    assert body["status"] == "success", f"{promql}: {body}"
    data: dict[str, Any] = body["data"]
    return data


def shortfall(prometheus: Server, promql: str) -> str | None:
    """None when the query returns at least one finite value; else what it returned."""
    data = query(prometheus, promql)
    results = data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]
    values = [float(r["value"][1]) for r in results if "value" in r]
    values += [float(v) for r in results for _, v in r.get("values", [])]
    if any(math.isfinite(v) for v in values):
        return None
    return f"{data['resultType']} {results}"


@pytest.mark.vllm
def test_every_dashboard_and_alert_query_returns_data(
    prometheus: Server, cost_gateway: Server, openai_sim: Server
) -> None:
    queries = dashboard_queries() + alert_queries()
    assert len(queries) > 20
    # Every whole alert expression is valid PromQL (its result may well be empty: nothing alerts).
    for rule in alert_rules():
        query(prometheus, rule["expr"])
    httpx.post(openai_sim.url + "/_sim/faults", json=[]).raise_for_status()  # none left by another test
    missing: dict[str, str | None] = {}
    deadline = time.monotonic() + 30
    try:
        # Rates and increases need a counter to move between two scrapes: keep the traffic going
        # until every query has something to show.
        for _ in range(20):
            drive(cost_gateway, openai_sim)
            time.sleep(2)  # two scrapes
            missing = {f"{title}: {promql}": shortfall(prometheus, promql) for title, promql in queries}
            missing = {k: v for k, v in missing.items() if v is not None}
            if not missing or time.monotonic() > deadline:
                break
    finally:
        httpx.post(openai_sim.url + "/_sim/faults", json=[])
    assert not missing, "queries without data:\n" + "\n".join(f"{k}\n    -> {v}" for k, v in missing.items())

    targets = httpx.get(prometheus.url + "/api/v1/targets").json()["data"]["activeTargets"]
    assert {(t["labels"]["job"], t["health"]) for t in targets} == {("crossover", "up"), ("vllm", "up")}
    groups = httpx.get(prometheus.url + "/api/v1/rules").json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    assert rules["CrossoverGatewayDown"]["state"] == "inactive"
    assert rules["CrossoverSpendRateHigh"]["state"] == "inactive"
