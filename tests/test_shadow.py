"""Shadow judging end to end: the gateway as a real server, the OpenAI simulator as the local backend
(answering "local: ..."), as the API ("echo: ...") and as the judge, whose verdict follows a rule in
the question (`truth:api` and so on, see tests/simulators/openai_sim.py), so the tests know the truth."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from classifier import extract_features
from classifier.cues import cue_map
from gateway.quality import wilson
from tests.conftest import SIM_KEY
from tests.servers import Server, start_gateway, start_openai_sim

KEYS = {"K_ALL": "gw-all-key", "K_LOCAL": "gw-local-only", "K_PRIVATE": "gw-private-key"}
OUT_PRICE = 1000.0  # USD per million output tokens of the API model: 0.001 a token, easy to add up
CAP_ANSWER_WORDS = 5  # "echo:" and the four words of CAP_PROMPT
CAP_PROMPT = "truth:tie one two three"
CAP_USD = 2.5 * CAP_ANSWER_WORDS * OUT_PRICE / 1e6  # two and a half shadow answers


def config(sim: str, store: Path, vllm: str | None = None) -> dict[str, Any]:
    local: dict[str, Any] = {
        "kind": "openai_compatible",
        "base_url": sim + "/v1",
        "api_key": "${SIM_OPENAI_KEY}",
        "headers": {"x-sim-answer-prefix": "local:"},
        "models": [{"name": "gpt-4o-mini", "price": {}}],
    }
    if vllm is not None:
        local = {"kind": "openai_compatible", "base_url": vllm + "/v1", "discover_models": True}
    shadow = {
        "sample": 1.0,
        "judge": "openai/gpt-4o",
        "store": str(store),
        "store_prompts": True,
        "timeout_seconds": 3,
        "max_usd_per_day": 1000,  # an estimate reserves ~2 USD a job at these prices
        "exclude_api_keys": ["${K_PRIVATE}"],
    }
    router = {"local": "local", "api": "openai/gpt-4o", "classifier": "heuristic", "threshold": 0.99}
    return {
        "server": {
            "api_keys": ["${K_ALL}", "${K_LOCAL}", "${K_PRIVATE}"],
            "key_scopes": [{"key": "${K_LOCAL}", "backends": ["local"]}],
        },
        "backends": {
            "local": local,
            "openai": {
                "kind": "openai_compatible",
                "base_url": sim + "/v1",
                "api_key": "${SIM_OPENAI_KEY}",
                "models": [{"name": "gpt-4o", "price": {"usd_per_million_output_tokens": OUT_PRICE}}],
            },
        },
        "routers": {
            "auto": {
                **router,
                "rules": [{"name": "private", "when": {"header": {"x-team": "private"}}, "route": "local"}],
                "shadow": shadow,
            },
            # The judge is free here, and the answers cost exactly what the estimate says: the cap
            # is met after two shadow answers, and a third never starts.
            "capped": {
                **router,
                "shadow": {
                    "sample": 1.0,
                    "judge": "local/gpt-4o-mini",
                    "store": str(store),
                    "max_usd_per_day": CAP_USD,
                    "max_concurrent": 8,
                },
            },
        },
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_openai_sim(tmp_path_factory.mktemp("shadow-sim"), SIM_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shadow-store") / "sub" / "outcomes.sqlite"  # the folder is made too


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sim: Server, store: Path) -> Iterator[Server]:
    server = start_gateway(
        tmp_path_factory.mktemp("shadow-gw"),
        config(sim.url, store),
        env={"SIM_OPENAI_KEY": SIM_KEY, **KEYS},
    )
    yield server
    server.stop()


def client(gateway: Server, key: str = KEYS["K_ALL"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def metric(gateway: Server, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    text = httpx.get(gateway.url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def settled(gateway: Server, router: str) -> float:
    """Shadow jobs of `router` that ended, judged or failed."""
    return metric(gateway, "crossover_shadow_judged_total", router=router) + metric(
        gateway, "crossover_shadow_errors_total", router=router
    )


def wait_for(gateway: Server, router: str, count: float) -> None:
    deadline = time.monotonic() + 60
    while settled(gateway, router) < count:
        assert time.monotonic() < deadline, f"shadow jobs of {router} did not settle"
        time.sleep(0.1)


def arrivals(sim: Server) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(sim.url + "/_sim/arrivals").json()
    return found


def rows(store: Path) -> dict[str, sqlite3.Row]:
    """Stored outcomes by the user's prompt."""
    with sqlite3.connect(store) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM outcomes").fetchall()
    return {json.loads(r["prompt"])["messages"][-1]["content"]: r for r in found}


