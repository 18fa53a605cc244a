"""OpenAI's `/v1/responses` and `/v1/embeddings` for the simulator (tests/simulators/openai_sim.py).

Responses answer as the simulator's chat does: "echo: <last user text>", a call of the first function
tool when tools are offered (and the last input item is not a tool's output), a JSON object when
`text.format` asks for one. Streams are framed as OpenAI frames them (`event:` lines, a
`sequence_number` on every event, no `[DONE]`). A response is kept (for `previous_response_id`) unless
`store` is false; an unknown previous id is OpenAI's 400. Embeddings are deterministic unit vectors
derived from each input, as floats or base64 (the SDK asks for base64).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

KEPT: dict[str, str] = {}  # response id -> its answer text, for previous_response_id


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def _error(status: int, message: str, param: str | None, code: str | None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def responses_reply(body: dict[str, Any], cut_after: int | None = None) -> Response:
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    if not isinstance(items, list) or not items:
        return _error(400, "Missing required parameter: 'input'.", "input", "missing_required_parameter")
    previous = body.get("previous_response_id")
    if previous is not None and previous not in KEPT:
        return _error(400, f"Previous response with id '{previous}' not found.", "previous_response_id", None)
    users = [i for i in items if isinstance(i, dict) and i.get("role") == "user"]
    text = _text_of(users[-1].get("content")) if users else ""
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    fmt = ((body.get("text") or {}).get("format") or {}).get("type")
    last = items[-1] if isinstance(items[-1], dict) else {}
    ident = "resp_" + uuid.uuid4().hex
    output: list[dict[str, Any]] = []
    if tools and body.get("tool_choice") != "none" and last.get("type") != "function_call_output":
        arguments = json.dumps({"query": text})
        output.append(
            {
                "id": "fc_" + uuid.uuid4().hex,
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": "call_" + uuid.uuid4().hex[:24],
                "name": tools[0]["name"],
            }
        )
        made = 5
    else:
        answer = json.dumps({"answer": text}) if fmt in ("json_object", "json_schema") else "echo: " + text
        if previous is not None:
            answer += " (after: " + KEPT[previous] + ")"
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": answer}
        output.append(
            {
                "id": "msg_" + uuid.uuid4().hex,
                "type": "message",
                "status": "completed",
                "content": [part],
                "role": "assistant",
            }
        )
        made = len(answer.split(" "))
    if body.get("store") is not False:
        KEPT[ident] = text
    given_tokens = sum(len(_text_of(i.get("content")).split()) + 4 for i in items if isinstance(i, dict))
    usage = {
        "input_tokens": given_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": made,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given_tokens + made,
    }
    response = {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"] + "-2024-08-06",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": previous,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "metadata": {},
    }
    if not body.get("stream"):
        return JSONResponse(response)
    return StreamingResponse(_stream(response, cut_after), media_type="text/event-stream; charset=utf-8")


async def _stream(response: dict[str, Any], cut_after: int | None) -> AsyncIterator[bytes]:
    sequence = 0

    def event(kind: str, **data: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, **data, "sequence_number": sequence}
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

    started = {k: v for k, v in response.items() if k != "usage"} | {"status": "in_progress", "output": []}
    frames = [event("response.created", response=started), event("response.in_progress", response=started)]
    for at, item in enumerate(response["output"]):
        if item["type"] == "message":
            part = item["content"][0]
            frames.append(event("response.output_item.added", output_index=at, item={**item, "content": []}))
            empty = {**part, "text": ""}
            frames.append(
                event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=at,
                    content_index=0,
                    part=empty,
                )
            )
            words = part["text"].split(" ")
            for i, word in enumerate(words):
                frames.append(
                    event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=at,
                        content_index=0,
                        delta=word if i == 0 else " " + word,
                        logprobs=[],
                    )
                )
            ids = {"item_id": item["id"], "output_index": at, "content_index": 0}
            frames.append(event("response.output_text.done", **ids, text=part["text"], logprobs=[]))
            frames.append(event("response.content_part.done", **ids, part=part))
        else:
            frames.append(
                event(
                    "response.output_item.added",
                    output_index=at,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
            )
            args = item["arguments"]
            for i in range(0, len(args), 7):
                frames.append(
                    event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=at,
                        delta=args[i : i + 7],
                    )
                )
            frames.append(
                event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=at,
                    name=item["name"],
                    arguments=args,
                )
            )
        frames.append(event("response.output_item.done", output_index=at, item=item))
    frames.append(event("response.completed", response=response))
    for n, frame in enumerate(frames):
        if cut_after is not None and n >= cut_after:
            raise ConnectionResetError("simulated upstream failure")
        yield frame
        await asyncio.sleep(0)


def _vector(seed: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(seed.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 + i % 7 for i in range(dimensions)]
    norm = sum(v * v for v in raw) ** 0.5
    return [v / norm for v in raw]


def embeddings_reply(body: dict[str, Any], dimensions: int) -> Response:
    given = body.get("input")
    if isinstance(given, str) or (isinstance(given, list) and given and isinstance(given[0], int)):
        inputs: list[Any] = [given]
    elif isinstance(given, list) and given:
        inputs = given
    else:
        return _error(400, "'input' must be a non-empty string or array.", "input", "invalid_type")
    size = body.get("dimensions") or dimensions
    tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
    data = []
    for index, one in enumerate(inputs):
        vector = _vector(json.dumps(one), size)
        if body.get("encoding_format") == "base64":
            embedding: Any = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
