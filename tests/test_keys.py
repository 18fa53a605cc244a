"""Virtual keys, teams, scopes, the local_only data policy and the request log, through real gateways:
`local` and `openai` are two OpenAI simulators, so what reached the external API is what the API
simulator counted (/_sim/requests)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.request_log import read_rows
from gateway.store import open_store
from tests.conftest import SIM_KEY, sim_backend
from tests.servers import ROOT, Server, start_gateway, start_openai_sim
from tests.services import postgres_cluster
from tests.test_dashboard import DomIds, chromium, dollars
from tests.test_openai_sdk import HARD

ADMIN_KEY = "admin-0123456789-SECRET"
STATIC_KEY = "static-0123456789-SECRET"
ENV = {"SIM_OPENAI_KEY": SIM_KEY, "ADMIN_KEY": ADMIN_KEY, "STATIC_KEY": STATIC_KEY}
PRICE = {"usd_per_million_input_tokens": 2.5, "usd_per_million_output_tokens": 10.0}
ROUTER = {"local": "local", "api": "openai/gpt-4o", "classifier": "heuristic", "threshold": 0.5}


def config(local: Server, api: Server, store: str, tmp: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {
            "keys_store": store,
            "admin_key": "${ADMIN_KEY}",
            "api_keys": ["${STATIC_KEY}"],
            "watch_config": False,
            **server,
        },
        "request_log": {"flush_seconds": 0.1},
        "backends": {
            # a GPU cost: self-hosted, so local; one request at a time, then spill-over
            # (a model name the simulator knows, priced at nothing: its cost is GPU time)
            "local": sim_backend(
                local, {"name": "gpt-4o-mini", "price": {}}, gpu_usd_per_hour=1.0, max_in_flight=1
            ),
            "openai": sim_backend(api, {"name": "gpt-4o", "price": PRICE}),
        },
        "routers": {
            "auto": ROUTER,
            "other": ROUTER,
            "judged": {
                **ROUTER,
                "shadow": {"sample": 1.0, "judge": "openai/gpt-4o", "store": str(tmp / "outcomes.sqlite")},
            },
        },
    }


@dataclass
class Setup:
    gateway: Server
    local: Server
    api: Server
    store: str
    clients: list[openai.OpenAI | anthropic.Anthropic]  # the SDK clients made, closed at the end

    def admin(
        self, method: str, path: str, body: dict[str, Any] | None = None, gateway: Server | None = None
    ) -> Any:
        url = (gateway or self.gateway).url + path
        response = httpx.request(method, url, json=body, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def key(self, name: str, team: dict[str, Any] | None = None, **settings: Any) -> str:
        if not any(t["name"] == name for t in self.admin("GET", "/admin/teams")["data"]):
            self.admin("POST", "/admin/teams", {"name": name, **(team or {})})
        text: str = self.admin("POST", "/admin/keys", {"team": name, "name": "test", **settings})["key"]
        return text

    def api_requests(self) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = httpx.get(self.api.url + "/_sim/requests").json()
        return seen


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("keys")
    (tmp / "local").mkdir()
    (tmp / "api").mkdir()
    local, api = start_openai_sim(tmp / "local", SIM_KEY), start_openai_sim(tmp / "api", SIM_KEY)
    store = str(tmp / "keys.sqlite")
    gateway = start_gateway(tmp, config(local, api, store, tmp), env=ENV)
    made = Setup(gateway, local, api, store, [])
    yield made
    for client in made.clients:
        client.close()
    gateway.stop()
    local.stop()
    api.stop()


def oai(setup: Setup, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=setup.gateway.url + "/v1", api_key=key, max_retries=0)
    setup.clients.append(client)
    return client


def claude(setup: Setup, key: str, **options: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=setup.gateway.url, api_key=key, max_retries=0, **options)
    setup.clients.append(client)
    return client


def test_virtual_and_static_keys_authenticate_through_the_sdks(setup: Setup) -> None:
    key = setup.key("sdk")
    raw = oai(setup, key).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-crossover-route"] == "local"
    sdk = claude(setup, key)
    message = sdk.messages.create(model="auto", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert message.content
    oai(setup, STATIC_KEY).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        oai(setup, key[:-1] + ("A" if key[-1] != "A" else "B")).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        claude(setup, "sk-cx-wrong").messages.create(
            model="auto", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )


def test_a_stored_keys_and_its_teams_limits_are_enforced(setup: Setup) -> None:
    """Limits kept in the store reach the request path: the key's own rate, then its team's budget."""
    rated = setup.key("rated", limits={"requests_per_minute": 2})
    statuses = [_chat(setup, rated, "auto").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    broke = setup.key("broke", team={"limits": {"usd_per_day": 0.0001}})  # less than one API answer
    assert _chat(setup, broke, "auto").status_code == 200  # the local route: GPU time, within it
    refused = _chat(setup, broke, "auto", "api")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"


def test_rotating_a_key_retires_its_old_text_at_once(setup: Setup) -> None:
    old = setup.key("rotation")
    key_id = setup.admin("GET", "/admin/keys?team=rotation")["data"][0]["id"]
    new = setup.admin("POST", f"/admin/keys/{key_id}/rotate")["key"]
    with pytest.raises(openai.AuthenticationError):
        oai(setup, old).models.list()
    assert oai(setup, new).models.list().data


def test_updating_a_team_changes_its_keys_at_once(setup: Setup) -> None:
    key = setup.key("movers")
    assert _chat(setup, key, "auto", "api").headers["x-crossover-backend"] == "openai"
    updated = setup.admin("PATCH", "/admin/teams/movers", {"local_only": True, "routers": ["auto"]})
    assert updated["local_only"] is True and updated["routers"] == ["auto"] and updated["models"] is None
    assert _chat(setup, key, "auto", "api").headers["x-crossover-backend"] == "local"
    assert _chat(setup, key, "other").status_code == 403
    setup.admin("PATCH", "/admin/teams/movers", {"routers": None})  # given as null: any again
    assert _chat(setup, key, "other").status_code == 200


def test_scopes_refuse_with_403_in_the_clients_dialect(setup: Setup) -> None:
    key = setup.key("narrow", team={"routers": ["auto"]}, models=["gpt-4o-mini"])
    client = oai(setup, key)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "router_not_allowed" and "'other'" in refused.value.message
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_allowed" and "gpt-4o-mini" in refused.value.message
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert [m.id for m in client.models.list()] == ["auto", "gpt-4o-mini"]  # what it may ask for
    everything = {m.id for m in oai(setup, STATIC_KEY).models.list()}
    assert everything == {"auto", "other", "judged", "gpt-4o-mini", "gpt-4o"}
    sdk = claude(setup, key)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        sdk.messages.create(model="other", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body == {
        "type": "error",
        "error": {"type": "permission_error", "message": denied.value.body["error"]["message"]},  # type: ignore[index]
    }
    backends_only = setup.key("narrow", backends=["local"])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(setup, backends_only).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.code == "backend_not_allowed"


def _chat(
    setup: Setup, key: str, model: str, route: str | None = None, messages: Any = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **({"x-crossover-route": route} if route else {})}
    body = {"model": model, "messages": messages or [{"role": "user", "content": "hi"}]}
    return httpx.post(setup.gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def _metric(setup: Setup, name: str, labels: str) -> float:
    for line in httpx.get(setup.gateway.url + "/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_local_only_data_never_reaches_the_api(setup: Setup) -> None:
    vault = setup.key("vault", team={"local_only": True})
    assert "gpt-4o" not in [m.id for m in oai(setup, vault).models.list()]
    httpx.delete(setup.api.url + "/_sim/requests")
    # the route header, and a prompt the classifier sends to the API: answered locally
    for route in ("api", None):
        answered = _chat(setup, vault, "auto", route, HARD)
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-crossover-backend"] == "local"
    forcing = claude(setup, vault, default_headers={"x-crossover-route": "api"})
    raw = forcing.messages.with_raw_response.create(
        model="auto", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-crossover-backend"] == "local"
    # a concrete API model: refused, naming the policy
    refused = _chat(setup, vault, "gpt-4o")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "data_must_stay_local"
    # counting its tokens only asks: refused too, but not counted as a request the policy stopped
    counting = httpx.post(
        setup.gateway.url + "/v1/messages/count_tokens",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": vault, "anthropic-version": "2023-06-01"},
    )
    assert counting.status_code == 403 and counting.json()["error"]["type"] == "permission_error"
    # the local backend fails: no fallback to the API
    httpx.post(setup.local.url + "/_sim/faults", json=[{"status": 503}])
    failed = _chat(setup, vault, "auto")
    assert failed.status_code >= 500 and failed.headers["x-crossover-backend"] == "local"
    # the local backend is full (max_in_flight 1): no spill-over to the API
    while_full = _while_local_is_busy(setup, vault)
    assert while_full.status_code == 200 and while_full.headers["x-crossover-backend"] == "local"
    # shadow judging would send the prompt to the API and a judge
    assert _chat(setup, vault, "judged").status_code == 200
    time.sleep(0.5)
    assert setup.api_requests() == []
    assert _metric(setup, "crossover_policy_enforced_total", 'policy="local_only",what="route"') >= 3
    assert _metric(setup, "crossover_policy_enforced_total", 'policy="local_only",what="model"') == 1
    assert _metric(setup, "crossover_policy_enforced_total", 'policy="local_only",what="shadow"') == 1
    assert _metric(setup, "crossover_policy_enforced_total", 'policy="local_only",what="fallback"') >= 1

    # the same requests with a key of another team do reach the API: the simulator would have seen them
    open_key = setup.key("open")
    assert _chat(setup, open_key, "auto", "api").headers["x-crossover-backend"] == "openai"
    assert _chat(setup, open_key, "gpt-4o").status_code == 200
    assert _while_local_is_busy(setup, open_key).headers["x-crossover-backend"] == "openai"  # spilled
    assert len(setup.api_requests()) == 3


def _while_local_is_busy(setup: Setup, key: str) -> httpx.Response:
    """A request sent while another holds the local backend's only slot (max_in_flight 1)."""
    httpx.post(setup.local.url + "/_sim/faults", json=[{"delay": 1.5}])
    slow = threading.Thread(target=_chat, args=(setup, key, "auto"))
    slow.start()
    time.sleep(0.5)
    answer = _chat(setup, key, "auto")
    slow.join()
    return answer


