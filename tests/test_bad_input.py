"""Bad input gets OpenAI's error shape, the right status and the offending parameter, and the
gateway keeps serving. Raw HTTP, so that nothing a client library does hides the wire."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANTHROPIC_KEY, CLAUDE, SIM_KEY
from tests.openai_schema import assert_valid
from tests.servers import Server, start_gateway
from tests.test_translation import CHAT_TO_ANTHROPIC_MISSHAPEN, MESSAGES_TO_CHAT_MISSHAPEN

GOOD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    config = {
        "server": {"max_body_bytes": 4096},
        "backends": {
            "openai": openai_backend(openai_sim),
            "down": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",  # discard port: nothing listens
                "models": [{"name": "down-model"}],
                "timeout": {"connect": 1},
            },
        },
        "routers": {"auto": {"local": "down", "api": "openai", "fallback": False}},
    }
    server = start_gateway(tmp_path_factory.mktemp("bad"), config, env={"SIM_OPENAI_KEY": SIM_KEY})
    yield server
    server.stop()


def openai_backend(sim: Server) -> dict[str, Any]:
    return {
        "kind": "openai_compatible",
        "base_url": sim.url + "/v1",
        "api_key": "${SIM_OPENAI_KEY}",
        "models": [{"name": "gpt-4o"}],
    }


def start_sims_gateway(tmp: Path, openai_sim: Server, anthropic_sim: Server) -> Server:
    """A gateway over both simulators: `gpt-4o` on the OpenAI one, CLAUDE on the Anthropic one."""
    anthropic = {
        "kind": "anthropic",
        "base_url": anthropic_sim.url + "/v1",
        "api_key": "${SIM_ANTHROPIC_KEY}",
        "default_max_tokens": 16,
        "models": [{"name": CLAUDE}],
    }
    config = {"backends": {"openai": openai_backend(openai_sim), "anthropic": anthropic}}
    env = {"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    return start_gateway(tmp, config, env=env)


def post(gw: Server, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(gw.url + "/v1/chat/completions", content=content, headers=headers, timeout=10)


def check_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert_valid("ErrorResponse", body)
    assert "Traceback" not in response.text
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ('{"model": "gpt-4o", "messages": [', None, "invalid_json"),
        ("[1, 2]", None, "invalid_json"),
        ("", None, "invalid_json"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "model", "missing_required_parameter"),
        ('{"model": "gpt-4o"}', "messages", "missing_required_parameter"),
        ('{"model": 42, "messages": []}', "model", "invalid_type"),
        ('{"model": "gpt-4o", "messages": "hi"}', "messages", "invalid_type"),
        ('{"model": "gpt-4o", "messages": []}', "messages", "empty_array"),
        ('{"model": "gpt-4o", "messages": ["hi"]}', "messages[0]", "invalid_type"),
        (
            '{"model": "gpt-4o", "messages": [{"content": "hi"}]}',
            "messages[0].role",
            "missing_required_parameter",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "robot", "content": "hi"}]}',
            "messages[0].role",
            "invalid_value",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
            "invalid_type",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "stream",
            "invalid_type",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}',
            "max_tokens",
            "invalid_type",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": true}',
            "max_tokens",
            "invalid_type",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "max_tokens",
            "integer_below_min_value",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            "temperature",
            "invalid_type",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": 1}}',
            "stream_options.include_usage",
            "invalid_type",
        ),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(gw: Server, body: str, param: str | None, code: str) -> None:
    check_error(post(gw, body), 400, param, code)


def _nested(levels: int) -> str:
    """A chat body nested `levels` deep (the body itself is level 1)."""
    deep = "[" * (levels - 1) + "]" * (levels - 1)
    return '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x": ' + deep + "}"


@pytest.mark.parametrize("levels", [129, 300, 1000])
def test_bodies_nested_too_deep_are_400(gw: Server, levels: int) -> None:
    body = check_error(post(gw, _nested(levels)), 400, code="nesting_too_deep")
    assert "128" in body["error"]["message"]


def test_bodies_nested_to_the_limit_are_served(gw: Server) -> None:
    assert post(gw, _nested(128)).status_code == 200


@pytest.mark.parametrize("role", ["[]", "{}", '["user"]', "5"])
def test_a_role_of_the_wrong_type_is_400(gw: Server, role: str) -> None:
    body = '{"model": "gpt-4o", "messages": [{"role": ' + role + ', "content": "hi"}]}'
    check_error(post(gw, body), 400, "messages[0].role", "invalid_value")


def test_invalid_utf8_is_400(gw: Server) -> None:
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    check_error(post(gw, body), 400, code="invalid_encoding")


def test_oversized_body_is_413_by_declared_length_and_by_stream(gw: Server) -> None:
    big = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
    check_error(post(gw, big), 413, code="request_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        yield big[:3000]
        yield big[3000:]

    response = httpx.post(gw.url + "/v1/chat/completions", content=chunks(), timeout=10)
    check_error(response, 413, code="request_too_large")


def test_unknown_model_is_404(gw: Server) -> None:
    check_error(
        post(gw, '{"model": "gpt-5-ultra", "messages": [{"role": "user", "content": "hi"}]}'),
        404,
        "model",
        "model_not_found",
    )


def test_bad_route_header_is_400(gw: Server) -> None:
    body = '{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}'
    check_error(post(gw, body, {"x-crossover-route": "cloud"}), 400, "x-crossover-route", "invalid_value")


def test_unknown_path_and_wrong_method(gw: Server) -> None:
    check_error(httpx.post(gw.url + "/v1/chat/complete", json=GOOD), 404, code="unknown_url")
    wrong_method = httpx.get(gw.url + "/v1/chat/completions")
    check_error(wrong_method, 405, code="method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    # Under Anthropic's paths, Anthropic's error shape.
    missing = httpx.post(gw.url + "/v1/messages/batches", json={})
    assert missing.status_code == 404
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "not_found_error"


def test_retrieve_a_model(gw: Server) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client:
        assert client.models.retrieve("gpt-4o").owned_by == "openai"
        assert client.models.retrieve("auto").owned_by == "crossover"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-9")


def test_unreachable_backend_is_503_with_retry_after(gw: Server) -> None:
    response = post(gw, '{"model": "down-model", "messages": [{"role": "user", "content": "hi"}]}')
    body = check_error(response, 503, code="backend_unreachable")
    assert response.headers["retry-after"] == "1"
    assert "down" in body["error"]["message"]


def test_upstream_timeout_is_504(tmp_path: Path, openai_sim: Server) -> None:
    config = {
        "backends": {
            "openai": {
                "kind": "openai_compatible",
                "base_url": openai_sim.url + "/v1",
                "api_key": "${SIM_OPENAI_KEY}",
                "models": [{"name": "gpt-4o"}],
                "timeout": {"read": 0.5},
            }
        }
    }
    server = start_gateway(tmp_path, config, env={"SIM_OPENAI_KEY": SIM_KEY})
    try:
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 2}])
        check_error(post(server, httpx.Request("POST", "/", json=GOOD).content), 504, code="upstream_timeout")
    finally:
        httpx.post(openai_sim.url + "/_sim/faults", json=[])
        server.stop()


def test_gateway_credentials_rejected_upstream_is_502_without_the_key(
    tmp_path: Path, openai_sim: Server
) -> None:
    wrong_key = "sk-gateway-key-that-is-wrong-987654321"
    config = {
        "backends": {
            "openai": {
                "kind": "openai_compatible",
                "base_url": openai_sim.url + "/v1",
                "api_key": "${WRONG_KEY}",
                "models": [{"name": "gpt-4o"}],
            }
        }
    }
    server = start_gateway(tmp_path, config, env={"WRONG_KEY": wrong_key})
    try:
        response = post(server, httpx.Request("POST", "/", json=GOOD).content)
        body = check_error(response, 502, code="upstream_auth_failed")
        for leak in (wrong_key, wrong_key[:10], wrong_key[-6:]):
            assert leak not in response.text
            assert leak not in httpx.get(server.url + "/metrics").text
        assert "credentials" in body["error"]["message"]
    finally:
        server.stop()
    assert wrong_key[-6:] not in server.log_text()


def test_gateway_keeps_serving_after_bad_input(gw: Server) -> None:
    for junk in (b"\x00\x01", b"{", b"null", b'{"model": []}'):
        assert post(gw, junk).status_code == 400
    response = post(gw, httpx.Request("POST", "/", json=GOOD).content)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_gateway_keys_are_enforced(tmp_path: Path, openai_sim: Server) -> None:
    config = {
        "server": {"api_keys": ["${TEAM_KEY}"]},
        "backends": {
            "openai": {
                "kind": "openai_compatible",
                "base_url": openai_sim.url + "/v1",
                "api_key": "${SIM_OPENAI_KEY}",
                "models": [{"name": "gpt-4o"}],
            }
        },
    }
    server = start_gateway(tmp_path, config, env={"SIM_OPENAI_KEY": SIM_KEY, "TEAM_KEY": "team-key-1"})
    try:
        good = httpx.Request("POST", "/", json=GOOD).content
        check_error(post(server, good), 401, code="invalid_api_key")
        check_error(post(server, good, {"authorization": "Bearer team-key-2"}), 401, code="invalid_api_key")
        check_error(httpx.get(server.url + "/v1/models"), 401, code="invalid_api_key")
        assert post(server, good, {"authorization": "Bearer team-key-1"}).status_code == 200
        assert post(server, good, {"x-api-key": "team-key-1"}).status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200  # probes need no key
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
        with client, pytest.raises(openai.AuthenticationError):
            client.models.list()
    finally:
        server.stop()


def test_readyz_names_the_backend_that_is_down(gw: Server) -> None:
    # The router `auto` still has a target that answers: ready, with the down backend named.
    response = httpx.get(gw.url + "/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "backends": {"openai": "ok", "down": "backend 'down' is unreachable"},
    }
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}


def test_both_targets_failing_reports_both(tmp_path: Path) -> None:
    config = {
        "backends": {
            name: {
                "kind": "openai_compatible",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "models": [{"name": f"{name}-model"}],
                "timeout": {"connect": 1},
            }
            for name, port in (("first", 9), ("second", 7))
        },
        "routers": {"auto": {"local": "first", "api": "second"}},
    }
    server = start_gateway(tmp_path, config)
    try:
        response = post(server, '{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}')
        body = check_error(response, 503, code="backend_unreachable")
        assert (
            body["error"]["message"]
            == "backend 'first' is unreachable; fallback: backend 'second' is unreachable"
        )
        assert response.headers["retry-after"] == "1"
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503  # no target of the router answers
        assert ready.json()["status"] == "not ready"
    finally:
        server.stop()


# ---- an upstream that echoes the gateway's key in every field of its errors ------------------------

_KEY_SHAPE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*]{6,}")
_ECHO = {"message": "bad: $KEY", "type": "$KEY", "param": "$KEY", "code": "$KEY"}


@pytest.fixture(scope="module")
def two_sims(
    tmp_path_factory: pytest.TempPathFactory, openai_sim: Server, anthropic_sim: Server
) -> Iterator[Server]:
    server = start_sims_gateway(tmp_path_factory.mktemp("leak"), openai_sim, anthropic_sim)
    yield server
    server.stop()


def _openai_faults(status: int, stream: bool) -> list[dict[str, Any]]:
    if status == 200:
        return [{"stream_error": _ECHO}]
    return [{"status": status, "error": _ECHO}]


def _anthropic_faults(status: int, stream: bool) -> list[dict[str, Any]]:
    if status == 200:
        return [{"stream_error": "$KEY", "message": "bad: $KEY"}]
    return [{"status": status, "type": "$KEY", "message": "bad: $KEY"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [200, 400, 422, 429, 503])
@pytest.mark.parametrize(
    ("path", "model", "backend"),
    [
        ("/v1/chat/completions", "gpt-4o", "openai"),
        ("/v1/chat/completions", CLAUDE, "anthropic"),
        ("/v1/messages", CLAUDE, "anthropic"),
        ("/v1/messages", "gpt-4o", "openai"),
    ],
)
def test_upstream_errors_echoing_the_key_never_leak_it(
    two_sims: Server,
    openai_sim: Server,
    anthropic_sim: Server,
    path: str,
    model: str,
    backend: str,
    status: int,
    stream: bool,
) -> None:
    """Status 200 stands for a failure reported inside the stream (unstreamed: the Anthropic
    simulator's HTTP twin of it, and a plain answer from the OpenAI one)."""
    if backend == "openai":
        sim, key, faults = openai_sim, SIM_KEY, _openai_faults(status, stream)
    else:
        sim, key, faults = anthropic_sim, ANTHROPIC_KEY, _anthropic_faults(status, stream)
    httpx.post(sim.url + "/_sim/faults", json=faults)
    body = {
        "model": model,
        "max_tokens": 5,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        response = httpx.post(two_sims.url + path, json=body, timeout=10)
    finally:
        httpx.post(sim.url + "/_sim/faults", json=[])
    wire = "\n".join([response.text, *(f"{k}: {v}" for k, v in response.headers.items())])
    assert key not in wire
    assert not _KEY_SHAPE.search(wire), wire
    if response.status_code != 200:
        _assert_dialect_error(response, path)
    assert key not in two_sims.log_text()


def _assert_dialect_error(response: httpx.Response, path: str) -> None:
    body = response.json()
    if path == "/v1/messages":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    else:
        assert_valid("ErrorResponse", body)


@pytest.mark.parametrize(("extra", "param"), CHAT_TO_ANTHROPIC_MISSHAPEN)
def test_misshapen_chat_fields_for_anthropic_are_400(
    two_sims: Server, extra: dict[str, Any], param: str
) -> None:
    body = {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx.post(two_sims.url + "/v1/chat/completions", json=body, timeout=10)
    check_error(response, 400, param, "unsupported_parameter")


@pytest.mark.parametrize(("extra", "param"), MESSAGES_TO_CHAT_MISSHAPEN)
def test_misshapen_messages_fields_for_openai_are_400(
    two_sims: Server, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx.post(two_sims.url + "/v1/messages", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert f"'{param}'" in error["error"]["message"]