def ask(gateway: Server, text: str, **kwargs: Any) -> str:
    reply = client(gateway).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": text}], **kwargs
    )
    return reply.choices[0].message.content or ""


def test_the_verdicts_are_the_judges_in_both_orders_and_are_stored(gateway: Server, store: Path) -> None:
    before = settled(gateway, "auto")
    truths = {"api": "api_better", "local": "local_better", "tie": "tie", "bad": "both_bad"}
    for truth in truths:
        answer = ask(gateway, f"truth:{truth} verdicts")
        assert answer == f"local: truth:{truth} verdicts"  # the client's answer, untouched
    wait_for(gateway, "auto", before + len(truths))
    stored = rows(store)
    for truth, verdict in truths.items():
        row = stored[f"truth:{truth} verdicts"]
        assert (row["verdict"], row["verdict_local_first"], row["verdict_api_first"]) == (verdict,) * 3
        assert (row["router"], row["route"], row["classifier"]) == ("auto", "local", "heuristic")
        assert (row["local_model"], row["api_model"], row["judge"]) == (
            "gpt-4o-mini",
            "gpt-4o",
            "openai/gpt-4o",
        )
        assert row["score"] is not None and row["threshold"] == pytest.approx(0.99)
        assert row["local_usd"] == 0 and row["api_usd"] == pytest.approx(3 * OUT_PRICE / 1e6)  # "echo: ..."
        assert row["api_output_tokens"] == 3 and row["local_output_tokens"] == 3
        assert len(row["prompt_sha256"]) == 64
        asked = {"messages": [{"role": "user", "content": f"truth:{truth} verdicts"}]}
        assert json.loads(row["features"]) == pytest.approx(cue_map(extract_features(asked)))
        bucket = f"{int(row['score'] * 10) / 10:.1f}"
        assert metric(gateway, "crossover_shadow_judged_total", verdict=verdict, score_bucket=bucket) >= 1
    assert metric(gateway, "crossover_shadow_cost_usd_total", router="auto") > 0


def test_the_shadow_call_starts_only_after_the_streamed_answer_is_complete(
    gateway: Server, sim: Server
) -> None:
    before = settled(gateway, "auto")
    delay = 1.0
    httpx.post(sim.url + "/_sim/faults", json=[{"delay": delay}])  # the local answer takes a second
    stream = client(gateway).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "truth:local streamed"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "local: truth:local streamed"
    wait_for(gateway, "auto", before + 1)
    seen = [a for a in arrivals(sim) if "truth:local streamed" in a["text"]]
    original = next(a for a in seen if a["model"] == "gpt-4o-mini")
    shadow = next(a for a in seen if a["model"] == "gpt-4o" and not a["judge"])
    judges = [a for a in seen if a["judge"]]
    # The sim answered the original no sooner than `delay` after it arrived; the shadow call came after.
    assert shadow["at"] >= original["at"] + delay
    assert len(judges) == 2 and all(j["at"] >= shadow["at"] for j in judges)
    # The judge read the streamed answer, accumulated from the stream the client was sent.
    bodies = httpx.get(sim.url + "/_sim/requests").json()
    said = [str(b["messages"][-1]["content"]) for b in bodies if b.get("messages")]
    judged = [s for s in said if s.startswith("[User Question]\ntruth:local streamed")]
    assert len(judged) == 2 and all("local: truth:local streamed" in j for j in judged)
    assert metric(gateway, "crossover_shadow_judged_total", router="auto", verdict="local_better") >= 1


def test_pinned_scoped_forced_and_excluded_requests_are_never_shadowed(gateway: Server, sim: Server) -> None:
    before = settled(gateway, "auto")
    c = client(gateway)
    pinned = c.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "never-pinned"}],
        extra_headers={"x-team": "private"},
    )
    assert pinned.headers["x-crossover-rule"] == "private" and pinned.headers["x-crossover-route"] == "local"
    scoped = client(gateway, KEYS["K_LOCAL"]).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "never-scoped"}]
    )
    assert scoped.choices[0].message.content == "local: never-scoped"
    forced = c.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "never-forced"}],
        extra_headers={"x-crossover-route": "local"},
    )
    assert forced.choices[0].message.content == "local: never-forced"
    excluded = client(gateway, KEYS["K_PRIVATE"]).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "never-excluded"}]
    )
    assert excluded.choices[0].message.content == "local: never-excluded"
    ask(gateway, "truth:tie after the private ones")  # shadowed: its job ends after theirs would have begun
    wait_for(gateway, "auto", before + 1)
    to_api = [a["text"] for a in arrivals(sim) if a["model"] == "gpt-4o"]
    assert not [t for t in to_api if "never-" in t]
    assert any("after the private ones" in t for t in to_api)
    assert settled(gateway, "auto") == before + 1


