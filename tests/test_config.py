"""The config is strict: each problem stops start-up with a message naming its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, build, embedded_default, load, parse

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OPENAI_API_KEY": "sk-test"}


def minimal() -> dict[str, Any]:
    return {
        "backends": {
            "local": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:8000/v1",
                "models": [{"name": "llama"}],
            },
            "openai": {
                "kind": "openai_compatible",
                "base_url": "https://api.openai.com/v1",
                "api_key": "${OPENAI_API_KEY}",
                "models": [{"name": "gpt-4o", "price": {"usd_per_million_input_tokens": 2.5}}],
            },
        },
        "routers": {"auto": {"local": "local", "api": "openai/gpt-4o", "threshold": 0.4}},
    }


def error_for(data: dict[str, Any], env: dict[str, str] = ENV) -> str:
    with pytest.raises(ConfigError) as info:
        build(parse(data), env)
    return str(info.value)


def test_minimal_config_builds_runtime_settings() -> None:
    settings = build(parse(minimal()), ENV)
    assert settings.backends["openai"].api_key == "sk-test"
    assert settings.backends["openai"].models[0].price.input == pytest.approx(2.5e-6)
    # Cached input defaults to the input price, not to zero.
    assert settings.backends["openai"].models[0].price.cached_input == pytest.approx(2.5e-6)
    router = settings.routers["auto"]
    assert (router.local.backend, router.local.model, router.api.model, router.threshold) == (
        "local",
        None,
        "gpt-4o",
        0.4,
    )


def test_unknown_key_names_its_path() -> None:
    data = minimal()
    data["routers"]["auto"]["treshold"] = 0.3
    assert error_for(data) == "routers.auto.treshold: unknown key"


def test_missing_secret_names_its_path() -> None:
    assert (
        error_for(minimal(), env={})
        == "backends.openai.api_key: environment variable OPENAI_API_KEY is not set"
    )


def test_secret_written_in_the_file_is_refused() -> None:
    data = minimal()
    data["backends"]["openai"]["api_key"] = "sk-live-123"
    message = error_for(data)
    assert message.startswith("backends.openai.api_key: secrets are not written in the file")
    assert "sk-live-123" not in message


def test_a_key_or_header_that_would_split_a_backend_request_is_refused_by_its_path() -> None:
    # A secret mounted from a file often ends with a newline; sent, it would split the request's head.
    message = error_for(minimal(), env={"OPENAI_API_KEY": "sk-test-secret\n"})
    assert message.startswith("backends.openai.api_key: holds a line break")
    assert "sk-test-secret" not in message
    data = minimal()
    data["backends"]["openai"]["headers"] = {"x-team": "${TEAM}"}
    assert error_for(data, {**ENV, "TEAM": "a\r\nx-evil: 1"}).startswith(
        "backends.openai.headers.x-team: holds"
    )
    data["backends"]["openai"]["headers"] = {"x team": "a"}
    assert error_for(data) == "backends.openai.headers: 'x team' is not an HTTP header name"


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "high"])
def test_threshold_outside_unit_interval(threshold: object) -> None:
    data = minimal()
    data["routers"]["auto"]["threshold"] = threshold
    assert error_for(data).startswith("routers.auto.threshold: ")


def test_target_naming_no_backend() -> None:
    data = minimal()
    data["routers"]["auto"]["api"] = "anthropic/claude"
    assert (
        error_for(data) == "routers.auto.api: 'anthropic/claude' names no backend (backends: local, openai)"
    )


def test_target_naming_no_model_of_its_backend() -> None:
    data = minimal()
    data["routers"]["auto"]["api"] = "openai/gpt-5"
    assert error_for(data) == "routers.auto.api: backend 'openai' declares no model 'gpt-5'"


def test_threshold_defaults_to_the_classifiers_own() -> None:
    from classifier import load_classifier

    data = minimal()
    del data["routers"]["auto"]["threshold"]
    router = build(parse(data), ENV).routers["auto"]
    assert (router.classifier, router.threshold) == ("learned", load_classifier("learned").default_threshold)
    data["routers"]["auto"]["classifier"] = "heuristic"
    assert build(parse(data), ENV).routers["auto"].threshold == 0.5
    data["routers"]["auto"]["classifier"] = "json:loads"  # a factory that fails without arguments
    assert "routers.auto.classifier: cannot build 'json:loads'" in error_for(data)
    data["routers"]["auto"]["classifier"] = "json:JSONDecoder"  # a class without default_threshold:
    assert build(parse(data), ENV).routers["auto"].threshold == 0.5  # not even built to find out


def test_unknown_classifier_and_kind() -> None:
    data = minimal()
    data["routers"]["auto"]["classifier"] = "magic"
    assert error_for(data).startswith("routers.auto.classifier: unknown classifier 'magic'")
    data = minimal()
    data["backends"]["local"]["kind"] = "tgi"
    assert error_for(data).startswith("backends.local.kind: ")


def test_several_problems_are_reported_together() -> None:
    data = minimal()
    data["backends"]["local"]["base_url"] = "ftp://x"
    data["routers"]["auto"]["threshold"] = 2
    message = error_for(data)
    assert "backends.local.base_url" in message
    assert "routers.auto.threshold" in message


def test_embedded_default_follows_the_environment() -> None:
    settings = embedded_default(
        {
            "CROSSOVER_LOCAL_BASE_URL": "http://10.0.0.5:8000/v1",
            "OPENAI_API_KEY": "k",
            "CROSSOVER_API_MODEL": "gpt-4o-mini",
        }
    )
    assert settings.backends["local"].base_url == "http://10.0.0.5:8000/v1"
    assert settings.backends["local"].discover_models
    assert settings.backends["openai"].base_url == "https://api.openai.com/v1"
    assert settings.routers["auto"].api.model == "gpt-4o-mini"
    pinned = embedded_default({"CROSSOVER_LOCAL_MODEL": "qwen"})
    assert [m.name for m in pinned.backends["local"].models] == ["qwen"]
    assert pinned.backends["openai"].api_key is None  # no key: start anyway, the API route will say why


def test_example_config_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    example = ROOT / "examples" / "crossover.yaml"
    settings = load(
        example,
        env={
            "OPENAI_API_KEY": "k",
            "VLLM_API_KEY": "v",
            "CROSSOVER_TEAM_KEY": "t",
            "CROSSOVER_LOCAL_ONLY_KEY": "l",
            "CROSSOVER_RESIDENT_KEY": "r",
            "ANTHROPIC_API_KEY": "a",
        },
    )
    assert settings.routers
    text = example.read_text()
    from gateway import config as c

    for model in (
        c.ServerSpec,
        c.KeyScopeSpec,
        *c.SPECS.values(),
        c.ModelSpec,
        c.PriceSpec,
        c.TimeoutSpec,
        c.CircuitBreakerSpec,
        c.RetriesSpec,
        c.SpillWhenSpec,
        c.RouterSpec,
        c.RuleSpec,
        c.RuleWhenSpec,
        c.ShadowSpec,
        c.RequestLogSpec,
        c.KeyLimitsSpec,
        c.LimitsPolicySpec,
        c.OnRedisDownSpec,
    ):
        for key in model.model_fields:
            assert f"{key}:" in text, f"examples/crossover.yaml does not document {model.__name__}.{key}"


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        env={"OPENAI_API_KEY": "k", "PATH": "/usr/bin"},
    )


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    result = run_check(good)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    bad = tmp_path / "bad.yaml"
    data = minimal()
    data["routers"]["auto"]["local"] = "nowhere"
    bad.write_text(yaml.safe_dump(data))
    result = run_check(bad)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "crossover: invalid config: routers.auto.local: 'nowhere' names no backend (backends: local, openai)"
    )
    assert "Traceback" not in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("backends: [unclosed")
    result = run_check(broken)
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr


def test_serve_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "backends: " in result.stderr
