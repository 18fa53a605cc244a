"""Property-based fuzzing of both front doors, each against both backend kinds, through the real
gateway on loopback: generated bodies (a grammar of plausible requests where any field the gateway
or a translator reads may take the wrong type or shape) and mutated ones (a valid body with one
subtree replaced by an arbitrary JSON value).

Whatever comes in, the answer is a success or an error in the client's dialect (OpenAI's shape at
/v1/chat/completions, Anthropic's at /v1/messages) with a status below 500, and no traceback
reaches the client or the gateway's log. The simulators stand in for both backend kinds, so a 5xx
here is the gateway's fault (or a simulator's, which must then answer as the real API does).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CLAUDE
from tests.servers import Server
from tests.test_bad_input import start_sims_gateway

# Four (front door, backend kind) pairs: the model names the backend.
DOORS = [
    ("/v1/chat/completions", "gpt-4o"),  # OpenAI client, OpenAI-compatible backend
    ("/v1/chat/completions", CLAUDE),  # OpenAI client, Anthropic backend
    ("/v1/messages", CLAUDE),  # Anthropic client, Anthropic backend
    ("/v1/messages", "gpt-4o"),  # Anthropic client, OpenAI-compatible backend
    ("/v1/responses", "gpt-4o"),  # OpenAI Responses client, passed through
    ("/v1/responses", CLAUDE),  # OpenAI Responses client, translated to Chat, then to Messages
]
# 6 x 2 x 260 = 3,120 bodies per run, half generated, half mutated.
EXAMPLES = 260
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, openai_sim: Server, anthropic_sim: Server
) -> Iterator[Server]:
    server = start_sims_gateway(tmp_path_factory.mktemp("fuzz"), openai_sim, anthropic_sim)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gw: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        yield c


# ---- values ----------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
# Around the front door's nesting limit (128 levels) and orjson's serialisation limit (254).
deep_values = st.integers(100, 300).map(lambda n: orjson.loads("[" * n + "]" * n))
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, now and then anything at all: rare enough that a body often has just
    one wrong field, which then gets past the front door's checks to the translator's."""
    return st.integers(0, 24).flatmap(lambda n: json_values if n == 24 else valid)


def body_of(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {k: field(v) for k, v in required.items()}, optional={k: field(v) for k, v in optional.items()}
    )


schema = st.one_of(
    st.just({"type": "object"}),
    st.just({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}),
)
tool_name = st.sampled_from(["search", "calc"])
small_int = st.integers(1, 40)
arguments = st.one_of(st.just('{"q": "x"}'), st.just("{}"), st.just("not json"), st.just("[1]"))

# ---- OpenAI Chat Completions -----------------------------------------------------------------------

oa_text_part = body_of({"type": st.just("text"), "text": words}, {})
oa_image_part = body_of(
    {
        "type": st.just("image_url"),
        "image_url": body_of(
            {
                "url": st.sampled_from(
                    [
                        "https://example.com/cat.png",
                        "data:image/png;base64,iVBORw0KGgo=",
                        "ftp://x",
                        "data:,x",
                    ]
                )
            },
            {"detail": st.sampled_from(["low", "high", "auto"])},
        ),
    },
    {},
)
oa_content = st.one_of(words, st.none(), st.lists(st.one_of(oa_text_part, oa_image_part), max_size=3))
oa_call = body_of(
    {
        "id": st.just("call_1"),
        "type": st.just("function"),
        "function": body_of({"name": tool_name, "arguments": arguments}, {}),
    },
    {},
)
oa_message = st.one_of(
    body_of(
        {"role": st.sampled_from(["user", "system", "developer"]), "content": oa_content}, {"name": words}
    ),
    body_of(
        {"role": st.just("assistant")}, {"content": oa_content, "tool_calls": st.lists(oa_call, max_size=2)}
    ),
    body_of({"role": st.just("tool"), "content": oa_content, "tool_call_id": st.just("call_1")}, {}),
)
oa_tool = body_of(
    {
        "type": st.just("function"),
        "function": body_of({"name": tool_name}, {"description": words, "parameters": schema}),
    },
    {},
)
oa_tool_choice = st.one_of(
    st.sampled_from(["auto", "none", "required"]),
    body_of({"type": st.just("function"), "function": body_of({"name": tool_name}, {})}, {}),
)
oa_response_format = st.one_of(
    body_of({"type": st.sampled_from(["text", "json_object"])}, {}),
    body_of(
        {"type": st.just("json_schema"), "json_schema": body_of({"name": st.just("a")}, {"schema": schema})},
        {},
    ),
)
OPENAI_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": small_int,
    "max_completion_tokens": small_int,
    "n": st.just(1),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "stop": st.one_of(words, st.lists(words, max_size=2)),
    "stream": st.booleans(),
    "stream_options": body_of({}, {"include_usage": st.booleans()}),
    "tools": st.lists(oa_tool, max_size=2),
    "tool_choice": oa_tool_choice,
    "parallel_tool_calls": st.booleans(),
    "response_format": oa_response_format,
    "user": words,
    "seed": small_int,
    "logprobs": st.booleans(),
}