def test_a_failing_or_slow_judge_loses_no_request_and_is_counted(gateway: Server) -> None:
    failed = metric(gateway, "crossover_shadow_errors_total", router="auto", kind="judge_failed")
    slow = metric(gateway, "crossover_shadow_errors_total", router="auto", kind="judge_timeout")
    unreadable = metric(gateway, "crossover_shadow_errors_total", router="auto", kind="judge_unreadable")
    before = settled(gateway, "auto")
    assert ask(gateway, "truth:fail judge") == "local: truth:fail judge"
    assert ask(gateway, "truth:slow judge") == "local: truth:slow judge"
    assert ask(gateway, "truth:mumble judge") == "local: truth:mumble judge"
    wait_for(gateway, "auto", before + 3)
    assert metric(gateway, "crossover_shadow_errors_total", router="auto", kind="judge_failed") == failed + 1
    assert metric(gateway, "crossover_shadow_errors_total", router="auto", kind="judge_timeout") == slow + 1
    assert (
        metric(gateway, "crossover_shadow_errors_total", router="auto", kind="judge_unreadable")
        == unreadable + 1
    )
    assert ask(gateway, "still answering") == "local: still answering"


def test_one_failed_judge_order_ends_the_other_before_the_job_lets_go(gateway: Server, sim: Server) -> None:
    """The job's runtime is released only once no call of it runs: a reload right after one judge order
    failed must not close the runtime under the other (it used to: gather left the sibling running)."""
    before = settled(gateway, "auto")
    # Served in order: the local answer, the API's answer, then the two judge orders (one fails, one
    # is slow, whichever arrives first).
    faults = [{}, {}, {"status": 500}, {"delay": 2.5}]
    httpx.post(sim.url + "/_sim/faults", json=faults).raise_for_status()
    try:
        assert ask(gateway, "orders apart") == "local: orders apart"
        wait_for(gateway, "auto", before + 1)
        gateway.process.send_signal(signal.SIGHUP)  # retires the runtime the job held
        time.sleep(3.0)  # past the slow order's answer
    finally:
        httpx.post(sim.url + "/_sim/faults", json=[]).raise_for_status()
    assert "closed the connection unexpectedly" not in gateway.log_text()
    assert ask(gateway, "still answering") == "local: still answering"


async def burst(gateway: Server, router: str, count: int) -> list[str]:
    """`count` identical requests at once."""
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEYS["K_ALL"], max_retries=0) as c:
        replies = await asyncio.gather(
            *(
                c.chat.completions.create(
                    model=router,
                    messages=[{"role": "user", "content": CAP_PROMPT}],
                    max_tokens=CAP_ANSWER_WORDS,  # the estimate of the shadow answer's cost: exact here
                )
                for _ in range(count)
            )
        )
    return [r.choices[0].message.content or "" for r in replies]


def test_the_days_budget_holds_under_concurrency(gateway: Server) -> None:
    replies = asyncio.run(burst(gateway, "capped", 12))
    assert replies == ["local: " + CAP_PROMPT] * 12
    deadline = time.monotonic() + 60  # every request's job ran or was skipped (counted as its exchange ends)
    while (
        settled(gateway, "capped") + metric(gateway, "crossover_shadow_skipped_total", router="capped") < 12
    ):
        assert time.monotonic() < deadline, "shadow jobs of capped did not settle"
        time.sleep(0.1)
    skipped = metric(gateway, "crossover_shadow_skipped_total", router="capped", reason="budget")
    spent = metric(gateway, "crossover_shadow_cost_usd_total", router="capped")
    assert metric(gateway, "crossover_shadow_judged_total", router="capped") == 2
    assert spent == pytest.approx(2 * CAP_ANSWER_WORDS * OUT_PRICE / 1e6) and spent <= CAP_USD
    assert skipped == 10
    ask_capped = client(gateway).chat.completions.create(
        model="capped", messages=[{"role": "user", "content": CAP_PROMPT}], max_tokens=CAP_ANSWER_WORDS
    )
    assert ask_capped.choices[0].message.content == "local: " + CAP_PROMPT
    while metric(gateway, "crossover_shadow_skipped_total", router="capped", reason="budget") < 11:
        assert time.monotonic() < deadline, "the last request was not skipped"
        time.sleep(0.1)
    assert settled(gateway, "capped") == 2