def test_admin_api_needs_the_admin_key(setup: Setup) -> None:
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Bearer {STATIC_KEY}"}):
        response = httpx.get(setup.gateway.url + "/admin/keys", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    bad = httpx.post(
        setup.gateway.url + "/admin/keys",
        json={"team": "x", "limits": {"requests_per_minute": -1}},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert bad.status_code == 400 and "requests_per_minute" in bad.json()["error"]["message"]
    missing = httpx.delete(
        setup.gateway.url + "/admin/keys/key_nope", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert missing.status_code == 404


def test_admin_api_is_off_without_an_admin_key(setup: Setup, tmp_path: Path) -> None:
    plain = config(setup.local, setup.api, str(tmp_path / "k.sqlite"), tmp_path)
    del plain["server"]["admin_key"]
    gateway = start_gateway(tmp_path, plain, env=ENV)
    try:
        response = httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 404 and "server.admin_key" in response.json()["error"]["message"]
    finally:
        gateway.stop()


def test_request_log_and_team_metrics_and_no_key_anywhere(setup: Setup) -> None:
    key = setup.key("billing")
    seen = b""
    for route in ("local", "api", None):
        response = _chat(setup, key, "auto", route) if route else _chat(setup, key, "gpt-4o")
        assert response.status_code == 200
        seen += response.content + repr(response.headers).encode()
    tagged = httpx.post(
        setup.gateway.url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}", "x-request-id": "req-42"},
    )
    assert tagged.status_code == 200
    key_id = setup.admin("GET", "/admin/keys?team=billing")["data"][0]["id"]

    async def rows() -> list[Any]:
        store = open_store(setup.store)
        try:
            return [r for r in await read_rows(store) if r.team == "billing"]
        finally:
            await store.close()

    deadline = time.monotonic() + 5
    while len(found := asyncio.run(rows())) < 4:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    assert {r.key_id for r in found} == {key_id}
    assert [(r.route, r.backend, r.status) for r in found] == [
        ("local", "local", "2xx"),
        ("api", "openai", "2xx"),
        ("direct", "openai", "2xx"),
        ("local", "local", "2xx"),
    ]
    assert found[0].router == "auto" and found[0].reason == "header" and found[2].router is None
    assert found[3].request_id == "req-42"
    assert {r.path for r in found} == {"/v1/chat/completions"}
    assert all(r.input_tokens and r.output_tokens and r.usd is not None and r.seconds > 0 for r in found)
    assert found[1].usd == pytest.approx(found[1].baseline_usd)  # the API answered: cost is the baseline
    api_cost = sum(r.usd or 0 for r in found)
    assert _metric(setup, "crossover_team_requests_total", 'status_class="2xx",team="billing"') == 4
    assert _metric(setup, "crossover_team_cost_usd_total", 'team="billing"') == pytest.approx(api_cost)
    assert _metric(setup, "crossover_team_baseline_cost_usd_total", 'team="billing"') == pytest.approx(
        sum(r.baseline_usd or 0 for r in found)
    )

    # every byte the gateway emitted: answers, metrics, the dashboard, the admin listing, its log, its store
    for path in ("/metrics", "/dashboard/summary.json"):
        seen += httpx.get(setup.gateway.url + path).content
    seen += httpx.get(
        setup.gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).content
    seen += setup.gateway.log.read_bytes()
    for file in Path(setup.store).parent.glob("keys.sqlite*"):
        seen += file.read_bytes()
    assert key.encode() not in seen and key[6:].encode() not in seen
    assert STATIC_KEY.encode() not in seen and ADMIN_KEY.encode() not in seen
    assert key_id.encode() in seen  # the search looked where the key's id is


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_revoking_takes_effect_on_two_gateways_within_a_second(
    setup: Setup, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    store = str(tmp_path / "shared.sqlite") if kind == "sqlite" else request.getfixturevalue("postgres")
    cfg = config(setup.local, setup.api, store, tmp_path)
    one = start_gateway(tmp_path, cfg, env=ENV, name="one")
    two = start_gateway(tmp_path, cfg, env=ENV, name="two")
    try:
        created = setup.admin("POST", "/admin/teams", {"name": f"rev-{kind}"}, gateway=one)
        key = setup.admin("POST", "/admin/keys", {"team": created["name"]}, gateway=one)

        def status(gateway: Server) -> int:
            return httpx.get(
                gateway.url + "/v1/models", headers={"authorization": f"Bearer {key['key']}"}
            ).status_code

        deadline = time.monotonic() + 1.0
        while status(two) != 200:  # a new key, too, reaches every gateway within a second
            assert time.monotonic() < deadline
        assert status(one) == 200
        setup.admin("DELETE", f"/admin/keys/{key['id']}", gateway=two)
        revoked_at = time.monotonic()
        refused: dict[str, float] = {}
        while len(refused) < 2 and time.monotonic() - revoked_at < 3:
            for name, gateway in (("one", one), ("two", two)):
                if name not in refused and status(gateway) == 401:
                    refused[name] = time.monotonic() - revoked_at
        assert set(refused) == {"one", "two"} and max(refused.values()) < 1.0, refused
    finally:
        one.stop()
        two.stop()


def test_report_by_team_and_the_dashboards_team_table(setup: Setup, tmp_path: Path) -> None:
    """The same team figures three ways: /metrics (crossover report --by team --metrics), the request
    log (--request-log), and the dashboard as Chromium renders it."""
    key = setup.key("ledger")
    assert _chat(setup, key, "auto", "api").status_code == 200
    assert _chat(setup, key, "auto", "local").status_code == 200
    cost = _metric(setup, "crossover_team_cost_usd_total", 'team="ledger"')
    baseline = _metric(setup, "crossover_team_baseline_cost_usd_total", 'team="ledger"')
    assert cost > 0 and baseline > cost  # one request local: it saved the API price of one

    def report(*args: str) -> str:
        cmd = [sys.executable, "-m", "gateway.cli", "report", "--by", "team", *args]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def ledger_line(text: str) -> list[str]:
        return next(line for line in text.splitlines() if line.startswith("ledger ")).split()

    from_metrics = ledger_line(report("--metrics", setup.gateway.url + "/metrics"))
    assert from_metrics[1:3] == ["2", "0"]
    assert [float(x.lstrip("$")) for x in from_metrics[3:6]] == pytest.approx(
        [cost, baseline, baseline - cost], abs=1e-4
    )
    deadline = time.monotonic() + 5
    while ledger_line(report("--request-log", setup.store, "--since-hours", "1"))[1] != "2":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ledger_line(report("--request-log", setup.store))[3:6] == from_metrics[3:6]

    dom = chromium("--dump-dom", setup.gateway.url + "/dashboard", profile=tmp_path / "chromium")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = DomIds()
    parser.feed(dom.stdout)
    row = {
        k.removeprefix("total-team-ledger-"): v for k, v in parser.found.items() if "total-team-ledger-" in k
    }
    assert float(row["requests"]["data-value"]) == 2
    assert float(row["cost"]["data-value"]) == pytest.approx(cost)
    assert float(row["baseline-cost"]["data-value"]) == pytest.approx(baseline)
    assert float(row["savings"]["data-value"]) == pytest.approx(baseline - cost)
    assert dollars(row["cost"]["text"]) == pytest.approx(cost, rel=0.01)


def test_an_unreachable_keys_store_leaves_static_keys_working(setup: Setup, tmp_path: Path) -> None:
    from tests.servers import free_port

    cfg = config(setup.local, setup.api, f"postgresql://crossover@127.0.0.1:{free_port()}/none", tmp_path)
    gateway = start_gateway(tmp_path, cfg, env=ENV)
    try:
        admin = httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert admin.status_code == 503 and "keys store cannot be reached" in admin.json()["error"]["message"]
        static = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {STATIC_KEY}"})
        assert static.status_code == 200
        virtual = httpx.get(gateway.url + "/v1/models", headers={"authorization": "Bearer sk-cx-" + "a" * 43})
        assert virtual.status_code == 401
    finally:
        gateway.stop()
    assert gateway.log_text().count("keys store unreachable") == 1  # said once, not every 0.25 s
