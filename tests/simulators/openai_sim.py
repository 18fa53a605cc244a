"""An OpenAI API simulator: the real paths, bearer auth, SSE framing with `data: [DONE]`, OpenAI's
error bodies and statuses, and `retry-after` on 429.

Answers are deterministic: the assistant repeats the last user message ("echo: ..."), calls the
first tool when tools are offered, and returns a JSON object when `response_format` asks for one.

Faults are scripted through `POST /_sim/faults` (a list, consumed one per request): each is
{"status": 429|500|503|..., "retry_after": seconds} or {"delay": seconds} or {"cut_after": n}
(stream n chunks, then drop the connection) or {"body": {...}} (a non-streamed 200 with that body, as a
misbehaving server might send) or {"status": 4xx|5xx, "error": {...}} (that error object as the body)
or {"stream_error": {...}} (streaming: one chunk, then a `data: {"error": {...}}` line, as OpenAI
and vLLM report a failure mid-stream). `GET /_sim/requests` returns the bodies received.

Shadow judging (gateway/shadow.py) uses two additions. A request with the header `x-sim-answer-prefix`
is answered "<prefix> ..." instead of "echo: ...", so two backends on one simulator give different
answers. And a chat request in the judge's pairwise format is judged by a rule on its question, so tests
know the truth: `truth:local`, `truth:api`, `truth:tie` or `truth:bad` (both bad) picks the verdict, the
API's answer being the one that starts with "echo:"; `truth:fail` answers 500, `truth:slow` waits 30 s,
`truth:mumble` gives no verdict; no rule is a tie. `GET /_sim/arrivals` lists, per API request,
its arrival time (Unix seconds), model, whether it was a judge call, and the question it asked.

As a vLLM replica (gateway/replicas.py): `GET /health` and a vLLM-shaped `GET /metrics`
(`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`). `POST /_sim/engine`
sets what they say ({"waiting": n, "kv_cache": 0-1, "healthy": bool}; running counts the requests in
progress) and {"latency": seconds}, a wait before every API answer, so requests overlap.

    python -m tests.simulators.openai_sim --port 9100 --key sk-sim
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Collection
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.simulators.controls import Controls
from tests.simulators.responses import embeddings_reply, responses_reply

MODELS = ("gpt-4o", "gpt-4o-mini")
EMBEDDING_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}  # name: dimensions


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _mask(key: str) -> str:
    # OpenAI's 401 quotes part of the key it was given; a gateway must not pass this on.
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else key


class Simulator(Controls):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.arrivals: list[dict[str, Any]] = []
        self.engine: dict[str, Any] = {"waiting": 0, "kv_cache": 0.0, "healthy": True, "latency": 0.0}
        self.running = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/_sim/arrivals", self.get_arrivals, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
                Route("/_sim/engine", self.set_engine, methods=["POST"]),
                *self.control_routes(),
            ]
        )

    def _auth(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        given = header[7:]
        if given != self.key:
            return _error(
                401,
                f"Incorrect API key provided: {_mask(given)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        return None

    async def health(self, request: Request) -> Response:
        return Response(status_code=200 if self.engine["healthy"] else 503)

    async def metrics(self, request: Request) -> Response:
        labels = '{engine="0",model_name="gpt-4o"}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{labels} {float(self.running)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{labels} {float(self.engine['waiting'])}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{labels} {float(self.engine['kv_cache'])}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def set_engine(self, request: Request) -> Response:
        self.engine.update(await request.json())
        return JSONResponse(self.engine)

    async def get_arrivals(self, request: Request) -> Response:
        return JSONResponse(self.arrivals)

    async def models(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in MODELS]
        return JSONResponse({"object": "list", "data": data})

    async def _prelude(
        self, request: Request, models: Collection[str] = MODELS
    ) -> tuple[dict[str, Any] | None, Response | None, dict[str, Any]]:
        if (denied := self._auth(request)) is not None:
            return None, denied, {}
        try:
            body = json.loads(await request.body())
        except ValueError:
            return (
                None,
                _error(
                    400, "We could not parse the JSON body of your request.", "invalid_request_error", None
                ),
                {},
            )
        self.requests.append(body)
        judging = _judging(body)
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        said = judging[0] if judging else str(messages[-1].get("content")) if messages else ""
        self.arrivals.append(
            {"at": time.time(), "judge": judging is not None, "model": body.get("model"), "text": said}
        )
        self.headers.append({"anthropic-beta": request.headers.get("anthropic-beta")})
        self.trace(request)
        fault = self.next_fault()
        if "delay" in fault:
            await asyncio.sleep(fault["delay"])
        status = fault.get("status")
        if status is not None and "error" in fault:
            return None, JSONResponse({"error": fault["error"]}, status_code=status), {}
        if status == 429:
            return (
                None,
                _error(
                    429,
                    "Rate limit reached for gpt-4o in organization org-sim on requests per "
                    "min (RPM): Limit 3, Used 3, Requested 1.",
                    "requests",
                    "rate_limit_exceeded",
                    headers={
                        "retry-after": str(fault.get("retry_after", 2)),
                        "x-ratelimit-remaining-requests": "0",
                    },
                ),
                {},
            )
        if status is not None:
            messages = {
                500: "The server had an error while processing your request. Sorry about that!",
                503: "The engine is currently overloaded, please try again later.",
            }
            return None, _error(status, messages.get(status, "error"), "server_error", None), {}
        model = body.get("model")
        if model not in models:
            return (
                None,
                _error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
                {},
            )
        return body, None, fault

    async def chat(self, request: Request) -> Response:
        self.running += 1
        try:
            if self.engine["latency"]:
                await asyncio.sleep(self.engine["latency"])
            return await self._chat_request(request)
        finally:
            self.running -= 1

    async def _chat_request(self, request: Request) -> Response:
        body, refused, fault = await self._prelude(request)
        if body is None:
            assert refused is not None
            return refused
        if "body" in fault:
            return JSONResponse(fault["body"])
        judging = _judging(body)
        if judging is not None:
            return await self._judge(body, *judging)
        try:
            return self._chat(body, fault, request.headers.get("x-sim-answer-prefix", "echo:"))
        except (AttributeError, KeyError, IndexError, TypeError):
            # OpenAI validates every field and answers 400 to a misshapen one; the simulator reads
            # only what it needs, so a field it cannot read stands for that (not a 500).
            return _error(
                400,
                "Invalid request: a field has the wrong type or shape.",
                "invalid_request_error",
                "invalid_type",
            )

    def _chat(self, body: dict[str, Any], fault: dict[str, Any], prefix: str) -> Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
                "messages",
            )
        last = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
        content = last.get("content")
        text = (
            content
            if isinstance(content, str)
            else " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
        )
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        tools = body.get("tools") or []
        format_ = (body.get("response_format") or {}).get("type")
        tool_call = None
        answer: str | None
        if tools and body.get("tool_choice") != "none" and messages[-1].get("role") != "tool":
            name = tools[0]["function"]["name"]
            tool_call = {
                "id": "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"query": text})},
            }
            answer = None
        elif format_ in ("json_object", "json_schema"):
            answer = json.dumps({"answer": text})
        else:
            answer = prefix + " " + text
        pieces = answer.split(" ") if answer else []
        completion_tokens = len(pieces) + (5 if tool_call else 0)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        finish = "tool_calls" if tool_call else "stop"
        ident, created = "chatcmpl-" + uuid.uuid4().hex[:29], int(time.time())
        headers = {
            "x-request-id": "req_" + uuid.uuid4().hex,
            "openai-processing-ms": "12",
            "openai-version": "2020-10-01",
        }
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": answer,
                "refusal": None,
                "annotations": [],
            }
            if tool_call:
                message["tool_calls"] = [tool_call]
            return JSONResponse(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"] + "-2024-08-06",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                    "service_tier": "default",
                    "system_fingerprint": "fp_sim",
                },
                headers=headers,
            )
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        return StreamingResponse(
            self._chat_stream(
                ident,
                created,
                body["model"] + "-2024-08-06",
                pieces,
                tool_call,
                finish,
                usage if include_usage else None,
                fault.get("cut_after"),
                fault.get("stream_error"),
            ),
            media_type="text/event-stream; charset=utf-8",
            headers=headers,
        )

    async def _chat_stream(
        self,
        ident: str,
        created: int,
        model: str,
        pieces: list[str],
        tool_call: dict[str, Any] | None,
        finish: str,
        usage: dict[str, Any] | None,
        cut_after: int | None,
        stream_error: dict[str, Any] | None = None,
    ) -> AsyncIterator[bytes]:
        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            c: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_sim",
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(c).encode() + b"\n\n"

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            # With include_usage, every chunk but the last says "usage": null, as OpenAI's do.
            return frame([choice], **({"usage": None} if usage is not None else {}))

        frames = [chunk({"role": "assistant", "content": "" if tool_call is None else None, "refusal": None})]
        for i, piece in enumerate(pieces):
            frames.append(chunk({"content": piece if i == 0 else " " + piece}))
        if tool_call is not None:
            fn = tool_call["function"]
            frames.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": tool_call["id"],
                                "type": "function",
                                "function": {"name": fn["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            args = fn["arguments"]
            for i in range(0, len(args), 7):
                frames.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]})
                )
        frames.append(chunk({}, finish))
        if usage is not None:
            frames.append(frame([], usage=usage))
        frames.append(b"data: [DONE]\n\n")
        if stream_error is not None:
            frames = [frames[0], b"data: " + json.dumps({"error": stream_error}).encode() + b"\n\n"]
        for n, frame in enumerate(frames):
            if cut_after is not None and n >= cut_after:
                raise ConnectionResetError("simulated upstream failure")  # uvicorn drops the connection
            yield frame
            await asyncio.sleep(0)

    async def _judge(self, body: dict[str, Any], question: str, a: str, b: str) -> Response:
        """A pairwise verdict by the rule in the question (see the module's docstring)."""
        truth = _TRUTH.search(question)
        rule = truth.group(1) if truth else "tie"
        if rule == "fail":
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        if rule == "slow":
            await asyncio.sleep(30)
        a_is_api = a.startswith("echo:")
        letter = {
            "api": "A" if a_is_api else "B",
            "local": "B" if a_is_api else "A",
            "tie": "C",
            "bad": "D",
        }.get(rule)
        text = f"The verdict follows the rule '{rule}'." + (f" [[{letter}]]" if letter else "")
        usage = {"prompt_tokens": 200, "completion_tokens": 10, "total_tokens": 210}
        return JSONResponse(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex[:29],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def completions(self, request: Request) -> Response:
        body, refused, _ = await self._prelude(request)
        if body is None:
            assert refused is not None
            return refused
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
        usage = {
            "prompt_tokens": len(text.split()),
            "completion_tokens": 2,
            "total_tokens": len(text.split()) + 2,
        }
        return JSONResponse(
            {
                "id": "cmpl-" + uuid.uuid4().hex[:29],
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": "fp_sim",
                "choices": [{"text": " echo", "index": 0, "logprobs": None, "finish_reason": "length"}],
                "usage": usage,
            }
        )

    async def responses(self, request: Request) -> Response:
        body, refused, fault = await self._prelude(request)
        if body is None:
            assert refused is not None
            return refused
        return responses_reply(body, fault.get("cut_after"))

    async def embeddings(self, request: Request) -> Response:
        body, refused, _ = await self._prelude(request, EMBEDDING_MODELS)
        if body is None:
            assert refused is not None
            return refused
        return embeddings_reply(body, EMBEDDING_MODELS[body["model"]])


_JUDGE_FORMAT = re.compile(
    r"\[User Question\]\n(.*)\n\n\[The Start of Assistant A's Answer\]\n(.*)\n\[The End of Assistant A's Answer\]"
    r"\n\n\[The Start of Assistant B's Answer\]\n(.*)\n\[The End of Assistant B's Answer\]",
    re.S,
)
_TRUTH = re.compile(r"truth:(local|api|tie|bad|fail|slow|mumble)")


def _judging(body: dict[str, Any]) -> tuple[str, str, str] | None:
    """(question, answer A, answer B) of a request in the pairwise judge's format, else None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    content = messages[-1].get("content")
    found = _JUDGE_FORMAT.search(content) if isinstance(content, str) else None
    return (found.group(1), found.group(2), found.group(3)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="sk-sim")
    args = parser.parse_args()
    uvicorn.run(Simulator(args.key).app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
