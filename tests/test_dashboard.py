"""GET /dashboard: the arithmetic behind it (quantiles as Prometheus computes them, deltas over the
hour) and, end to end, the page rendered by headless Chromium against a real gateway: the figures in
its DOM are those of /metrics."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.api import dashboard as dashboard_api
from gateway.dashboard import History, Snapshot, delta, histogram_quantile, snapshot, summary
from gateway.metrics import LATENCY_BUCKETS, Metrics
from tests.conftest import SIM_KEY
from tests.servers import ROOT, Server, start_gateway
from tests.workers import folded

INF = math.inf
BUCKETS = [(0.1, 2.0), (0.5, 6.0), (1.0, 8.0), (INF, 10.0)]  # 2 in (0, 0.1], 4 in (0.1, 0.5], 2, 2 above 1


# --- quantiles --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.0, 0.0),  # rank 0 falls in the first bucket, at its lower bound 0
        (0.1, 0.05),  # rank 1 of the first bucket's 2, between 0 and 0.1
        (0.2, 0.1),  # rank 2: exactly the first bucket's upper bound
        (0.5, 0.4),  # rank 5: 3 of the 4 in (0.1, 0.5] -> 0.1 + 0.4 * 3/4
        (0.7, 0.75),  # rank 7: 1 of the 2 in (0.5, 1] -> 0.5 + 0.5 * 1/2
        (0.8, 1.0),  # rank 8: the top of the last finite bucket
        (0.95, 1.0),  # rank 9.5 is in +Inf: the highest finite bound, as Prometheus
        (1.0, 1.0),
    ],
)
def test_quantile_interpolates_within_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_quantile_special_cases_follow_prometheus() -> None:
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # no observations: NaN
    assert histogram_quantile(0.5, [(0.1, 1.0), (1.0, 2.0)]) is None  # no +Inf bucket: NaN
    assert histogram_quantile(0.5, [(INF, 3.0)]) is None  # a single bucket: NaN
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(-0.1, BUCKETS) == -INF
    assert histogram_quantile(1.1, BUCKETS) == INF
    # Order does not matter; buckets with the same bound add up (series summed over other labels).
    assert histogram_quantile(0.5, list(reversed(BUCKETS))) == pytest.approx(0.4)
    halves = [(b, c / 2) for b, c in BUCKETS]
    assert histogram_quantile(0.5, halves + halves) == pytest.approx(0.4)
    # Non-monotonic counts are forced up (the 5 becomes 6).
    assert histogram_quantile(0.5, [(0.1, 2.0), (0.5, 6.0), (1.0, 5.0), (INF, 10.0)]) == pytest.approx(0.4)
    # A first bucket with a bound <= 0 is returned as is when the rank falls in it.
    assert histogram_quantile(0.25, [(-1.0, 1.0), (0.0, 2.0), (1.0, 4.0), (INF, 4.0)]) == -1.0


def _random_cases(n: int) -> list[tuple[float, list[tuple[float, float]]]]:
    rng = random.Random(5)
    cases = []
    for _ in range(n):
        bounds = [*sorted(rng.sample(LATENCY_BUCKETS, rng.randint(1, 8))), INF]
        running, buckets = 0.0, []
        for bound in bounds:
            running += rng.choice([0, 0, 1, 2, 3, 7, 20])
            buckets.append((bound, running))
        if running == 0:
            buckets[-1] = (INF, 1.0)
        cases.append((rng.choice([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]), buckets))
    return [*cases, (0.5, BUCKETS), (0.95, BUCKETS), (0.7, BUCKETS)]


def test_quantile_matches_prometheus_itself(tmp_path: Path) -> None:
    """The same buckets through promtool's PromQL engine (installed by scripts/setup-services.sh)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup-services.sh installs it)")
    series: list[dict[str, str]] = []
    tests: list[dict[str, Any]] = []
    for i, (q, buckets) in enumerate(_random_cases(40)):
        for bound, count in buckets:
            le = "+Inf" if bound == INF else repr(bound)
            series.append({"series": f'h_bucket{{case="{i}",le="{le}"}}', "values": repr(count)})
        expr = f'histogram_quantile({q!r}, h_bucket{{case="{i}"}})'
        expected = histogram_quantile(q, buckets)
        test: dict[str, Any]
        if expected is None:  # NaN, which `> -Inf` filters out (NaN != NaN, so compare no samples)
            test = {"expr": expr + " > -Inf", "exp_samples": []}
        else:
            test = {"expr": expr, "exp_samples": [{"labels": f'{{case="{i}"}}', "value": expected}]}
        tests.append(test | {"eval_time": "0m"})
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    path = tmp_path / "quantiles.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# --- snapshots, deltas, the hour ----------------------------------------------------------------------

