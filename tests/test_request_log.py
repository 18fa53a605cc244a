"""Request ids (accepted, generated, returned on every response, sent upstream) and the one log line
each request leaves, plain and JSON; against the OpenAI simulator."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.request_id import request_id
from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway

PROMPT = "the-private-prompt-text-42"


def test_a_sane_client_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id({"x-request-id": "0b7c8e1e-3c43-4f5e-9f0a-1c2d3e4f5a6b"}) == (
        "0b7c8e1e-3c43-4f5e-9f0a-1c2d3e4f5a6b"
    )
    for bad in ("", "a b", "x" * 129, "id\u00e9", "<script>"):
        generated = request_id({"x-request-id": bad})
        assert re.fullmatch(r"[0-9a-f]{16}", generated), bad
    assert request_id({}) != request_id({})


def config(sim: Server) -> dict[str, Any]:
    return {
        "backends": {"openai": sim_backend(sim, {"name": "gpt-4o"}, {"name": "gpt-4o-mini"})},
        "routers": {
            "auto": {"local": "openai/gpt-4o-mini", "api": "openai/gpt-4o", "classifier": "heuristic"}
        },
    }


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    server = start_gateway(
        tmp_path_factory.mktemp("plain-log"), config(openai_sim), env={"SIM_OPENAI_KEY": SIM_KEY}
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def json_logging(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    server = start_gateway(
        tmp_path_factory.mktemp("json-log"),
        config(openai_sim),
        env={"SIM_OPENAI_KEY": SIM_KEY},
        args=("--log-format", "json", "--workers", "2"),
    )
    yield server
    server.stop()


def logged(server: Server, needle: str) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.log_text().splitlines() if needle in line]
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_the_id_is_returned_sent_upstream_and_logged_once_without_the_prompt(
    plain: Server, openai_sim: Server
) -> None:
    httpx.delete(openai_sim.url + "/_sim/traced")
    with openai.OpenAI(base_url=plain.url + "/v1", api_key="x", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-request-id": "client-id-1"},
        )
    assert raw.headers["x-request-id"] == "client-id-1"
    assert httpx.get(openai_sim.url + "/_sim/traced").json() == [
        {"x-request-id": "client-id-1", "traceparent": None}  # tracing is off here
    ]
    [line] = logged(plain, "id=client-id-1")
    usage = raw.parse().usage
    assert usage is not None
    assert (
        f"route=local reason=score backend=openai model=gpt-4o-mini status=200 "
        f"input_tokens={usage.prompt_tokens} output_tokens={usage.completion_tokens} cost_usd="
    ) in line
    assert "path=/v1/chat/completions" in line and "latency_ms=" in line
    text = plain.log_text()
    assert PROMPT not in text and SIM_KEY not in text


def test_every_response_carries_an_id_errors_too(plain: Server) -> None:
    chat = plain.url + "/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    unknown = httpx.post(
        chat, json={"model": "no-such-model", "messages": hi}, headers={"x-request-id": "e-1"}
    )
    assert unknown.status_code == 404 and unknown.headers["x-request-id"] == "e-1"
    [line] = logged(plain, "id=e-1")
    assert "status=404" in line
    broken = httpx.post(chat, content=b"{not json", headers={"x-request-id": "e 2"})  # not a sane id
    assert broken.status_code == 400 and re.fullmatch(r"[0-9a-f]{16}", broken.headers["x-request-id"])
    assert logged(plain, f"id={broken.headers['x-request-id']}")
    nowhere = httpx.get(plain.url + "/v1/nowhere", headers={"x-request-id": "e-3"})
    assert nowhere.status_code == 404 and nowhere.headers["x-request-id"] == "e-3"
    models = httpx.get(plain.url + "/v1/models")
    assert re.fullmatch(r"[0-9a-f]{16}", models.headers["x-request-id"])


def test_json_lines_with_several_workers(json_logging: Server) -> None:
    response = httpx.post(
        json_logging.url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}], "stream": True},
        headers={"x-request-id": "json-1"},
    )
    assert response.status_code == 200
    [line] = logged(json_logging, '"json-1"')
    record = json.loads(line)
    assert record["message"] == "request" and record["level"] == "info"
    assert {k: record[k] for k in ("request_id", "route", "reason", "backend", "model", "status")} == {
        "request_id": "json-1",
        "route": "direct",
        "reason": "model",
        "backend": "openai",
        "model": "gpt-4o",
        "status": 200,
    }
    assert record["output_tokens"] > 0 and record["cost_usd"] > 0 and record["latency_ms"] > 0
    # Every line is JSON, uvicorn's own included.
    lines = [line for line in json_logging.log_text().splitlines() if line.strip()]
    assert all(json.loads(line) for line in lines)
    assert any("Started server process" in json.loads(line)["message"] for line in lines)
    assert PROMPT not in json_logging.log_text()