def openai_body(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return body_of(
        {"model": st.just(model), "messages": st.lists(oa_message, min_size=1, max_size=4)}, OPENAI_OPTIONAL
    )


# ---- Anthropic Messages ----------------------------------------------------------------------------

an_text = body_of({"type": st.just("text"), "text": words}, {"cache_control": st.just({"type": "ephemeral"})})
an_source = st.one_of(
    body_of(
        {
            "type": st.just("base64"),
            "media_type": st.sampled_from(["image/png", "image/gif"]),
            "data": st.sampled_from(["iVBORw0KGgo=", "R0lGODlhAQABAAAAACw=", "!!"]),
        },
        {},
    ),
    body_of({"type": st.just("url"), "url": st.just("https://example.com/cat.png")}, {}),
)
an_image = body_of({"type": st.just("image"), "source": an_source}, {})
an_tool_use = body_of(
    {
        "type": st.just("tool_use"),
        "id": st.just("toolu_1"),
        "name": tool_name,
        "input": st.one_of(st.just({}), st.just({"q": "x"})),
    },
    {},
)
an_tool_result = body_of(
    {"type": st.just("tool_result"), "tool_use_id": st.just("toolu_1")},
    {"content": st.one_of(words, st.lists(an_text, max_size=2)), "is_error": st.booleans()},
)
an_user = body_of(
    {
        "role": st.just("user"),
        "content": st.one_of(
            words, st.lists(st.one_of(an_text, an_image, an_tool_result), min_size=1, max_size=3)
        ),
    },
    {},
)
an_assistant = body_of(
    {
        "role": st.just("assistant"),
        "content": st.one_of(words, st.lists(st.one_of(an_text, an_tool_use), min_size=1, max_size=2)),
    },
    {},
)
an_tool = body_of({"name": tool_name, "input_schema": schema}, {"description": words})
an_tool_choice = body_of(
    {"type": st.sampled_from(["auto", "any", "none", "tool"])},
    {"name": tool_name, "disable_parallel_tool_use": st.booleans()},
)
ANTHROPIC_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "system": st.one_of(words, st.lists(an_text, max_size=2)),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0, 1),
    "top_k": small_int,
    "stop_sequences": st.lists(words, max_size=2),
    "stream": st.booleans(),
    "metadata": body_of({}, {"user_id": words}),
    "tools": st.lists(an_tool, max_size=2),
    "tool_choice": an_tool_choice,
}


def _turns(first: dict[str, Any], rest: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Any]:
    return [first, *(turn for pair in rest for turn in pair)]


an_messages = st.builds(_turns, an_user, st.lists(st.tuples(an_assistant, an_user), max_size=2))


