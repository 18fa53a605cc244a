"""What a first-time user meets: `--version`, offline commands that need no secrets, every unset
variable named at once, `classify | head` without a traceback, and a gateway that says where each
backend is expected and what to do when the local one is not there."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import ROOT, free_port, loopback_backend, start_gateway

CROSSOVER = [sys.executable, "-m", "gateway.cli"]
UNSET = ("CROSSOVER_TEST_UNSET_A", "CROSSOVER_TEST_UNSET_B", "CROSSOVER_TEST_UNSET_C")


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CROSSOVER, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, **kwargs)


def secret_config(tmp_path: Path) -> Path:
    a, b, c = UNSET
    config = {
        "server": {"api_keys": [f"${{{c}}}"]},
        "backends": {
            "local": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:8000/v1",
                "models": [{"name": "m"}],
            },
            "openai": {
                "kind": "openai_compatible",
                "base_url": "https://api.openai.com/v1",
                "api_key": f"${{{a}}}",
                "models": [{"name": "gpt-4o"}],
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": "https://api.anthropic.com/v1",
                "api_key": f"${{{b}}}",
            },
        },
        "routers": {"auto": {"local": "local", "api": "openai/gpt-4o", "classifier": "heuristic"}},
    }
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_version() -> None:
    done = run("--version")
    assert (
        done.returncode == 0 and done.stdout.startswith("crossover ") and done.stdout.split()[1][0].isdigit()
    )


def test_offline_commands_need_no_secrets_and_serve_names_every_unset_one(tmp_path: Path) -> None:
    config = secret_config(tmp_path)
    checked = run("check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert all(name in checked.stdout for name in UNSET)  # a note of what `serve` will need
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    classified = run("classify", "--config", str(config), "--input", str(requests))
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["router"] == "auto"
    calibrated = run(
        "calibrate", "--config", str(config), "--input", str(requests), "--target-api-share", "0.5"
    )
    assert calibrated.returncode == 0, calibrated.stderr
    served = run("serve", "--config", str(config), "--port", str(free_port()))
    assert served.returncode == 2
    a, b, c = UNSET
    [line] = served.stderr.splitlines()  # one message naming them all
    assert f"backends.openai.api_key: environment variable {a} is not set" in line
    assert f"backends.anthropic.api_key: environment variable {b} is not set" in line
    assert f"server.api_keys[0]: environment variable {c} is not set" in line


def test_classify_into_head_ends_quietly(tmp_path: Path) -> None:
    requests = tmp_path / "many.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}]})
    requests.write_text((line + "\n") * 20_000)  # far more output than a pipe holds
    shell = f"{' '.join(CROSSOVER)} classify --classifier heuristic --input {requests} | head -n 1"
    done = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["score"] >= 0
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_serve_says_where_backends_are_and_what_to_do_when_the_local_one_is_not_there(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    config = {
        "backends": {"local": loopback_backend(port)},
        "routers": {"auto": {"local": "local", "api": "local", "classifier": "heuristic"}},
    }
    gateway = start_gateway(tmp_path, config)
    try:
        assert (
            f"backend 'local' (openai_compatible) expected at http://127.0.0.1:{port}/v1; "
            "models: discovered from its /models"
        ) in gateway.log_text()
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert f"nothing listed models at http://127.0.0.1:{port}/v1/models" in message
        assert "vllm serve MODEL" in message and "crossover serve --with-vllm MODEL" in message
    finally:
        gateway.stop()


def test_with_vllm_refuses_clearly_what_it_cannot_do(tmp_path: Path) -> None:
    def serve(base_url: str, *args: str) -> str:
        config = tmp_path / "local.yaml"
        backend = {"kind": "openai_compatible", "base_url": base_url, "discover_models": True}
        config.write_text(yaml.safe_dump({"backends": {"local": backend}}))
        done = run("serve", "--config", str(config), "--port", str(free_port()), "--with-vllm", "m", *args)
        assert done.returncode == 2
        return done.stderr

    assert "not on this machine" in serve("http://gpu-box:8000/v1")
    assert "names no port" in serve("http://127.0.0.1/v1")
    assert "cannot find the vllm executable ('/nowhere/vllm')" in serve(
        f"http://127.0.0.1:{free_port()}/v1", "--vllm-bin", "/nowhere/vllm"
    )
    assert "no backend 'gpu'" in serve(f"http://127.0.0.1:{free_port()}/v1", "--vllm-backend", "gpu")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"port {port} (backend 'local'" in serve(
            f"http://127.0.0.1:{port}/v1", "--vllm-bin", sys.executable
        )


def test_the_vllm_command_line_is_logged_without_its_api_key() -> None:
    from gateway.vllm_child import shown

    assert shown(["vllm", "serve", "m", "--api-key", "sk-1", "--api-key=sk-2", "--port", "1"]) == [
        "vllm", "serve", "m", "--api-key", "***", "--api-key=***", "--port", "1",
    ]  # fmt: skip