EXPOSITION = """\
# TYPE crossover_requests counter
crossover_requests_total{{route="local",backend="vllm",model="m",status_class="2xx"}} {local}
crossover_requests_total{{route="api",backend="openai",model="gpt-4o",status_class="2xx"}} {api}
crossover_requests_total{{route="api",backend="openai",model="gpt-4o",status_class="5xx"}} {api_err}
crossover_requests_total{{route="direct",backend="openai",model="gpt-4o-mini",status_class="4xx"}} 1.0
# TYPE crossover_cost_usd counter
crossover_cost_usd_total{{route="api",backend="openai",model="gpt-4o"}} {api_cost}
crossover_cost_usd_total{{route="local",backend="vllm",model="m"}} 0.0
# TYPE crossover_baseline_cost_usd counter
crossover_baseline_cost_usd_total{{route="local",backend="vllm",model="m"}} {local_baseline}
crossover_baseline_cost_usd_total{{route="api",backend="openai",model="gpt-4o"}} {api_cost}
# TYPE crossover_gpu_idle_cost_usd counter
crossover_gpu_idle_cost_usd_total{{backend="vllm"}} {idle}
# TYPE crossover_request_duration_seconds histogram
crossover_request_duration_seconds_bucket{{route="local",backend="vllm",stream="false",le="0.1"}} {l01}
crossover_request_duration_seconds_bucket{{route="local",backend="vllm",stream="false",le="0.5"}} {l05}
crossover_request_duration_seconds_bucket{{route="local",backend="vllm",stream="false",le="1.0"}} {l1}
crossover_request_duration_seconds_bucket{{route="local",backend="vllm",stream="false",le="+Inf"}} {local}
crossover_request_duration_seconds_count{{route="local",backend="vllm",stream="false"}} {local}
crossover_request_duration_seconds_sum{{route="local",backend="vllm",stream="false"}} 1.0
"""


def exposition(**values: float) -> str:
    defaults = {"local": 0, "api": 0, "api_err": 0, "api_cost": 0, "local_baseline": 0, "idle": 0}
    defaults |= {"l01": 0, "l05": 0, "l1": 0}
    return EXPOSITION.format(**(defaults | values))


def test_snapshot_reads_a_registry_and_its_text_alike() -> None:
    m = Metrics()
    m.requests.labels("local", "vllm", "m", "2xx").inc(3)
    m.requests.labels("api", "openai", "gpt-4o", "5xx").inc()
    m.cost.labels("api", "openai", "gpt-4o").inc(0.25)
    m.latency.labels("local", "vllm", "false").observe(0.3)
    m.latency.labels("local", "vllm", "true").observe(0.7)
    from_registry, from_text = snapshot(m.registry, 1.0), snapshot(m.render(), 1.0)
    assert from_registry == from_text
    assert from_text.total("requests") == 4
    assert from_text.total("requests", route="local") == 3
    assert from_text.total("cost") == 0.25
    # Buckets are summed over the stream label: both observations are in the local histogram.
    assert dict(from_text.buckets("latency", "local"))[INF] == 2
    assert dict(from_text.buckets("latency", "local"))[0.5] == 1
    # Declared but never incremented, or not declared at all: absent, hence 0.
    assert "baseline" not in from_text.present and from_text.total("baseline") == 0
    assert from_text.total("gpu_idle") == 0


