"""Pure functions: routing decision, heuristic scores, upstream error normalisation, null stripping, cost."""

from __future__ import annotations

import orjson
import pytest

from classifier import extract_features, load_classifier
from gateway.accounting import BackendMeter, cost_usd
from gateway.config import Price, Router, Target
from gateway.routing import decide
from providers.base import Usage
from providers.errors import error_from_response, redact, retry_after_seconds
from providers.openai_compat import openai_usage as usage_from
from providers.openai_compat import strip_disallowed_nulls

ROUTER = Router("auto", "heuristic", 0.5, Target("local", None), Target("openai", "gpt-4o"), fallback=True)


def test_decide_by_score_with_threshold_inclusive_for_api() -> None:
    assert decide(ROUTER, 0.49).route == "local"
    api = decide(ROUTER, 0.5)
    assert (api.route, api.target, api.fallback, api.reason) == ("api", ROUTER.api, ROUTER.local, "score")


def test_header_overrides_and_no_fallback_when_disabled() -> None:
    forced = decide(ROUTER, None, "local")
    assert (forced.route, forced.reason, forced.score) == ("local", "header", None)
    strict = Router("r", "heuristic", 0.5, Target("a", None), Target("b", None), fallback=False)
    assert decide(strict, 0.9).fallback is None
    with pytest.raises(ValueError, match="needs a score"):
        decide(ROUTER, None)


def score(request: dict[str, object]) -> float:
    return load_classifier("heuristic").score(extract_features(request))


def test_heuristic_orders_easy_below_hard() -> None:
    easy = score({"messages": [{"role": "user", "content": "What is the capital of France?"}]})
    hard = score(
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Prove step by step that sqrt(2) is irrational, "
                    "then implement def check(n): return ... and analyze the complexity.",
                }
            ]
        }
    )
    assert 0 <= easy < 0.3 < 0.5 <= hard <= 1
    base = {"messages": [{"role": "user", "content": "Summarise this."}]}
    assert score({**base, "tools": [{"type": "function"}]}) > score(base)
    assert score({**base, "response_format": {"type": "json_schema"}}) > score(base)


def test_features_read_chat_parts_and_completion_prompts() -> None:
    f = extract_features(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}],
                },
                {"role": "assistant", "content": None},
                {"role": "user", "content": "again"},
            ],
            "max_completion_tokens": 50,
        }
    )
    assert (f.text, f.turns, f.total_chars, f.max_tokens) == ("again", 2, len("be brief") + 4 + 5, 50)
    g = extract_features({"prompt": ["a", "b"], "response_format": {"type": "json_object"}})
    assert (g.text, g.turns, g.response_format) == ("a\nb", 1, "json_object")


def test_user_classifier_by_module_attribute() -> None:
    assert (
        load_classifier("classifier.heuristic:HeuristicClassifier").score(extract_features({"prompt": "x"}))
        < 0.5
    )
    with pytest.raises(ValueError, match="unknown classifier"):
        load_classifier("nope")
    with pytest.raises(ValueError, match="cannot load"):
        load_classifier("no.such.module:Thing")


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_redact_removes_our_key_and_key_shapes() -> None:
    assert redact("bad key sk-abc***wxyz given", ()) == "bad key [redacted] given"
    assert redact("token=opaque-secret-value", ("opaque-secret-value",)) == "token=[redacted]"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            b'{"error":{"message":"Incorrect API key provided: sk-ab***cd","code":"invalid_api_key"}}',
            (502, "upstream_auth_failed"),
        ),
        (
            429,
            b'{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}',
            (429, "rate_limit_exceeded"),
        ),
        (500, b"<html>oops</html>", (502, "upstream_error")),
        (503, b"", (503, "backend_overloaded")),
        (
            529,
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            (503, "backend_overloaded"),
        ),
        (504, b"", (504, "upstream_timeout")),
        (422, b'{"object":"error","message":"bad field","type":"BadRequestError","code":400}', (400, None)),
        (
            404,
            b'{"error":{"message":"no such model","type":"invalid_request_error","code":"model_not_found"}}',
            (404, "model_not_found"),
        ),
    ],
)
def test_upstream_errors_are_normalised(status: int, body: bytes, expected: tuple[int, str | None]) -> None:
    error = error_from_response("b", status, {}, body, ())
    assert (error.status, error.code) == expected
    assert "sk-" not in error.message
    assert error.retryable == ((status >= 429 and status != 422 and status != 404) or status == 401)


