"""`crossover report`: the arithmetic by hand, absent metrics, a real exposition from gateway.metrics,
the command end to end (file and URL), and the PNG."""

from __future__ import annotations

import http.server
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import Metrics
from gateway.report import (
    Report,
    ReportError,
    Totals,
    _usd,
    economics,
    main,
    make_report,
    parse_exposition,
    render_png,
    render_text,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# One day of traffic: 1,000 local requests, 200 to the API. The 2 USD/h GPU cost 48 USD over the day:
# 36 charged to the local requests while they ran, 12 idle. The API requests cost 4 USD, which is also
# their baseline (the API target is the baseline model); the local ones would have cost 10 USD there.
DAY = Totals(
    requests={"local": 1000.0, "api": 200.0},
    failed={"api": 3.0},
    cost_usd={"local": 36.0, "api": 4.0},
    baseline_usd={"local": 10.0, "api": 4.0},
    gpu_idle_usd=12.0,
    gpu_usd_per_hour=2.0,
)


def test_hand_computed_day() -> None:
    r = economics(DAY, period_hours=24, gpu_usd_per_hour=2.0, ops_usd_per_month=500.0)
    # A day scaled to 30 days: x30.
    assert r.requests == 1200
    assert r.queries_per_day == 1200
    by_route = {f.route: f for f in r.routes}
    assert [f.route for f in r.routes] == ["local", "api", "direct"]
    assert by_route["local"].monthly_cost_usd == pytest.approx(1080.0)
    assert by_route["api"].monthly_cost_usd == pytest.approx(120.0)
    assert by_route["direct"].monthly_cost_usd == 0.0
    assert by_route["local"].share == pytest.approx(1000 / 1200)
    assert by_route["api"].share == pytest.approx(200 / 1200)
    assert by_route["direct"].share == 0.0
    assert by_route["api"].failed == 3
    assert by_route["local"].monthly_baseline_usd == pytest.approx(300.0)
    assert by_route["api"].monthly_baseline_usd == pytest.approx(120.0)
    assert r.monthly_gpu_idle_usd == pytest.approx(360.0)
    assert r.monthly_metered_usd == pytest.approx(1560.0)  # (36 + 4 + 12) x 30
    assert r.monthly_hybrid_usd == pytest.approx(2060.0)  # + 500 ops
    assert r.monthly_all_api_usd == pytest.approx(420.0)  # (10 + 4) x 30
    assert r.savings_usd == pytest.approx(-1640.0)
    assert r.savings_ratio == pytest.approx(-1640 / 420)
    assert r.blended_usd_per_query == pytest.approx(52 / 1200)  # idle included, ops not
    assert r.monthly_gpu_usd == pytest.approx(1440.0)  # 2 USD/h x 24 x 30
    assert r.gpu_idle_share == pytest.approx(0.25)  # 12 of the 48 USD the GPU cost that day
    assert r.local_share == pytest.approx(5 / 6)
    assert r.local_queries_per_day == pytest.approx(1000.0)
    assert r.baseline_usd_per_local_query == pytest.approx(0.01)
    # (1440 GPU + 500 ops) / (30 x 0.01) = 6466.67 locally served queries/day; / (5/6) = 7760 in all.
    assert r.breakeven_local_per_day == pytest.approx(1940 / 0.3)
    assert r.breakeven_per_day == pytest.approx(7760.0)
    # The two cost lines cross at break-even and pass through what was measured.
    assert r.hybrid_monthly(7760) == pytest.approx(r.all_api_monthly(7760) or 0)
    assert r.hybrid_monthly(0) == pytest.approx(1940.0)
    assert r.all_api_monthly(0) == 0.0
    assert r.hybrid_monthly(1200) == pytest.approx(2060.0)
    assert r.all_api_monthly(1200) == pytest.approx(420.0)
    assert (r.hybrid_monthly(20_000) or 0) < (r.all_api_monthly(20_000) or 0)

    text = render_text(r)
    assert "6,467 locally served queries/day" in text
    assert "= 7,760 queries/day in all, at the measured local share of 83.3%" in text
    assert "($1,440.00 GPU + $500.00 ops per month) / (30 x $0.0100)" in text
    assert "below break-even (0.15x)" in text
    assert "-$1,640.00/month (-390.5% of all-API)" in text
    assert "idle for 25.0% of its cost" in text
    assert "Assumptions:" in text and "local share of traffic (83.3%)" in text


def test_longer_period_scales_down_and_pays_off() -> None:
    # The same counters over 4 days: a quarter of the daily volume, x7.5 to a month.
    r = economics(DAY, period_hours=96, gpu_usd_per_hour=0.1, ops_usd_per_month=0.0)
    assert r.queries_per_day == pytest.approx(300.0)
    assert r.monthly_all_api_usd == pytest.approx(105.0)
    assert r.monthly_gpu_usd == pytest.approx(72.0)
    assert r.breakeven_local_per_day == pytest.approx(72 / 0.3)  # 240 locally served queries/day
    assert r.breakeven_per_day == pytest.approx(288.0)
    assert r.local_queries_per_day == pytest.approx(250.0)
    assert "above break-even (1.0x): self-hosting pays off" in render_text(r)


def test_nothing_measured_is_all_na() -> None:
    r = economics(Totals(), period_hours=24, gpu_usd_per_hour=0.0, ops_usd_per_month=0.0)
    assert r.requests == 0
    assert all(f.share is None and f.monthly_baseline_usd is None for f in r.routes)
    for value in (
        r.monthly_all_api_usd,
        r.savings_usd,
        r.savings_ratio,
        r.blended_usd_per_query,
        r.gpu_idle_share,
        r.local_share,
        r.baseline_usd_per_query,
        r.baseline_usd_per_local_query,
        r.breakeven_local_per_day,
        r.breakeven_per_day,
        r.hybrid_monthly(100),
        r.all_api_monthly(100),
    ):
        assert value is None
    text = render_text(r)
    assert "Blended cost per query: n/a" in text
    assert "Break-even:             n/a: no GPU or ops cost known" in text
    assert "no crossover_baseline_cost_usd_total samples" in text


def test_absent_baseline_or_local_traffic() -> None:
    no_baseline = Totals(requests={"local": 10.0}, cost_usd={"local": 1.0})
    r = economics(no_baseline, period_hours=1, gpu_usd_per_hour=1.0, ops_usd_per_month=0.0)
    assert r.blended_usd_per_query == pytest.approx(0.1)
    assert r.monthly_all_api_usd is None and r.savings_usd is None and r.breakeven_per_day is None
    assert "n/a: no all-API cost of locally served queries measured" in render_text(r)

    api_only = Totals(requests={"api": 10.0}, cost_usd={"api": 1.0}, baseline_usd={"api": 1.0})
    r = economics(api_only, period_hours=1, gpu_usd_per_hour=1.0, ops_usd_per_month=0.0)
    assert r.local_share == 0.0
    assert r.baseline_usd_per_local_query is None and r.breakeven_per_day is None
    assert r.savings_usd == pytest.approx(0.0)  # metered 1 USD/h = baseline, no GPU idle metered

    free_baseline = Totals(requests={"local": 10.0}, baseline_usd={"local": 0.0})
    r = economics(free_baseline, period_hours=1, gpu_usd_per_hour=1.0, ops_usd_per_month=0.0)
    assert r.baseline_usd_per_local_query == 0.0 and r.breakeven_per_day is None
    assert "cost nothing on the baseline model" in render_text(r)
    assert r.savings_ratio is None  # all-API is 0


def test_idle_beyond_the_gpu_cost_is_flagged() -> None:
    r = economics(DAY, period_hours=1, gpu_usd_per_hour=2.0, ops_usd_per_month=0.0)
    assert r.gpu_idle_share == pytest.approx(6.0)
    assert "does not match what the gateway ran with" in render_text(r)


@pytest.mark.parametrize("hours", [0.0, -1.0, float("inf"), float("nan")])
def test_period_must_be_positive(hours: float) -> None:
    with pytest.raises(ValueError, match="period_hours"):
        economics(DAY, period_hours=hours, gpu_usd_per_hour=0.0, ops_usd_per_month=0.0)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (None, "n/a"),
        (0.0, "$0.00"),
        (1234.5, "$1,234.50"),
        (0.5, "$0.50"),
        (0.0125, "$0.0125"),
        (-892.0, "-$892.00"),
    ],
)
def test_usd_format(amount: float | None, text: str) -> None:
    assert _usd(amount) == text


