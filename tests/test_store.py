"""The outcome store: one contract, run on SQLite and on a real PostgreSQL (a cluster of its own, started
here with initdb and pg_ctl on a free loopback port); the export and quality calibration on top."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import openai
import pytest
import yaml

import gateway.learn
import gateway.store.postgres
import gateway.store.sqlite
from classifier import extract_features
from classifier.cues import cue_map, cue_vector
from gateway.quality import quality_threshold, wilson
from gateway.store import MIGRATIONS, Judged, open_store
from tests.conftest import SIM_KEY
from tests.servers import ROOT, Server, start_gateway, start_openai_sim
from tests.services import postgres_cluster
from tests.test_shadow import KEYS, config, wait_for


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


def row(n: int, score: float | None = 0.5, verdict: str = "tie", prompt: str | None = None) -> Judged:
    return Judged(
        id=f"id-{n}",
        at=1_700_000_000.0 + n,
        router="auto",
        classifier="heuristic",
        classifier_version=None,
        score=score,
        threshold=0.4,
        route="local",
        local_model="tiny",
        api_model="gpt-4o",
        verdict=verdict,
        verdict_local_first=verdict,
        verdict_api_first=verdict,
        judge="openai/gpt-4o",
        local_usd=0.0,
        api_usd=0.001 * n,
        judge_usd=0.0002,
        local_input_tokens=10,
        local_output_tokens=20,
        api_input_tokens=10,
        api_output_tokens=30 + n,
        prompt_sha256="ab" * 32,
        prompt=prompt,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "new" / "outcomes.sqlite")
    return _database(request.getfixturevalue("postgres"))


def _database(base: str) -> str:
    """A new database in the cluster: a test's own, its migrations starting from nothing."""
    name = f"t{os.urandom(4).hex()}"
    import psycopg

    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


async def test_rows_come_back_as_written_whatever_the_store(url: str) -> None:
    store = open_store(url)
    written = [row(n, prompt='{"messages": []}' if n % 2 else None) for n in range(20)]
    await asyncio.gather(*(store.add(r) for r in written))  # concurrent writers
    assert sorted(await store.rows(), key=lambda r: r.at) == written
    await store.close()
    again = open_store(url)  # a second gateway (or a restart) finds them, migrations already applied
    assert len(await again.rows()) == 20
    await again.close()


async def test_migrations_are_versioned_and_each_applied_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(url)
    await store.add(row(1))
    await store.close()
    newer = (*MIGRATIONS, ("ALTER TABLE outcomes ADD COLUMN note TEXT",))
    for module in (gateway.store.sqlite, gateway.store.postgres):
        monkeypatch.setattr(module, "MIGRATIONS", newer)
    for _ in range(2):  # applied on the first open only: a second ALTER would fail
        store = open_store(url)
        assert [r.id for r in await store.rows()] == ["id-1"]
        await store.close()
    versions = _versions(url)
    assert versions == list(range(1, len(newer) + 1))


def _versions(url: str) -> list[int]:
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as db:
            return [int(v) for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]
    import sqlite3

    with sqlite3.connect(url) as db:
        return [int(v) for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]


def test_a_gateway_with_two_workers_judges_into_postgres(postgres: str, tmp_path: Path) -> None:
    sim = start_openai_sim(tmp_path, SIM_KEY)
    gw: Server | None = None
    settings = config(sim.url, tmp_path / "unused")  # the SQLite tests' config, the store aside
    settings["routers"]["auto"]["shadow"]["store"] = postgres
    try:
        gw = start_gateway(tmp_path, settings, workers=2, env={"SIM_OPENAI_KEY": SIM_KEY, **KEYS})
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["K_ALL"], max_retries=0)
        for n in range(4):
            c.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"truth:api pg {n}"}]
            )
        wait_for(gw, "auto", 4)
    finally:
        if gw is not None:
            gw.stop()
        sim.stop()
    found = asyncio.run(_rows(postgres))
    assert sorted(json.loads(r.prompt or "{}")["messages"][0]["content"] for r in found) == [
        f"truth:api pg {n}" for n in range(4)
    ]
    assert {r.verdict for r in found} == {"api_better"}


async def _rows(url: str) -> list[Judged]:
    store = open_store(url)
    try:
        return await store.rows()
    finally:
        await store.close()