def test_vllm_flat_error_message_is_kept() -> None:
    error = error_from_response(
        "local",
        400,
        {},
        b'{"object":"error","message":"max_tokens too large","type":"BadRequestError","code":400}',
    )
    assert (error.status, error.message, error.type) == (400, "max_tokens too large", "invalid_request_error")


def test_strip_disallowed_nulls_keeps_openai_nulls_and_strings() -> None:
    raw = (
        b'{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,'
        b'"annotations":null,"tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],'
        b'"usage":{"prompt_tokens_details":null,"prompt_tokens":1},"note":"a,\\"k\\":null"}'
    )
    cleaned = orjson.loads(strip_disallowed_nulls(raw))
    message = cleaned["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "refusal": None, "tool_calls": []}
    assert "stop_reason" not in cleaned["choices"][0] and cleaned["choices"][0]["logprobs"] is None
    assert cleaned["usage"] == {"prompt_tokens": 1}
    assert cleaned["note"] == 'a,"k":null'  # untouched inside a string
    assert strip_disallowed_nulls(b'{"a":1}') == b'{"a":1}'


def test_cost_bills_cached_tokens_once_at_the_cached_rate() -> None:
    price = Price(input=2.5e-6, cached_input=1.25e-6, output=10e-6)
    usage = usage_from(
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 200,
                "prompt_tokens_details": {"cached_tokens": 400},
            }
        }
    )
    assert usage == Usage(input=1000, output=200, cached=400)
    assert cost_usd(usage, price) == pytest.approx(600 * 2.5e-6 + 400 * 1.25e-6 + 200 * 10e-6)
    assert usage_from({"usage": None}) is None


def test_agent_turns_keep_the_task_text_and_count_system_and_tool_results() -> None:
    task = "Refactor the parser and prove the invariant step by step"
    f = extract_features(
        {
            "system": "You are a coding agent.",
            "messages": [
                {"role": "user", "content": task},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "read", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": "file text"}],
                },
            ],
        }
    )
    assert f.text == task
    assert f.total_chars == len("You are a coding agent.") + len(task) + len("file text")
    assert f.turns == 2


def test_gpu_meter_splits_busy_time_and_reports_idle() -> None:
    now = [0.0]
    meter = BackendMeter(3.6, clock=lambda: now[0])  # 3.6 USD/hour = 0.001 USD/second
    a = meter.start()
    now[0] = 10.0
    b = meter.start()  # from here A and B share the GPU
    now[0] = 20.0
    assert meter.stop(a) == pytest.approx(0.010 + 0.005)
    now[0] = 30.0
    assert meter.stop(b) == pytest.approx(0.005 + 0.010)
    now[0] = 40.0
    assert meter.take_idle() == pytest.approx(0.010)
    assert meter.take_idle() == 0


def test_shipped_price_table_applies_unless_the_config_prices_the_model() -> None:
    from gateway.config import build, parse

    settings = build(
        parse(
            {
                "backends": {
                    "o": {
                        "kind": "openai_compatible",
                        "base_url": "http://x/v1",
                        "models": [
                            {"name": "gpt-4o"},
                            {"name": "mine", "upstream": "gpt-4o-mini"},
                            {"name": "free", "price": {}},
                            {"name": "unknown-model"},
                        ],
                    }
                }
            }
        ),
        {},
    )
    prices = {m.name: m.price for m in settings.backends["o"].models}
    assert prices["gpt-4o"] == Price(2.5e-6, 1.25e-6, 10e-6)
    assert prices["mine"] == Price(0.15e-6, 0.075e-6, 0.6e-6)  # looked up by upstream name
    assert prices["free"] == prices["unknown-model"] == Price(0.0, 0.0, 0.0)