def test_quality_retained_reads_beside_the_savings(gateway: Server) -> None:
    """/dashboard's figures and `crossover report` read the judged verdicts the same way."""
    before = settled(gateway, "auto")
    ask(gateway, "truth:local quality")
    wait_for(gateway, "auto", before + 1)
    verdicts = {
        v: metric(gateway, "crossover_shadow_judged_total", verdict=v)
        for v in ("local_better", "tie", "api_better", "both_bad")
    }
    judged, kept = sum(verdicts.values()), verdicts["local_better"] + verdicts["tie"]
    low, high = wilson(kept, judged)
    quality = httpx.get(gateway.url + "/dashboard/summary.json").json()["since_start"]["quality"]
    assert (quality["judged"], quality["retained"]) == (judged, kept)
    assert quality["share"] == pytest.approx(kept / judged)
    assert quality["interval"] == [pytest.approx(low), pytest.approx(high)]
    assert sum(b["judged"] for b in quality["by_score"].values()) == judged
    assert quality["shadow_cost_usd"] == pytest.approx(metric(gateway, "crossover_shadow_cost_usd_total"))
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "report",
            "--metrics",
            gateway.url + "/metrics",
            "--period-hours",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    line = next(line for line in report.stdout.splitlines() if line.startswith("Quality retained:"))
    assert f"{kept / judged:.1%} of local answers judged at least as good as the API's" in line
    assert f"95% interval {low:.1%}-{high:.1%}, {int(judged)} judged" in line


def test_anthropic_streams_and_tool_calls_are_judged_by_their_final_text(
    gateway: Server, sim: Server
) -> None:
    before = settled(gateway, "auto")
    events = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": KEYS["K_ALL"], "anthropic-version": "2023-06-01"},
        json={
            "model": "auto",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "truth:api anthropic stream"}],
        },
    )
    assert events.status_code == 200 and "text_delta" in events.text
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    called = client(gateway).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "truth:tie tool call"}], tools=tools
    )
    assert called.choices[0].message.tool_calls
    wait_for(gateway, "auto", before + 2)
    said = [
        str(b["messages"][-1]["content"])
        for b in httpx.get(sim.url + "/_sim/requests").json()
        if b.get("messages")
    ]
    streamed = [s for s in said if s.startswith("[User Question]\ntruth:api anthropic stream")]
    assert len(streamed) == 2 and all("local: truth:api anthropic stream" in s for s in streamed)
    tooled = [s for s in said if s.startswith("[User Question]\ntruth:tie tool call")]
    assert len(tooled) == 2
    assert all(s.count('[tool call] lookup({"query": "truth:tie tool call"})') == 2 for s in tooled)
    assert "(Tools offered: lookup)" in tooled[0]


@pytest.mark.vllm
def test_the_real_vllm_answers_locally_and_is_judged(vllm: Server, tmp_path: Path) -> None:
    sim = start_openai_sim(tmp_path, SIM_KEY)
    store = tmp_path / "outcomes.sqlite"
    gw = start_gateway(
        tmp_path, config(sim.url, store, vllm=vllm.url), env={"SIM_OPENAI_KEY": SIM_KEY, **KEYS}
    )
    try:
        whole = ask(gw, "truth:api vllm whole", max_tokens=12)
        stream = client(gw).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "truth:api vllm streamed"}],
            max_tokens=12,
            stream=True,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        wait_for(gw, "auto", 2)
    finally:
        gw.stop()
        sim.stop()
    found = rows(store)
    for prompt in ("truth:api vllm whole", "truth:api vllm streamed"):
        row = found[prompt]
        assert (row["verdict"], row["local_model"], row["api_model"]) == (
            "api_better",
            "tiny-llama",
            "gpt-4o",
        )
        assert row["local_output_tokens"] > 0 and row["api_output_tokens"] == 4
    assert not whole.startswith("echo:") and not streamed.startswith("echo:")  # vLLM's own answers


def test_the_dashboard_page_shows_quality_retained(gateway: Server, tmp_path: Path) -> None:
    from tests.test_dashboard import ARTIFACTS, DomIds, chromium

    before = settled(gateway, "auto")
    ask(gateway, "truth:tie page")
    wait_for(gateway, "auto", before + 1)
    quality = httpx.get(gateway.url + "/dashboard/summary.json").json()["since_start"]["quality"]
    dom = chromium("--dump-dom", gateway.url + "/dashboard", profile=tmp_path / "chromium")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = DomIds()
    parser.feed(dom.stdout)
    card = parser.found["total-quality"]
    assert float(card["data-value"]) == pytest.approx(quality["share"])
    assert card["text"] == f"{100 * quality['share']:.1f}%"
    sub = parser.found["total-quality-sub"]
    assert float(sub["data-value"]) == quality["judged"] and " judged · $" in sub["text"]
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "dashboard-quality.png"
    shot = chromium(
        f"--screenshot={png}", "--window-size=1400,700", gateway.url + "/dashboard", profile=tmp_path / "c"
    )
    assert shot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