# --- parsing --------------------------------------------------------------------------------------


def exposition() -> str:
    """What a gateway's /metrics says after some traffic, from the real metric declarations."""
    m = Metrics(CollectorRegistry())
    m.at(m.requests, "local", "vllm", "qwen", "2xx").inc(1000)
    m.at(m.requests, "local", "vllm", "qwen", "5xx").inc(2)
    m.at(m.requests, "api", "openai", "gpt-4o", "2xx").inc(150)
    m.at(m.requests, "api", "anthropic", "claude", "4xx").inc(50)
    m.at(m.requests, "direct", "openai", "gpt-4o-mini", "cancelled").inc(7)
    m.at(m.cost, "local", "vllm", "qwen").inc(36)
    m.at(m.cost, "api", "openai", "gpt-4o").inc(3)
    m.at(m.cost, "api", "anthropic", "claude").inc(1)
    m.at(m.baseline_cost, "local", "vllm", "qwen").inc(10)
    m.at(m.baseline_cost, "api", "openai", "gpt-4o").inc(4)
    m.at(m.tokens, "local", "vllm", "qwen", "input").inc(5000)
    m.at(m.tokens, "local", "vllm", "qwen", "output").inc(700)
    m.at(m.tokens, "local", "vllm", "qwen", "cached").inc(300)
    m.at(m.gpu_idle_cost, "vllm").inc(12)
    m.at(m.gpu_cost_rate, "vllm").set(1.5)
    m.at(m.gpu_cost_rate, "vllm2").set(0.5)
    m.at(m.latency, "local", "vllm", "false").observe(0.3)  # other metrics are ignored
    return generate_latest(m.registry).decode()