def test_delta_subtracts_and_treats_a_decrease_as_a_reset() -> None:
    then = snapshot(exposition(local=10, api=4, api_cost=0.5), 100.0)
    now = snapshot(exposition(local=16, api=3, api_cost=0.75), 200.0)
    d = delta(now, then)
    assert d.total("requests", route="local") == 6
    assert d.total("requests", route="api") == 3  # 4 -> 3: a reset, so all 3 are new
    assert d.total("cost") == pytest.approx(0.25)
    assert d.total("requests", route="direct") == 0  # 1 then and now


def test_summary_of_the_last_hour_against_hand_computed_figures() -> None:
    history = History(started=0.0)
    # 1000 s: before the hour that ends at 4800. 1230: the oldest within it. 3000: later, not used.
    history.record(snapshot(exposition(local=100, api=10, api_cost=1.0, local_baseline=2.0, idle=0.5), 1000))
    history.record(snapshot(exposition(local=150, api=20, api_cost=2.0, local_baseline=3.0, idle=1.0), 1230))
    history.record(snapshot(exposition(local=170, api=25), 3000))
    now = snapshot(
        exposition(
            local=190, api=30, api_err=10, api_cost=3.5, local_baseline=9.0, idle=1.5, l01=10, l05=30, l1=35
        ),
        4800,
    )
    s = summary(now, history)
    assert s["window"] == {"kind": "hour", "seconds": 3570, "target_seconds": 3600}
    assert s["uptime_seconds"] == 4800
    assert s["baseline_available"] is True
    hour = s["last_hour"]
    # Requests since 1230: local 40, api 10 + 10 failed, direct 0 (1 then, 1 now).
    assert hour["requests"] == 60
    assert hour["errors"] == 10 and hour["error_rate"] == pytest.approx(10 / 60)
    assert hour["routes"]["local"]["requests"] == 40 and hour["routes"]["local"]["share"] == pytest.approx(
        2 / 3
    )
    assert hour["routes"]["api"]["share"] == pytest.approx(1 / 3)
    assert hour["routes"]["direct"]["requests"] == 0 and hour["routes"]["direct"]["share"] == 0
    # Actual: API requests 1.5 + idle GPU 0.5. Baseline: local 6.0 + api 1.5.
    assert hour["actual_cost_usd"] == pytest.approx(2.0)
    assert hour["gpu_idle_cost_usd"] == pytest.approx(0.5)
    assert hour["baseline_cost_usd"] == pytest.approx(7.5)
    assert hour["savings_usd"] == pytest.approx(5.5)
    assert hour["savings_ratio"] == pytest.approx(5.5 / 7.5)
    assert hour["cost_per_request_usd"] == pytest.approx(2.0 / 60)
    # Local latency: at 1230, 150 observations all above 1 s; now 10 <= 0.1 s, 30 <= 0.5, 35 <= 1, 190.
    # The hour's buckets are 10, 30, 35, 40: p50 = rank 20, the 10th of the 20 in (0.1, 0.5] -> 0.3.
    # Since start, rank 95 of 190 falls in +Inf -> the highest finite bound, 1.0.
    assert hour["routes"]["local"]["latency_p50_seconds"] == pytest.approx(0.3)
    assert s["since_start"]["routes"]["local"]["latency_p50_seconds"] == 1.0
    assert hour["routes"]["api"]["latency_p50_seconds"] is None  # no observations
    total = s["since_start"]
    assert total["requests"] == 231 and total["actual_cost_usd"] == pytest.approx(5.0)
    assert total["baseline_cost_usd"] == pytest.approx(12.5)


