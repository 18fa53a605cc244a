"""`crossover classify` and `crossover calibrate` over a JSONL traffic log, run as the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load
from gateway.tools import quantile_threshold

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


def test_bad_lines_are_named() -> None:
    result = crossover("classify", stdin=json.dumps(EASY) + "\n{oops\n")
    assert result.returncode == 2
    assert "line 2: not JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_quantile_threshold_hits_the_share() -> None:
    scores = [i / 100 for i in range(100)]
    threshold = quantile_threshold(scores, 0.3)
    assert sum(s >= threshold for s in scores) == 30
    assert sum(s >= quantile_threshold(scores, 1.0) for s in scores) == 100
    assert sum(s >= quantile_threshold(scores, 0.0) for s in scores) == 0


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