def without_start(text: str) -> str:
    """The exposition of a gateway whose start time is unknown (an older version)."""
    return "\n".join(line for line in text.splitlines() if "crossover_start_time_seconds" not in line) + "\n"


def test_parse_a_real_exposition() -> None:
    t = parse_exposition(exposition())
    assert t.requests == {"local": 1002.0, "api": 200.0, "direct": 7.0}
    assert t.failed == {"local": 2.0, "api": 50.0}  # cancelled is not a failure
    assert t.cost_usd == {"local": 36.0, "api": 4.0}
    assert t.baseline_usd == {"local": 10.0, "api": 4.0}
    assert t.input_tokens == {"local": 5000.0} and t.output_tokens == {"local": 700.0}
    assert t.gpu_idle_usd == 12.0
    assert t.gpu_usd_per_hour == 2.0  # both deployments
    assert t.process_start == pytest.approx(time.time(), abs=600)  # crossover_start_time_seconds


def test_parse_declared_but_unused_metrics_as_absent() -> None:
    t = parse_exposition(generate_latest(Metrics(CollectorRegistry()).registry).decode())
    assert t.process_start is not None
    assert replace(t, process_start=None) == Totals()
    assert t.baseline_usd is None and t.gpu_usd_per_hour is None
    assert parse_exposition("") == Totals()


def test_parse_rejects_what_is_not_exposition_text() -> None:
    with pytest.raises(ReportError, match="not Prometheus exposition text"):
        parse_exposition("<html>not metrics</html>")


# --- the command ----------------------------------------------------------------------------------


def test_period_from_process_start(tmp_path: Path) -> None:
    saved = tmp_path / "metrics.txt"
    saved.write_text(without_start(exposition()) + "process_start_time_seconds 1000000.0\n")
    r = make_report(str(saved), now=1_000_000.0 + 12 * 3600)
    assert r.period_hours == pytest.approx(12.0)
    assert any("from process_start_time_seconds" in n for n in r.notes)
    # Without `now`, a file's own modification time ends the period.
    os.utime(saved, (1_000_000.0 + 6 * 3600,) * 2)
    assert make_report(str(saved)).period_hours == pytest.approx(6.0)
    assert make_report(str(saved), period_hours=24).period_hours == 24.0  # the flag wins