def test_summary_quantiles_use_the_increase_not_the_totals() -> None:
    history = History(started=0.0)
    history.record(snapshot(exposition(local=10, l01=10, l05=10, l1=10), 450))  # 10 fast ones, early
    now = snapshot(exposition(local=14, l01=10, l05=12, l1=14), 4000)  # then 2 in (0.1, 0.5], 2 in (0.5, 1]
    s = summary(now, history)
    assert s["window"]["kind"] == "hour" and s["window"]["seconds"] == 3550
    assert s["last_hour"]["routes"]["local"]["latency_p50_seconds"] == pytest.approx(0.5)  # rank 2 of 4
    assert s["last_hour"]["routes"]["local"]["latency_p95_seconds"] == pytest.approx(0.5 + 0.5 * 1.8 / 2)
    assert s["since_start"]["routes"]["local"]["latency_p50_seconds"] == pytest.approx(0.07)  # rank 7 of 10


def test_a_gateway_younger_than_an_hour_reports_since_start() -> None:
    history = History(started=100.0)
    history.record(snapshot(exposition(local=5), 400))
    now = snapshot(exposition(local=8, api=2, api_cost=0.02), 1000)
    s = summary(now, history)
    assert s["window"] == {"kind": "since_start", "seconds": 900, "target_seconds": 3600}
    assert s["last_hour"] == s["since_start"]
    assert s["last_hour"]["requests"] == 11  # 8 local, 2 api, 1 direct


def test_history_that_does_not_reach_back_an_hour_says_so() -> None:
    history = History(started=0.0)
    now = snapshot(exposition(local=8), 10_000)
    first = summary(now, history)  # the dashboard's first request, long after start
    assert first["window"] == {"kind": "partial", "seconds": 0, "target_seconds": 3600}
    assert first["last_hour"]["requests"] == 0 and first["since_start"]["requests"] == 9
    history.record(now)
    later = summary(snapshot(exposition(local=20), 10_600), history)
    assert later["window"] == {"kind": "partial", "seconds": 600, "target_seconds": 3600}
    assert later["last_hour"]["requests"] == 12


def test_missing_metrics_count_as_zero() -> None:
    s = summary(snapshot("", 5.0), History(started=0.0))
    assert s["baseline_available"] is False
    hour = s["last_hour"]
    assert hour["requests"] == 0 and hour["actual_cost_usd"] == 0 and hour["baseline_cost_usd"] == 0
    assert hour["error_rate"] is None and hour["cost_per_request_usd"] is None
    assert hour["savings_ratio"] is None
    assert set(hour["routes"]) == {"local", "api", "direct"}
    assert hour["routes"]["local"]["latency_p50_seconds"] is None


def test_history_keeps_one_snapshot_per_interval_for_65_minutes() -> None:
    history = History(started=0.0)
    kept = [history.record(Snapshot(float(t))) for t in range(0, 5000, 10)]
    assert sum(kept) == 167  # every 30 s: 0, 30, ..., 4980
    assert len(history) == 130  # the last call, at 4990, dropped those before 4990 - 65 min: 1110 .. 4980
    oldest = history.oldest_within(4990.0)
    assert oldest is not None and oldest.at == 1410  # the first at or after 4990 - 3600


# --- the handlers, in process --------------------------------------------------------------------------


