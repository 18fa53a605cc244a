"""Against the real vLLM (CPU build, tiny Llama with dummy weights): usage, and cancellation."""

from __future__ import annotations

import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Server


def vllm_metric(vllm: Server, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(vllm.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_streamed_usage_from_vllm(gateway: Server) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 6
    assert usage.prompt_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) >= 6


def test_client_disconnect_aborts_generation_upstream(gateway: Server, vllm: Server) -> None:
    generated = vllm_metric(vllm, "vllm:generation_tokens_total")
    request = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "tell me everything"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=request, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert vllm_metric(vllm, "vllm:num_requests_running") == 1
    # Hanging up must stop generation: the whole answer (2,000 tokens, ~8 s here) is never produced.
    deadline = time.monotonic() + 10
    while vllm_metric(vllm, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vllm_metric(vllm, "vllm:num_requests_running") == 0
    assert vllm_metric(vllm, "vllm:generation_tokens_total") - generated < 1000
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'status_class="cancelled"' in metrics