def test_period_required_without_process_start(tmp_path: Path) -> None:
    saved = tmp_path / "metrics.txt"
    saved.write_text(without_start(exposition()))
    with pytest.raises(ReportError, match="pass --period-hours"):
        make_report(str(saved))
    with pytest.raises(ReportError, match="positive number of hours"):
        make_report(str(saved), period_hours=0)


def test_costs_from_config_without_its_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPORT_TEST_UNSET_KEY", raising=False)
    config = tmp_path / "crossover.yaml"
    config.write_text(
        """
accounting: {ops_usd_per_month: 500}
backends:
  vllm: {kind: openai_compatible, base_url: "http://127.0.0.1:8000/v1", models: [{name: qwen}],
         gpu_usd_per_hour: 1.0, gpus: 2}
  openai: {kind: openai_compatible, base_url: "https://api.openai.com/v1",
           api_key: "${REPORT_TEST_UNSET_KEY}", models: [{name: gpt-4o}]}
routers:
  auto: {local: vllm, api: openai/gpt-4o}
"""
    )
    saved = tmp_path / "metrics.txt"
    saved.write_text(exposition())
    r = make_report(str(saved), period_hours=24, config=str(config))
    assert r.gpu_usd_per_hour == 2.0 and r.monthly_ops_usd == 500.0
    # Failed requests count: 10 USD of baseline over the 1,002 local requests.
    assert r.breakeven_local_per_day == pytest.approx(1940 / (30 * 10 / 1002))
    assert any("baseline model (all-API): openai/gpt-4o" in n for n in r.notes)

    # Without --config: the GPU rate the gateway exports, no ops cost.
    r = make_report(str(saved), period_hours=24)
    assert r.gpu_usd_per_hour == 2.0 and r.monthly_ops_usd == 0.0
    assert r.breakeven_local_per_day == pytest.approx(1440 / (30 * 10 / 1002))

    config.write_text("backends: {}\n")
    with pytest.raises(ReportError, match="invalid config"):
        make_report(str(saved), period_hours=24, config=str(config))


@pytest.fixture
def metrics_url() -> Iterator[str]:
    body = exposition().encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body if self.path == "/metrics" else b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()
    thread.join()


def test_command_reads_a_url(metrics_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--metrics", metrics_url, "--period-hours", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Crossover economics: 1,209 requests over 24.0 h (1,209 queries/day)")
    assert f"metrics: {metrics_url}" in out
    assert main(["--metrics", metrics_url.replace("/metrics", "/nope"), "--period-hours", "1"]) == 2
    assert "cannot read the metrics" in capsys.readouterr().err


def test_command_errors_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--metrics", str(tmp_path / "missing.txt"), "--period-hours", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "crossover report:" in captured.err and "missing.txt" in captured.err


def test_missing_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    r = economics(DAY, period_hours=24, gpu_usd_per_hour=2.0, ops_usd_per_month=500.0)
    with pytest.raises(ReportError, match=r"needs matplotlib.*pip install"):
        render_png(r, tmp_path / "chart.png")
    assert not (tmp_path / "chart.png").exists()


# --- the chart ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "report",
    [
        economics(DAY, period_hours=24, gpu_usd_per_hour=2.0, ops_usd_per_month=500.0),
        economics(DAY, period_hours=96, gpu_usd_per_hour=0.1, ops_usd_per_month=0.0),
        economics(Totals(), period_hours=24, gpu_usd_per_hour=0.0, ops_usd_per_month=0.0),
    ],
    ids=["below-break-even", "above-break-even", "nothing-measured"],
)
def test_png_is_written(report: Report, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    render_png(report, path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_command_writes_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    saved, chart = tmp_path / "metrics.txt", tmp_path / "out" / "chart.png"
    saved.write_text(exposition())
    chart.parent.mkdir()
    assert main(["--metrics", str(saved), "--period-hours", "24", "--png", str(chart)]) == 0
    assert chart.read_bytes().startswith(PNG_MAGIC)
    assert f"Chart: {chart}" in capsys.readouterr().out