def test_handlers_keep_the_history_on_the_gateway_state() -> None:
    state = SimpleNamespace(metrics=Metrics())
    app = Starlette(
        routes=[
            Route("/dashboard", dashboard_api.page, methods=["GET"]),
            Route("/dashboard/summary.json", dashboard_api.summary_json, methods=["GET"]),
        ]
    )
    app.state.gateway = state
    state.metrics.requests.labels("local", "vllm", "m", "2xx").inc(2)
    with TestClient(app) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert 'data-testid="status"' in page.text
        assert not hasattr(state, "dashboard_history")  # created on the first summary, not before
        first = client.get("/dashboard/summary.json")
        assert first.headers["cache-control"] == "no-store"
        assert first.json()["since_start"]["requests"] == 2
        history = state.dashboard_history
        assert isinstance(history, History) and len(history) == 1
        state.metrics.requests.labels("api", "openai", "gpt-4o", "5xx").inc()
        second = client.get("/dashboard/summary.json").json()
        assert second["since_start"]["requests"] == 3 and second["since_start"]["errors"] == 1
        assert state.dashboard_history is history and len(history) == 1  # under 30 s apart: one kept


# --- end to end: a gateway, the OpenAI SDK, headless Chromium -----------------------------------------

GATEWAY_KEY = "gw-dashboard-key-0123456789"
PRICES = {
    "gpt-4o": {"usd_per_million_input_tokens": 2.5, "usd_per_million_output_tokens": 10.0},
    "gpt-4o-mini": {"usd_per_million_input_tokens": 0.15, "usd_per_million_output_tokens": 0.6},
}
ARTIFACTS = ROOT / "test-artifacts"


def config(sim: Server) -> dict[str, Any]:
    return {
        "server": {"api_keys": ["${DASHBOARD_GATEWAY_KEY}"]},
        "backends": {
            "openai": {
                "kind": "openai_compatible",
                "base_url": sim.url + "/v1",
                "api_key": "${SIM_OPENAI_KEY}",
                "models": [{"name": name, "price": price} for name, price in PRICES.items()],
            }
        },
        "routers": {"auto": {"local": "openai/gpt-4o-mini", "api": "openai/gpt-4o", "threshold": 0.5}},
    }


@pytest.fixture
def gw(tmp_path: Path, openai_sim: Server) -> Iterator[Server]:
    httpx.post(openai_sim.url + "/_sim/faults", json=[])
    server = start_gateway(
        tmp_path,
        config(openai_sim),
        workers=2,  # the figures must be those of every worker, not of the one that answers
        env={"SIM_OPENAI_KEY": SIM_KEY, "DASHBOARD_GATEWAY_KEY": GATEWAY_KEY},
    )
    yield server
    server.stop()
    httpx.post(openai_sim.url + "/_sim/faults", json=[])


def send_traffic(gw: Server, sim: Server) -> None:
    """7 local (2 streamed), 4 api (1 streamed), 3 direct of which one fails upstream: 14 requests."""
    messages: Any = [{"role": "user", "content": "How many legs does a spider have?"}]
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as client:
        for route, plain, streamed in (("local", 5, 2), ("api", 3, 1)):
            headers = {"x-crossover-route": route}
            for _ in range(plain):
                client.chat.completions.create(model="auto", messages=messages, extra_headers=headers)
            for _ in range(streamed):
                stream = client.chat.completions.create(
                    model="auto",
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                assert list(stream)[-1].usage is not None
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        httpx.post(sim.url + "/_sim/faults", json=[{"status": 500}])
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="gpt-4o", messages=messages)


def metric_values(gw: Server) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(values: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for ls, v in values.get(name, []) if labels.items() <= ls.items())


