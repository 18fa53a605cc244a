"""Rules before the score, a target API share held online, and the explanation header.

Units for the pure parts; then a gateway on loopback (both targets on the OpenAI simulator, so the
route shows in the response headers) driven with the official SDKs."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from classifier import extract_features, load_classifier
from gateway.config import ConfigError, Router, Target, build, parse
from gateway.online_threshold import OnlineThreshold
from gateway.routing import decide, spilled
from gateway.rules import Rule, first_match
from tests.conftest import SIM_KEY
from tests.servers import Server, start_gateway

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
HARD = "Prove step by step that the integral of x^2 = x^3/3, then implement def f(x): return x**3 / 3. " * 3


def features(**request: Any) -> Any:
    return extract_features({"messages": [{"role": "user", "content": "hi"}], **request})


# ---- units ------------------------------------------------------------------------------------------


def test_each_condition_of_a_rule() -> None:
    assert Rule("t", "api", tools=True).matches(features(tools=TOOLS), {}, None)
    assert not Rule("t", "api", tools=True).matches(features(), {}, None)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    strict = Rule("s", "api", response_format=frozenset({"json_schema"}))
    assert strict.matches(features(response_format=schema), {}, None)
    assert not strict.matches(features(response_format={"type": "json_object"}), {}, None)
    long = Rule("l", "api", context_tokens_over=1000)
    assert not long.matches(features(), {}, None)
    assert long.matches(extract_features({"messages": [{"role": "user", "content": "x" * 4001}]}), {}, None)
    assert Rule("m", "api", max_tokens_over=100).matches(features(max_tokens=101), {}, None)
    assert not Rule("m", "api", max_tokens_over=100).matches(features(max_tokens=100), {}, None)
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 3
    assert Rule("n", "api", turns_over=2).matches(extract_features({"messages": turns}), {}, None)
    team = Rule("h", "local", headers=(("x-team", "research"),))
    assert team.matches(features(), {"x-team": "research"}, None)
    assert not team.matches(features(), {"x-team": "sales"}, None)
    key = Rule("k", "local", api_keys=frozenset({"sk-local"}))
    assert key.matches(features(), {}, "sk-local") and not key.matches(features(), {}, "sk-other")
    both = Rule("b", "api", tools=True, max_tokens_over=10)  # every condition must hold
    assert not both.matches(features(tools=TOOLS), {}, None)
    assert first_match((team, Rule("t", "api", tools=True)), features(tools=TOOLS), {}, None).name == "t"  # type: ignore[union-attr]


def test_a_rule_wins_over_the_header_and_may_forbid_fallback() -> None:
    router = Router("auto", "heuristic", 0.5, Target("local", None), Target("openai", None), fallback=True)
    rule = Rule("local-only", "local", fallback=False, api_keys=frozenset({"k"}))
    decision = decide(router, None, forced="api", rule=rule)
    assert (decision.route, decision.reason, decision.rule, decision.fallback) == (
        "local",
        "rule",
        "local-only",
        None,
    )
    assert decide(router, None, rule=Rule("t", "api", tools=True)).fallback == router.local
    assert decide(router, 0.4, threshold=0.3).route == "api"  # an online threshold replaces the router's


def test_spilling_swaps_target_and_fallback_unless_fallback_is_forbidden() -> None:
    router = Router("auto", "heuristic", 0.5, Target("local", None), Target("openai", None), fallback=True)
    moved = spilled(decide(router, 0.1))
    assert (moved.route, moved.target, moved.fallback, moved.reason) == (
        "api",
        router.api,
        router.local,
        "spill",
    )
    pinned = decide(router, None, rule=Rule("local-only", "local", fallback=False, tools=True))
    assert spilled(pinned) == pinned


def route_with(online: OnlineThreshold, score: float) -> bool:
    to_api = score >= online.threshold
    online.observe(score)
    return to_api


def test_online_threshold_holds_the_share_and_follows_a_shift() -> None:
    rng = random.Random(7)
    online = OnlineThreshold(0.3, window=500, initial=0.5)
    for _ in range(1000):
        route_with(online, rng.random())
    sent = [route_with(online, rng.random()) for _ in range(2000)]
    assert sum(sent) / len(sent) == pytest.approx(0.3, abs=0.03)
    assert online.threshold == pytest.approx(0.7, abs=0.05)
    # Traffic gets harder: every score rises. One window later the share is back near 30%.
    for _ in range(500):
        route_with(online, 0.5 + rng.random() / 2)
    sent = [route_with(online, 0.5 + rng.random() / 2) for _ in range(2000)]
    assert sum(sent) / len(sent) == pytest.approx(0.3, abs=0.03)
    assert online.threshold == pytest.approx(0.85, abs=0.03)


def test_online_threshold_counts_pinned_requests() -> None:
    rng = random.Random(3)
    online = OnlineThreshold(0.3, window=1000, initial=0.5)
    sent = []
    for i in range(4000):
        if i % 5 == 0:  # a fifth is pinned to the API by rules
            online.observe_pinned("api")
            sent.append(True)
        else:
            sent.append(route_with(online, rng.random()))
    assert sum(sent[2000:]) / 2000 == pytest.approx(0.3, abs=0.03)
    greedy = OnlineThreshold(0.1, window=100, initial=0.5, warmup=10)
    for _ in range(50):
        greedy.observe_pinned("api")  # rules alone exceed the target: the score sends nothing more
        greedy.observe(0.99)
    assert greedy.threshold > 0.99
    warming = OnlineThreshold(0.3, window=1000, initial=0.42)
    for i in range(99):
        warming.observe(i / 100)
    assert warming.threshold == 0.42  # the configured threshold until 100 requests are seen
    warming.observe(0.995)
    assert warming.threshold == pytest.approx(0.7, abs=0.011)


def test_online_threshold_does_not_overshoot_on_tied_scores() -> None:
    # Three quarters of the traffic is one templated prompt (one score); all of it goes one way.
    rng = random.Random(5)
    online = OnlineThreshold(0.3, window=1000, initial=0.5)
    sent = [route_with(online, 0.78 if i % 4 else rng.random()) for i in range(5000)]
    share = sum(sent[2000:]) / 3000
    # Reachable: the tie and what is above it (~80%), or only the varied scores above 0.78 (~5.5%).
    # The nearer to 30% is the second; sending the tie would overshoot by 50 points.
    assert share == pytest.approx(0.25 * 0.22, abs=0.02)


def test_online_threshold_carries_over_a_reload() -> None:
    old = OnlineThreshold(0.5, window=200, initial=0.9)
    for i in range(200):
        old.observe(i / 200)
    old.observe_pinned("api")
    new = OnlineThreshold(0.5, window=100, initial=0.9)
    new.carry_over(old)
    # The newest 100: 99 scores 0.505..0.995 and one pinned to the API; 50 should go, 49 by score.
    assert new.threshold == pytest.approx(0.75, abs=0.01)
    replayed = OnlineThreshold(0.5, window=100, initial=0.9)
    for i in range(101, 200):
        replayed.observe(i / 200)
    replayed.observe_pinned("api")
    assert new.threshold == replayed.threshold  # the same as having seen them itself


@pytest.mark.parametrize("name", ["heuristic", "learned-v1", "learned"])
@pytest.mark.parametrize("content", [HARD, "", "\u2603\u2603"])
def test_explanations_add_up_to_the_logit(name: str, content: str) -> None:
    classifier: Any = load_classifier(name)
    f = extract_features({"messages": [{"role": "user", "content": content}], "tools": TOOLS})
    terms = classifier.explain(f)
    if name == "heuristic":
        z = classifier.BIAS + sum(v for _, v in terms)
    elif name == "learned":  # learned-v2: the terms of its trees and length prior, less a constant
        z = classifier.load().explain_offset + sum(v for _, v in terms)
    else:
        model = classifier.load()
        z = model.bias + model.text_mean_logit + sum(v for _, v in terms)
        assert any(n == "word:integral" for n, _ in terms) == (content == HARD)
    assert 1 / (1 + math.exp(-z)) == pytest.approx(classifier.score(f), abs=1e-9)


def test_config_refuses_bad_rules() -> None:
    def error(rules: list[dict[str, Any]], keys: list[str] | None = None) -> str:
        data = {
            "server": {"api_keys": keys or []},
            "backends": {
                "openai": {"kind": "openai_compatible", "base_url": "http://x/v1", "models": [{"name": "m"}]}
            },
            "routers": {"auto": {"local": "openai", "api": "openai", "rules": rules}},
        }
        with pytest.raises(ConfigError) as info:
            build(parse(data), {"K": "k", "OTHER": "o"})
        return str(info.value)

    assert "routers.auto.rules[0].when: Value error, a rule needs at least one condition" in error(
        [{"name": "x", "when": {}, "route": "api"}]
    )
    assert "routers.auto.rules[0].when.tool: unknown key" in error(
        [{"name": "x", "when": {"tool": True}, "route": "api"}]
    )
    assert "routers.auto.rules[0].route: Input should be 'local' or 'api'" in error(
        [{"name": "x", "when": {"tools": True}, "route": "gpu"}]
    )
    assert "routers.auto.rules[0].name" in error(
        [{"name": "has space", "when": {"tools": True}, "route": "api"}]
    )
    assert "rule names must be unique" in error([{"name": "x", "when": {"tools": True}, "route": "api"}] * 2)
    assert "rules[0].when.api_key: every key must also be one of server.api_keys" in error(
        [{"name": "x", "when": {"api_key": ["${OTHER}"]}, "route": "local"}], keys=["${K}"]
    )
    assert "routers.auto.rules[0].when.header: Dictionary should have at least 1 item" in error(
        [{"name": "x", "when": {"header": {}}, "route": "api"}]
    )
    assert "secrets are not written in the file" in error(
        [{"name": "x", "when": {"api_key": ["sk-literal"]}, "route": "local"}], keys=["${K}"]
    )


def test_config_refuses_bad_key_scopes() -> None:
    def error(scopes: list[dict[str, Any]]) -> str:
        data = {
            "server": {"api_keys": ["${K}"], "key_scopes": scopes},
            "backends": {
                "openai": {"kind": "openai_compatible", "base_url": "http://x/v1", "models": [{"name": "m"}]}
            },
        }
        with pytest.raises(ConfigError) as info:
            build(parse(data), {"K": "k", "OTHER": "o"})
        return str(info.value)

    assert "server.key_scopes[0].key: must be one of server.api_keys" in error(
        [{"key": "${OTHER}", "backends": ["openai"]}]
    )
    assert "server.key_scopes[0].backends[0]: 'gpu' names no backend" in error(
        [{"key": "${K}", "backends": ["gpu"]}]
    )
    assert "server.key_scopes[0].backends: List should have at least 1 item" in error(
        [{"key": "${K}", "backends": []}]
    )


# ---- a gateway with rules and an online share --------------------------------------------------------

LOCAL_KEY, TEAM_KEY, RESIDENT_KEY = "sk-gw-local-only", "sk-gw-team", "sk-gw-resident"


@pytest.fixture(scope="module")
def ruled(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    sim = {"kind": "openai_compatible", "base_url": openai_sim.url + "/v1", "api_key": "${SIM_OPENAI_KEY}"}
    config = {
        "server": {
            "api_keys": ["${TEAM_KEY}", "${LOCAL_KEY}", "${RESIDENT_KEY}"],
            "key_scopes": [{"key": "${RESIDENT_KEY}", "backends": ["local"]}],
        },
        # Both backends are the OpenAI simulator: the route shows in the headers and the model name.
        "backends": {
            "local": {**sim, "models": [{"name": "gpt-4o-mini"}]},
            "openai": {**sim, "models": [{"name": "gpt-4o"}]},
        },
        "routers": {
            "auto": {
                "local": "local",
                "api": "openai",
                "rules": [
                    {
                        "name": "local-only",
                        "when": {"api_key": ["${LOCAL_KEY}"]},
                        "route": "local",
                        "fallback": False,
                    },
                    {"name": "tools", "when": {"tools": True}, "route": "api"},
                    {"name": "long-context", "when": {"context_tokens_over": 2000}, "route": "api"},
                    {"name": "research", "when": {"header": {"X-Team": "research"}}, "route": "local"},
                ],
            },
            "share": {
                "local": "local",
                "api": "openai",
                "threshold": 0.99,
                "target_api_share": 0.3,
                "share_window": 50,
            },
        },
    }
    env = {
        "SIM_OPENAI_KEY": SIM_KEY,
        "TEAM_KEY": TEAM_KEY,
        "LOCAL_KEY": LOCAL_KEY,
        "RESIDENT_KEY": RESIDENT_KEY,
    }
    server = start_gateway(tmp_path_factory.mktemp("ruled"), config, env=env)
    yield server
    server.stop()


def client(server: Server, key: str = TEAM_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def ask(
    server: Server, content: str, key: str = TEAM_KEY, model: str = "auto", **extra: Any
) -> httpx.Headers:
    with client(server, key) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], **extra
        )
    return raw.headers


def test_rules_pin_routes_before_the_score(ruled: Server) -> None:
    pinned = ask(ruled, "hi", tools=TOOLS)
    assert (pinned["x-crossover-route"], pinned["x-crossover-rule"]) == ("api", "tools")
    assert "x-crossover-score" not in pinned  # not scored at all
    assert ask(ruled, "hi " * 3000)["x-crossover-rule"] == "long-context"
    team = ask(ruled, HARD, extra_headers={"x-team": "research"})
    assert (team["x-crossover-route"], team["x-crossover-rule"]) == ("local", "research")
    scored = ask(ruled, HARD)
    assert scored["x-crossover-route"] == "api" and "x-crossover-rule" not in scored
    # The local-only key stays local: against its tools, and against the client's own route header.
    local = ask(ruled, HARD, key=LOCAL_KEY, tools=TOOLS, extra_headers={"x-crossover-route": "api"})
    assert (local["x-crossover-route"], local["x-crossover-rule"]) == ("local", "local-only")
    metrics = httpx.get(ruled.url + "/metrics").text
    assert re.search(r'crossover_rule_matches_total\{router="auto",rule="tools"\} [1-9]', metrics)
    assert re.search(
        r'crossover_routing_decisions_total\{reason="rule",route="local",router="auto"\} [1-9]', metrics
    )


def fault(sim: Server, *faults: dict[str, Any]) -> None:
    httpx.post(sim.url + "/_sim/faults", json=list(faults))


def test_a_rule_without_fallback_keeps_a_failed_request_local(ruled: Server, openai_sim: Server) -> None:
    try:
        fault(openai_sim, {"status": 503})
        with pytest.raises(openai.InternalServerError) as info:  # 503: local failed, no second try
            ask(ruled, HARD, key=LOCAL_KEY)
        assert info.value.response.headers["x-crossover-route"] == "local"
        fault(openai_sim, {"status": 503})
        moved = ask(ruled, "hi", extra_headers={"x-crossover-route": "local"})  # the router's fallback
        assert (moved["x-crossover-route"], moved["x-crossover-fallback-from"]) == ("api", "local")
    finally:
        fault(openai_sim)


def test_a_scoped_key_reaches_only_its_backends(ruled: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:  # naming the API model directly
        ask(ruled, "hi", key=RESIDENT_KEY, model="gpt-4o")
    assert info.value.code == "backend_not_allowed" and "limited to: local" in info.value.message
    assert SIM_KEY not in str(info.value.body)
    # Through a router, whatever rules, header and score say, it is served where it may go.
    for extra in ({"tools": TOOLS}, {"extra_headers": {"x-crossover-route": "api"}}, {}):
        headers = ask(ruled, HARD, key=RESIDENT_KEY, **extra)
        assert (headers["x-crossover-route"], headers["x-crossover-backend"]) == ("local", "local")
    assert ask(ruled, "hi", key=RESIDENT_KEY, model="gpt-4o-mini")["x-crossover-backend"] == "local"
    moved = json.loads(
        ask(ruled, HARD, key=RESIDENT_KEY, extra_headers={"x-crossover-explain": "1"})["x-crossover-explain"]
    )
    assert (moved["route"], moved["reason"], "threshold" in moved, "score" in moved) == (
        "local",
        "scope",
        False,
        True,
    )
    with (
        anthropic.Anthropic(base_url=ruled.url, api_key=RESIDENT_KEY, max_retries=0) as claude,
        pytest.raises(anthropic.PermissionDeniedError) as refused,
    ):
        claude.messages.create(model="gpt-4o", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    metrics = httpx.get(ruled.url + "/metrics").text
    assert re.search(
        r'crossover_routing_decisions_total\{reason="scope",route="local",router="auto"\} [1-9]', metrics
    )


def test_anthropic_clients_meet_the_same_rules(ruled: Server) -> None:
    with anthropic.Anthropic(base_url=ruled.url, api_key=TEAM_KEY, max_retries=0) as claude:
        raw = claude.messages.with_raw_response.create(
            model="auto",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
        )
    assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-rule"]) == ("api", "tools")


def test_the_explain_header_names_score_and_weightiest_terms(ruled: Server) -> None:
    headers = ask(ruled, HARD, extra_headers={"x-crossover-explain": "1"})
    explained = json.loads(headers["x-crossover-explain"])
    assert explained["score"] == pytest.approx(float(headers["x-crossover-score"]), abs=1e-4)
    assert (explained["route"], explained["reason"]) == ("api", "score")
    names = [name for name, _ in explained["top"]]  # the router uses the default classifier, `learned`
    assert len(names) == 5 and "math_marks" in names and "digit_share" in names
    weights = [abs(v) for _, v in explained["top"]]
    assert weights == sorted(weights, reverse=True)
    pinned = json.loads(
        ask(ruled, "hi", tools=TOOLS, extra_headers={"x-crossover-explain": "true"})["x-crossover-explain"]
    )
    assert pinned == {"route": "api", "reason": "rule", "rule": "tools"}
    assert "x-crossover-explain" not in ask(ruled, HARD)


# Prompts of these words, in random number, get scores spread over the heuristic's range.
MIXED_WORDS = [
    "hello",
    "prove",
    "integral",
    "explain",
    "why",
    "def f(x):",
    "design",
    "compare",
    "x^2 =",
    "thanks",
]


def test_the_gateway_holds_a_target_api_share(ruled: Server) -> None:
    rng = random.Random(11)
    routes = []
    threshold_used = []
    with client(ruled) as sdk:
        for _ in range(150):
            text = " ".join(rng.choice(MIXED_WORDS) for _ in range(rng.randint(1, 60)))
            raw = sdk.chat.completions.with_raw_response.create(
                model="share", messages=[{"role": "user", "content": text}]
            )
            routes.append(raw.headers["x-crossover-route"])
            threshold_used.append(float(raw.headers["x-crossover-threshold"]))
        assert threshold_used[0] == 0.99  # the configured start, until 50 requests are seen
        share = routes[-100:].count("api") / 100
        assert share == pytest.approx(0.3, abs=0.1), routes
        live = re.search(
            r'crossover_router_threshold\{router="share"\} ([0-9.e-]+)',
            httpx.get(ruled.url + "/metrics").text,
        )
        assert live is not None and float(live.group(1)) < 0.99
        # The gauge is the threshold the next request meets.
        nxt = sdk.chat.completions.with_raw_response.create(
            model="share", messages=[{"role": "user", "content": "hi"}]
        )
        assert nxt.headers["x-crossover-threshold"] == f"{float(live.group(1)):.4f}"
        static = re.search(
            r'crossover_router_threshold\{router="auto"\} ([0-9.e-]+)', httpx.get(ruled.url + "/metrics").text
        )
        assert static is not None and float(static.group(1)) == load_classifier("learned").default_threshold


def test_bad_explain_and_route_headers_get_openai_errors(ruled: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(ruled, "hi", extra_headers={"x-crossover-route": "gpu"})
    assert info.value.body["param"] == "x-crossover-route"  # type: ignore[index]
    # The explain header on a request for a concrete model: the decision only, no score.
    direct = json.loads(
        ask(ruled, "hi", model="gpt-4o", extra_headers={"x-crossover-explain": "1"})["x-crossover-explain"]
    )
    assert direct == {"route": "direct", "reason": "model"}
