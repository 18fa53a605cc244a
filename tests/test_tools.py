"""`crossover classify` and `crossover calibrate` over a JSONL traffic log, run as the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load
from gateway.online_threshold import threshold_for

CONFIG = """\
# a comment that must survive --write
backends:
  local: {kind: openai_compatible, base_url: "http://127.0.0.1:8000/v1", models: [{name: llama}]}
  openai: {kind: openai_compatible, base_url: "http://127.0.0.1:9/v1", models: [{name: gpt-4o}]}
routers:
  auto:
    local: local
    api: openai/gpt-4o
    threshold: 0.5   # tuned by hand
"""
RULES = """\
    rules:
      - name: tools
        when: {tools: true}
        route: api
"""
EASY = {"messages": [{"role": "user", "content": "hi"}]}
HARD = {
    "messages": [{"role": "user", "content": "Prove step by step and implement def f(x): return x**2 " * 6}]
}


def crossover(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_classify_scores_and_routes_each_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    lines = "\n".join(json.dumps(r) for r in (EASY, {"model": "auto", **HARD}, {"prompt": "2+2?"})) + "\n"
    plain = crossover("classify", stdin=lines)
    assert plain.returncode == 0, plain.stderr
    scores = [json.loads(line)["score"] for line in plain.stdout.splitlines()]
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    assert scores[0] < 0.5 <= scores[1]
    routed = crossover("classify", "--config", str(config), stdin=lines)
    assert [json.loads(line)["route"] for line in routed.stdout.splitlines()] == ["local", "api", "local"]


def test_classify_applies_rules_and_explains(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG + RULES)
    tools = {**EASY, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    lines = "".join(json.dumps(r) + "\n" for r in (EASY, tools))
    result = crossover("classify", "--config", str(config), "--explain", "3", stdin=lines)
    assert result.returncode == 0, result.stderr
    easy, pinned = (json.loads(line) for line in result.stdout.splitlines())
    assert (easy["route"], "rule" in easy) == ("local", False)
    assert (pinned["route"], pinned["rule"]) == ("api", "tools")
    assert len(easy["top"]) == 3 and all(isinstance(v, float) for _, v in easy["top"])


def test_calibrate_counts_requests_rules_pin_to_the_api(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG + RULES)
    tool = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    requests = [{"messages": [{"role": "user", "content": "q " * (5 * i)}]} for i in range(80)]
    requests += [{"messages": [{"role": "user", "content": "hi"}], "tools": tool}] * 20
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("".join(json.dumps(r) + "\n" for r in requests))
    result = crossover(
        "calibrate", "--target-api-share", "0.3", "--input", str(traffic), "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    # 20 of 100 are pinned to the API, so the score sends 10 of the other 80: 30% in all.
    assert "30.0% of 100 requests to the API, 20 of them pinned by rules" in result.stdout


@pytest.mark.parametrize("action", ["train", "eval"])
def test_classifier_commands_name_missing_data(tmp_path: Path, action: str) -> None:
    result = crossover("classifier", action, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert f"crossover classifier {action}: {tmp_path / 'nowhere'}" in result.stderr
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_lines_are_named() -> None:
    result = crossover("classify", stdin=json.dumps(EASY) + "\n{oops\n")
    assert result.returncode == 2
    assert "line 2: not JSON" in result.stderr
    assert "Traceback" not in result.stderr
    negative = crossover("classify", "--explain", "-1", stdin=json.dumps(EASY) + "\n")
    assert (negative.returncode, negative.stderr.strip()) == (
        2,
        "crossover classify: --explain must be 0 or more",
    )


def test_threshold_for_sends_exactly_the_asked_count() -> None:
    scores = [i / 100 for i in range(100)]
    for count in (0, 1, 30, 99, 100, 150):
        assert sum(s >= threshold_for(scores, count) for s in scores) == min(count, 100)
    ties = [0.2, 0.5, 0.5, 0.5, 0.9]  # equal scores go the same way: 1 or 4 can go, not 2
    assert threshold_for(ties, 2) == 0.9  # 1 is nearer 2 than 4 is
    assert threshold_for(ties, 3) == 0.5  # 4 is nearer 3 than 1 is
    assert threshold_for([0.7] * 10, 3) > 0.7  # nothing rather than everything
    assert threshold_for([0.7] * 10, 6) == 0.7
    assert threshold_for([0.3, 1.0], 0) > 1.0  # a score of exactly 1.0 stays local too


def test_calibrate_writes_the_threshold_keeping_comments(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    traffic = tmp_path / "traffic.jsonl"
    prompts = ["question " + "word " * (10 * i) + "explain why" * (i % 2) for i in range(50)]
    traffic.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts)
    )
    result = crossover(
        "calibrate", "--target-api-share", "0.3", "--input", str(traffic), "--config", str(config), "--write"
    )
    assert result.returncode == 0, result.stderr
    share = float(result.stdout.split("% of")[0].split(": ")[1]) / 100
    assert share == pytest.approx(0.3, abs=0.021)  # distinct scores: within one request of 30%
    text = config.read_text()
    assert "# a comment that must survive --write" in text and "# tuned by hand" in text
    assert load(config).routers["auto"].threshold == float(result.stdout.split()[1].rstrip(":"))
    assert crossover("calibrate", "--target-api-share", "2", stdin="").returncode == 2
    # A router without a threshold line (its classifier's default) gets one.
    config.write_text(CONFIG.replace("    threshold: 0.5   # tuned by hand\n", ""))
    result = crossover(
        "calibrate", "--target-api-share", "0.3", "--input", str(traffic), "--config", str(config), "--write"
    )
    assert result.returncode == 0, result.stderr
    assert load(config).routers["auto"].threshold == float(result.stdout.split()[1].rstrip(":"))
