"""What reading, checking and routing one request costs, function by function, in microseconds.

    python bench/hot_path.py [--classifier heuristic|learned] [--cpu 0]

Each function runs on bench/run.sh's JSON body (one user message, model "auto" of bench/crossover.yaml)
and its upstream's answer, in this process, without a server: the best of 7 timeit repeats. The whole
gateway's CPU per request is bench/run.sh's to measure; this says which part is which, so a change to
one of them can be measured on its own (run it before and after, on an idle machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from prometheus_client import CollectorRegistry

from classifier import extract_features, load_classifier
from gateway import config
from gateway.exchange import Exchange
from gateway.inbound import read_json, validate_chat
from gateway.metrics import Metrics
from gateway.pipeline import route
from gateway.request_id import new_request_id
from gateway.routing import Ask, decide, plan_route
from gateway.runtime import Runtime
from gateway.state import GatewayState
from providers.openai_compat import openai_usage, strip_disallowed_nulls

CONFIG = Path(__file__).resolve().parent / "crossover.yaml"
BODY = b'{"model":"auto","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}'
# bench/nginx.conf's JSON answer
ANSWER = (
    b'{"id":"chatcmpl-bench000000000000000000000001","object":"chat.completion","created":1700000000,'
    b'"model":"bench-json","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":'
    b'"assistant","content":"The capital of France is Paris, of course.","refusal":null},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":10,"total_tokens":24}}'
)
RAW_HEADERS = [
    (b"host", b"127.0.0.1:18081"),
    (b"content-length", str(len(BODY)).encode()),
    (b"content-type", b"application/json"),
]
SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": RAW_HEADERS,
    "query_string": b"",
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(message: Any) -> None:
    pass


def done(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that never waits (no event loop needed)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the coroutine waited")


def timed(label: str, function: Callable[[], Any]) -> None:
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=7, number=number)) / number
    print(f"| {label} | {best * 1e6:.2f} |")


async def measure(classifier: str) -> None:
    settings = config.load(CONFIG)
    if classifier != "heuristic":
        from dataclasses import replace

        routers = {n: replace(r, classifier=classifier) for n, r in settings.routers.items()}
        settings = replace(settings, routers=routers)
    router = settings.routers["auto"]
    runtime = Runtime(settings)
    await runtime.start()
    state = GatewayState(runtime, Metrics(registry=CollectorRegistry()), None)
    body = orjson.loads(BODY)
    scorer = load_classifier(classifier)
    features = extract_features(body)
    scorer.score(features)  # loads an artifact outside the timing
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(RAW_HEADERS)}
    ask = Ask(features=features)
    exchange = Exchange(state, dict(SCOPE), receive, send, "openai")
    exchange.runtime, exchange.body = runtime, body
    answer = orjson.loads(ANSWER)

    def routed() -> Any:
        exchange._headers_in = None  # decoded once per request, as in a real one
        return done(route(exchange, body, None))

    print(f"| function ({classifier}) | µs |")
    print("|---|---|")
    timed("inbound.read_json", lambda: done(read_json(receive, SCOPE, headers, settings.max_body_bytes)))
    timed("inbound.validate_chat", lambda: validate_chat(body))
    timed("features.extract_features", lambda: extract_features(body))
    timed(f"{classifier} score()", lambda: scorer.score(features))
    timed("routing.decide", lambda: decide(router, 0.3, None, None, 0.5, features))
    timed("routing.plan_route (score included)", lambda: plan_route(router, ask, scorer.score, 0.5))
    timed("pipeline.route (all of it, metrics included)", routed)
    timed("Exchange(...)", lambda: Exchange(state, dict(SCOPE), receive, send, "openai"))
    timed("request_id.new_request_id", new_request_id)
    timed("openai_compat.strip_disallowed_nulls", lambda: strip_disallowed_nulls(ANSWER))
    timed("openai_compat.openai_usage", lambda: openai_usage(answer))
    await runtime.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--classifier", default="heuristic", help="the router's classifier (as in the config)"
    )
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    asyncio.run(measure(args.classifier))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
