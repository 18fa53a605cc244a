"""Against the real vLLM (CPU build, tiny Llama with dummy weights): usage, and cancellation."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ANTHROPIC_KEY, SIM_KEY, base_config
from tests.servers import Server, start_gateway


def vllm_metric(vllm: Server, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(vllm.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _streamed(base_url: str, model: str) -> list[Any]:
    with openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as client:
        return list(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )


def test_streamed_usage_from_vllm(gateway: Server, vllm: Server) -> None:
    chunks = _streamed(gateway.url, "auto")
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 6
    assert usage.prompt_tokens > 0
    # Relayed event by event: as many content chunks as vLLM itself sends (a token that ends inside a
    # UTF-8 sequence, which the dummy weights produce, is held back by vLLM, not by the gateway).
    model = httpx.get(vllm.url + "/v1/models").json()["data"][0]["id"]
    direct = _streamed(vllm.url, model)

    def content(stream: list[Any]) -> list[str]:
        return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]

    assert content(chunks) == content(direct) and len(content(direct)) >= 2


def tokens_generated_after_hangup(vllm: Server, before: float) -> float:
    """Waits for vLLM to have nothing running, then says how many tokens it made since `before`."""
    deadline = time.monotonic() + 10
    while vllm_metric(vllm, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vllm_metric(vllm, "vllm:num_requests_running") == 0
    return vllm_metric(vllm, "vllm:generation_tokens_total") - before


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
    assert tokens_generated_after_hangup(vllm, generated) < 1000
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'status_class="cancelled"' in metrics


def test_abandoned_non_streamed_request_stops_generation(gateway: Server, vllm: Server) -> None:
    generated = vllm_metric(vllm, "vllm:generation_tokens_total")
    request = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1.5 s; the answer needs ~8 s
        httpx.post(gateway.url + "/v1/chat/completions", json=request, timeout=1.5)
    assert tokens_generated_after_hangup(vllm, generated) < 1000


def test_self_hosted_cost_is_amortised_and_vllm_state_scraped(
    tmp_path: Path, vllm: Server, openai_sim: Server, anthropic_sim: Server
) -> None:
    config = base_config(vllm.url, openai_sim.url, anthropic_sim.url)
    config["backends"]["local"].update({"gpu_usd_per_hour": 1.8, "gpus": 2, "scrape_metrics": True})
    server = start_gateway(
        tmp_path, config, env={"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    )
    try:
        request = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 200,
            "ignore_eos": True,
        }
        started = time.monotonic()
        assert httpx.post(server.url + "/v1/chat/completions", json=request, timeout=60).status_code == 200
        busy = time.monotonic() - started
        # Streamed and cut short: no usage arrives, so it is estimated and counted as such.
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**request, "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        time.sleep(6)  # one housekeeping round: idle cost and vLLM's state
        text = httpx.get(server.url + "/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

        def get(name: str, **labels: str) -> float:
            return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))

        rate = 1.8 * 2 / 3600  # USD per second for the deployment
        local_cost = get("crossover_cost_usd_total", backend="local")
        # The whole GPU cost of the time the requests ran (never more than their wall time).
        assert 0.5 * busy * rate < local_cost < (busy + 6) * rate
        assert get("crossover_gpu_cost_usd_per_hour", backend="local") == 3.6
        assert get("crossover_gpu_idle_cost_usd_total", backend="local") > 0
        assert get("crossover_estimated_usage_requests_total", backend="local") == 1
        assert get("crossover_baseline_cost_usd_total", backend="local") > 0  # priced as gpt-4o
        assert ("crossover_backend_requests_running", (("backend", "local"),)) in samples
        assert ("crossover_backend_kv_cache_usage_ratio", (("backend", "local"),)) in samples
    finally:
        server.stop()


def test_a_full_local_backend_spills_router_requests_to_the_api(
    tmp_path: Path, vllm: Server, openai_sim: Server, anthropic_sim: Server
) -> None:
    """With `max_in_flight: 1`, a second request while vLLM streams a long answer goes to the API."""
    config = base_config(vllm.url, openai_sim.url, anthropic_sim.url)
    config["backends"]["local"]["max_in_flight"] = 1
    env = {"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    server = start_gateway(tmp_path, config, env=env)
    explain = {"x-crossover-explain": "1"}
    hi = [{"role": "user", "content": "hi"}]
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:

            def ask(model: str = "auto") -> httpx.Headers:
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=hi, max_tokens=2, extra_headers=explain
                )
                return raw.headers

            assert ask()["x-crossover-route"] == "local"  # nothing running: the score decides
            long = client.chat.completions.create(
                model="auto", messages=hi, max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
            )
            with long:
                next(iter(long))  # vLLM is generating for this one
                spilled = ask()
                assert (spilled["x-crossover-route"], spilled["x-crossover-backend"]) == ("api", "openai")
                assert '"reason":"spill"' in spilled["x-crossover-explain"]
                assert ask("tiny-llama")["x-crossover-backend"] == "local"  # a named model still goes there
            deadline = time.monotonic() + 5
            while ask()["x-crossover-route"] != "local":  # the stream's slot frees once it is closed
                assert time.monotonic() < deadline
                time.sleep(0.1)
        spills = re.search(
            r'crossover_routing_decisions_total\{reason="spill",route="api",router="auto"\} (\S+)',
            httpx.get(server.url + "/metrics").text,
        )
        assert spills is not None and float(spills.group(1)) >= 1  # more, if a request met the closing slot
    finally:
        server.stop()