def crossover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def test_export_writes_the_training_format(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    store = open_store(str(path))
    prompt = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    asyncio.run(_add(store, [row(1, 0.2, "api_better", prompt), row(2, 0.3, "tie")]))
    result = crossover("outcomes", "export", "--store", str(path))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert (lines[0]["label"], lines[0]["score"], lines[0]["verdicts"]) == (
        1,
        0.2,
        ["api_better", "api_better"],
    )
    assert "messages" not in lines[1] and lines[1]["label"] == 0  # its prompt was not stored
    missing = crossover("outcomes", "export", "--store", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 2 and "no outcome store" in missing.stderr


async def _add(store: object, rows: list[Judged]) -> None:
    assert hasattr(store, "add") and hasattr(store, "close")
    for r in rows:
        await store.add(r)
    await store.close()


# A table worked by hand: ten judged requests, scores 0.05 ... 0.95; the local answer lost at 0.35,
# 0.65 and 0.85 (api_better), kept elsewhere. At a threshold t, requests scoring >= t go to the API.
#   t = 1.0: all local, 3 lost -> 70%     t = 0.85: 2 lost (0.35, 0.65) -> 80%, 20% to the API
#   t = 0.65: 1 lost (0.35) -> 90%, 40% to the API     t = 0.35: none lost -> 100%, 70% to the API
TABLE = [
    (0.05, "tie"),
    (0.15, "local_better"),
    (0.25, "tie"),
    (0.35, "api_better"),
    (0.45, "tie"),
    (0.55, "tie"),
    (0.65, "api_better"),
    (0.75, "local_better"),
    (0.85, "api_better"),
    (0.95, "tie"),
]


@pytest.mark.parametrize(
    ("target", "threshold", "share"), [(0.9, 0.65, 0.4), (0.95, 0.35, 0.7), (0.8, 0.85, 0.2)]
)
def test_the_quality_target_picks_the_hand_computed_threshold(
    target: float, threshold: float, share: float
) -> None:
    points = [(score, verdict in ("tie", "local_better"), 1.0) for score, verdict in TABLE]
    choice = quality_threshold(points, target)
    assert choice is not None
    assert (choice.threshold, choice.api_share) == (threshold, pytest.approx(share))
    assert choice.api_spend_share == pytest.approx(share)  # every API answer cost the same here


def test_wilson_interval_matches_a_hand_computation() -> None:
    # p = 0.9, n = 10, z = 1.96: centre (0.9 + 0.19208) / 1.38416, half 1.96 * sqrt(0.009 + 0.009604) / 1.38416
    low, high = wilson(9, 10)
    assert (low, high) == (pytest.approx(0.5958, abs=1e-4), pytest.approx(0.9821, abs=1e-4))


def test_calibrate_by_quality_target_prints_and_writes_it(tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    asyncio.run(_add(open_store(str(store)), [row(n, s, v) for n, (s, v) in enumerate(TABLE)]))
    cfg = tmp_path / "crossover.yaml"
    cfg.write_text(
        "backends:\n"
        "  local: {kind: openai_compatible, base_url: 'http://127.0.0.1:1/v1', models: [{name: m}]}\n"
        "routers:\n"
        "  auto:\n"
        "    classifier: heuristic\n"
        "    threshold: 0.5\n"
        "    local: local\n"
        "    api: local/m\n"
    )
    result = crossover(
        "calibrate", "--quality-target", "0.9", "--outcomes", str(store), "--config", str(cfg), "--write"
    )
    assert result.returncode == 0, result.stderr
    assert "estimated: threshold 0.6500 keeps 90.0% of all-API quality" in result.stdout
    assert "40.0% of requests" in result.stdout
    assert "sure (95%): none" in result.stdout  # ten outcomes are too few to be sure of 90%
    assert yaml.safe_load(cfg.read_text())["routers"]["auto"]["threshold"] == 0.65
    unsure = crossover("calibrate", "--quality-target", "0.9", "--outcomes", str(store), "--sure")
    assert unsure.returncode == 2 and "nothing written" in unsure.stderr
    empty = crossover("calibrate", "--quality-target", "0.9")
    assert empty.returncode == 2 and "--outcomes" in empty.stderr


def test_learning_reads_judged_outcomes_from_postgres(postgres: str) -> None:
    url = _database(postgres)
    asked = extract_features({"messages": [{"role": "user", "content": "Write a poem about rain."}]})
    cues = json.dumps(cue_map(asked))
    verdicts = ("api_better", "tie", "both_bad", "local_better")
    rows = [replace(row(n, 0.3, v), features=cues) for n, v in enumerate(verdicts)]
    rows.append(row(9, 0.3, "api_better"))  # neither cues nor a prompt: left out
    asyncio.run(_add(open_store(url), rows))
    found = gateway.learn.outcomes(url, "auto")
    assert [(o.needs_api, o.local, o.api) for o in found] == [(1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 1, 0)]
    assert all(o.cues == pytest.approx(cue_vector(asked)) and o.score == 0.3 for o in found)