def anthropic_body(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return body_of(
        {"model": st.just(model), "max_tokens": small_int, "messages": an_messages}, ANTHROPIC_OPTIONAL
    )


# ---- OpenAI Responses ------------------------------------------------------------------------------

rs_part = st.one_of(
    body_of({"type": st.sampled_from(["input_text", "output_text"]), "text": words}, {}),
    body_of({"type": st.just("input_image"), "image_url": st.just("https://example.com/cat.png")}, {}),
)
rs_item = st.one_of(
    body_of(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer"]),
            "content": st.one_of(words, st.lists(rs_part, max_size=3)),
        },
        {"type": st.just("message")},
    ),
    body_of(
        {
            "type": st.just("function_call"),
            "call_id": st.just("call_1"),
            "name": tool_name,
            "arguments": arguments,
        },
        {},
    ),
    body_of({"type": st.just("function_call_output"), "call_id": st.just("call_1"), "output": words}, {}),
)
rs_tool = body_of(
    {"type": st.just("function"), "name": tool_name},
    {"description": words, "parameters": schema, "strict": st.booleans()},
)
rs_format = st.one_of(
    body_of({"type": st.sampled_from(["text", "json_object"])}, {}),
    body_of({"type": st.just("json_schema"), "name": st.just("a"), "schema": schema}, {}),
)
RESPONSES_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "instructions": words,
    "max_output_tokens": small_int,
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "stream": st.booleans(),
    "store": st.booleans(),
    "tools": st.lists(rs_tool, max_size=2),
    "tool_choice": st.one_of(
        st.sampled_from(["auto", "none", "required"]),
        body_of({"type": st.just("function"), "name": tool_name}, {}),
    ),
    "parallel_tool_calls": st.booleans(),
    "text": body_of({}, {"format": rs_format}),
    "previous_response_id": st.just("resp_unknown"),
}


def responses_body(model: str) -> st.SearchStrategy[dict[str, Any]]:
    given = st.one_of(words, st.lists(rs_item, min_size=1, max_size=4))
    return body_of({"model": st.just(model), "input": given}, RESPONSES_OPTIONAL)


def generated(path: str, model: str) -> st.SearchStrategy[dict[str, Any]]:
    if path == "/v1/responses":
        return responses_body(model)
    return openai_body(model) if path == "/v1/chat/completions" else anthropic_body(model)


# ---- mutation --------------------------------------------------------------------------------------


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON value, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((value, key))
        _slots(child, out)
    return out


@st.composite
def mutated(draw: st.DrawFn, path: str, model: str) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(draw(generated(path, model)))
    # Not `model`: the wrong model is a plain 404 and would take a good share of the mutations.
    slots = [(c, k) for c, k in _slots(body, []) if not (c is body and k == "model")]
    # A near-uniform pick: sampled_from and small integer ranges lean towards their first values
    # (here, the top level); wide 16-bit draws taken modulo do not.
    container, key = slots[draw(st.integers(0, 2**16 - 1)) % len(slots)]
    container[key] = draw(st.one_of(json_values, deep_values))
    return body


# ---- the properties --------------------------------------------------------------------------------


def _check_error_shape(path: str, error: Any, where: str) -> None:
    if path == "/v1/messages":
        assert isinstance(error, dict) and error.get("type") == "error", where
        inner = error.get("error")
        assert isinstance(inner, dict) and set(inner) == {"type", "message"}, where
        assert all(isinstance(v, str) for v in inner.values()), where
    else:
        inner = error.get("error") if isinstance(error, dict) else None
        assert isinstance(inner, dict) and set(inner) == {"message", "type", "param", "code"}, where
        assert isinstance(inner["message"], str) and isinstance(inner["type"], str), where


def _check(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body)  # not orjson: it cannot write the deepest bodies a client may send
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    where = f"{response.status_code} {response.text[:500]}\nfor {raw[:1500]}"
    assert response.status_code < 500, where
    assert "Traceback" not in response.text, where
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            # Only an error event has `error` at its top (a Response object nests a null one).
            if (
                line.startswith("data: {")
                and '"error"' in line
                and "error" in (data := orjson.loads(line[6:]))
            ):
                _check_error_shape(path, data, where)
        return
    answer = response.json()
    if response.status_code >= 400:
        _check_error_shape(path, answer, where)


@pytest.mark.parametrize(("path", "model"), DOORS)
@FUZZ
@given(data=st.data())
def test_generated_bodies(client: httpx.Client, path: str, model: str, data: st.DataObject) -> None:
    _check(client, path, data.draw(generated(path, model)))


@pytest.mark.parametrize(("path", "model"), DOORS)
@FUZZ
@given(data=st.data())
def test_mutated_bodies(client: httpx.Client, path: str, model: str, data: st.DataObject) -> None:
    _check(client, path, data.draw(mutated(path, model)))


def test_the_fuzzed_gateway_logged_no_traceback(gw: Server) -> None:
    """Runs after the properties above (same module): a 4xx hiding a logged crash fails here."""
    assert "Traceback" not in gw.log_text()