class DomIds(HTMLParser):
    """Text and data-value of every element with a data-testid, from Chromium's --dump-dom."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, dict[str, str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        a = {k: v or "" for k, v in attrs}
        testid = a.get("data-testid")
        if testid is not None:
            self.found[testid] = {"text": "", **a}
        self._open.append(testid)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for testid in self._open:
            if testid is not None:
                self.found[testid]["text"] += data


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run scripts/setup-services.sh (apt-get install chromium)")
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def dollars(text: str) -> float:
    assert text.startswith(("$", "-$")), text
    return float(text.replace("$", "").replace(",", ""))


def test_dashboard_in_a_browser_shows_the_metrics(tmp_path: Path, gw: Server, openai_sim: Server) -> None:
    send_traffic(gw, openai_sim)
    m = folded(lambda: metric_values(gw), lambda m: total(m, "crossover_requests_total") == 14)
    requests = total(m, "crossover_requests_total")
    assert requests == 14
    by_route = {r: int(total(m, "crossover_requests_total", route=r)) for r in ("local", "api", "direct")}
    assert by_route == {"local": 7, "api": 4, "direct": 3}
    cost = total(m, "crossover_cost_usd_total") + total(m, "crossover_gpu_idle_cost_usd_total")
    assert cost > 0
    has_baseline = "crossover_baseline_cost_usd_total" in m
    baseline = total(m, "crossover_baseline_cost_usd_total")

    # Open without the gateway key, like /metrics; only aggregates: no backend or model name.
    page = httpx.get(gw.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "http://" not in page.text and "https://" not in page.text
    reply = httpx.get(gw.url + "/dashboard/summary.json")
    assert reply.status_code == 200
    for secret in ("gpt-4o", "openai", GATEWAY_KEY, SIM_KEY):
        assert secret not in reply.text
    s = reply.json()
    assert s["window"]["kind"] == "since_start" and s["baseline_available"] is has_baseline
    for figures in (s["last_hour"], s["since_start"]):
        assert figures["requests"] == 14 and figures["errors"] == 1
        assert figures["actual_cost_usd"] == pytest.approx(cost)
        assert {r: figures["routes"][r]["requests"] for r in by_route} == by_route

    # The page, rendered by Chromium after its script ran.
    dom = chromium("--dump-dom", gw.url + "/dashboard", profile=tmp_path / "chromium")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = DomIds()
    parser.feed(dom.stdout)
    ids = parser.found
    assert ids.get("status", {}).get("data-loaded") == "true", dom.stdout[-2000:]
    for prefix in ("hour", "total"):
        got = {k[len(prefix) + 1 :]: v for k, v in ids.items() if k.startswith(prefix + "-")}
        assert got["requests"]["text"] == "14" and float(got["requests"]["data-value"]) == 14
        assert float(got["actual-cost"]["data-value"]) == pytest.approx(cost)
        assert dollars(got["actual-cost"]["text"]) == pytest.approx(cost, rel=0.01)  # 3 significant digits
        assert dollars(got["cost-per-query"]["text"]) == pytest.approx(cost / 14, rel=0.01)
        assert float(got["error-rate"]["data-value"]) == pytest.approx(1 / 14)
        assert got["error-rate"]["text"] == "7.1%"
        for route, count in by_route.items():
            share = got[f"mix-{route}"]
            assert float(share["data-value"]) == pytest.approx(count / 14) and share["data-count"] == str(
                count
            )
            assert share["text"] == f"{100 * count / 14:.1f}%"
            assert got[f"route-{route}-requests"]["text"] == str(count)
            assert got[f"route-{route}-latency-p50"]["text"].endswith(("ms", " s"))
        # Time to first token: only streams have one.
        assert got["route-local-ttft-p50"]["text"].endswith(("ms", " s"))
        assert got["route-api-ttft-p50"]["text"].endswith(("ms", " s"))
        assert got["route-direct-ttft-p50"]["text"] == "—"
        assert float(got["route-api-cost"]["data-value"]) == pytest.approx(
            total(m, "crossover_cost_usd_total", route="api")
        )
        if has_baseline:
            assert float(got["baseline-cost"]["data-value"]) == pytest.approx(baseline)
            assert float(got["savings"]["data-value"]) == pytest.approx(baseline - cost)
        else:
            assert got["baseline-cost"]["text"] == "—" and got["savings"]["text"] == "—"

    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "dashboard.png"
    png.unlink(missing_ok=True)
    shot = chromium(
        f"--screenshot={png}", "--window-size=1200,900", gw.url + "/dashboard", profile=tmp_path / "chromium"
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
