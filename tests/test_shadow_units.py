"""The pure parts of shadow judging: reading answers, verdicts, the budget's day, the config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway._answers import answer_text
from gateway.config import ConfigError, build, parse
from gateway.shadow import Budget, combine, question_text, read_verdict


def sse(*events: dict[str, Any], named: bool = False) -> bytes:
    out = b""
    for e in events:
        head = f"event: {e['type']}\n".encode() if named else b""
        out += head + b"data: " + json.dumps(e).encode() + b"\n\n"
    return out


def test_answers_read_alike_whole_and_streamed_in_both_dialects() -> None:
    whole = {
        "choices": [
            {
                "message": {
                    "content": "Hello there",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],
                }
            }
        ]
    }
    chunks = (
        sse(
            {"choices": [{"delta": {"content": "Hel"}}]},
            {"choices": [{"delta": {"content": "lo there"}}]},
            {
                "choices": [
                    {"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a"'}}]}}
                ]
            },
            {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]},
        )
        + b"data: [DONE]\n\n"
    )
    expected = 'Hello there\n[tool call] f({"a": 1})'
    assert answer_text(json.dumps(whole).encode(), "openai", streamed=False) == expected
    assert answer_text(chunks, "openai", streamed=True) == expected
    message = {
        "content": [
            {"type": "text", "text": "Hello there"},
            {"type": "tool_use", "name": "f", "input": {"a": 1}},
        ]
    }
    events = sse(
        {"type": "message_start"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "name": "f"}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": '},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        named=True,
    )
    assert answer_text(json.dumps(message).encode(), "anthropic", streamed=False) == expected
    assert answer_text(events, "anthropic", streamed=True) == expected
    assert answer_text(b"not json", "openai", streamed=False) == ""
    assert (
        answer_text(json.dumps({"choices": [{"text": " done"}]}).encode(), "openai", streamed=False)
        == " done"
    )


def test_verdicts_are_read_about_the_local_answer_in_either_order() -> None:
    assert read_verdict("A is better. [[A]]", local_first=True) == "local_better"
    assert read_verdict("[[A]]", local_first=False) == "api_better"
    assert read_verdict("not [[B]] but [[C]]", local_first=True) == "tie"  # the last one counts
    assert read_verdict("[[D]]", local_first=False) == "both_bad"
    assert read_verdict("no verdict", local_first=True) is None
    assert combine("api_better", "api_better") == "api_better"
    assert combine("local_better", "api_better") == "tie"  # it followed the position: no winner


def test_the_question_reads_as_the_user_wrote_it() -> None:
    assert question_text({"messages": [{"role": "user", "content": "hi"}]}) == "hi"
    convo = {
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "tools": [{"name": "f"}],
    }
    assert question_text(convo) == "[system]\nbe brief\n\n[user]\nhi\n\n(Tools offered: f)"
    assert question_text({"prompt": "complete me"}) == "complete me"


def test_the_budget_starts_afresh_each_utc_day() -> None:
    now = [1_700_000_000.0 - 1_700_000_000.0 % 86400 + 86399]  # a second before midnight UTC
    budget = Budget(lambda: now[0])
    assert budget.reserve(0.6, cap=1.0)
    assert not budget.reserve(0.6, cap=1.0)  # reserved counts until the job settles
    budget.settle(0.6, 0.5)
    assert budget.reserve(0.5, cap=1.0) and not budget.reserve(0.1, cap=1.0)
    budget.settle(0.5, 0.5)
    now[0] += 1  # midnight
    assert budget.reserve(1.0, cap=1.0)


def _config(shadow: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"api_keys": ["${KEY}"]},
        "backends": {
            "local": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:1/v1",
                "models": [{"name": "m"}],
            },
            "api": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:2/v1",
                "models": [{"name": "g"}],
            },
        },
        "routers": {"auto": {"classifier": "heuristic", "local": "local", "api": "api", "shadow": shadow}},
    }


def test_the_shadow_config_is_strict() -> None:
    env = {"KEY": "k", "OTHER": "o"}
    shadow = build(parse(_config({"sample": 0.05, "judge": "api/g"})), env).routers["auto"].shadow
    assert shadow is not None
    assert (shadow.sample, shadow.route, shadow.judge.backend, shadow.store_prompts) == (
        0.05,
        "local",
        "api",
        False,
    )
    bad = [
        ({"sample": 0.05, "judge": "api/g", "extra": 1}, "routers.auto.shadow.extra: unknown key"),
        ({"sample": 0, "judge": "api/g"}, "routers.auto.shadow.sample"),
        ({"sample": 0.1, "judge": "nowhere/g"}, "routers.auto.shadow.judge"),
        (
            {"sample": 0.1, "judge": "api/g", "exclude_api_keys": ["${OTHER}"]},
            "routers.auto.shadow.exclude_api_keys",
        ),
        (
            {"sample": 0.1, "judge": "api/g", "exclude_api_keys": ["plain"]},
            "secrets are not written in the file",
        ),
    ]
    for spec, message in bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            build(parse(_config(spec)), env)


def test_the_readme_shows_the_judge_prompt_in_use() -> None:
    from gateway.shadow import JUDGE_SYSTEM, JUDGE_USER
    from tests.servers import ROOT

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert " ".join(JUDGE_SYSTEM.split()) in readme
    assert " ".join(JUDGE_USER.split()) in readme
