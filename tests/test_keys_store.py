"""Keys and teams in the store (gateway/keys.py) and the request log's table: one contract, run on SQLite
and on a real PostgreSQL; the keyring that gateways authenticate from; the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import pytest

from gateway.config import RequestLog as RequestLogSettings
from gateway.keyring import Keyring
from gateway.keys import Key, Keys, KeyStoreError, Scope, Team, key_hash
from gateway.metrics import Metrics
from gateway.principal import Limits
from gateway.recorder import Recorder
from gateway.request_log import INSERT_SQL, RequestLog, Row, read_rows
from gateway.store import open_store
from tests.servers import ROOT
from tests.services import postgres_cluster


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "keys.sqlite")
    url: str = request.getfixturevalue("postgres")
    # a fresh schema per test on the module's cluster: drop what an earlier test made
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP SCHEMA public CASCADE")
        db.execute("CREATE SCHEMA public")
    return url


def test_keys_and_teams_lifecycle(store_url: str) -> None:
    async def main() -> None:
        keys = Keys(open_store(store_url))
        try:
            v0 = await keys.version()
            team = await keys.create_team(
                Team("eng", Scope(routers=frozenset({"auto"})), local_only=True, limits=Limits(60))
            )
            with pytest.raises(KeyStoreError, match="exists already"):
                await keys.create_team(Team("eng"))
            with pytest.raises(KeyStoreError, match="team name"):
                await keys.create_team(Team("bad name"))
            with pytest.raises(KeyStoreError, match="no team"):
                await keys.create_key(Key("", "nobody", "x"))
            key, text = await keys.create_key(
                Key(
                    "",
                    "eng",
                    "ci",
                    Scope(routers=frozenset({"auto", "other"}), backends=frozenset({"local"})),
                )
            )
            assert text.startswith("sk-cx-") and len(text) == 49
            assert await keys.version() > v0
            # stored hashed: the text is nowhere in the table
            rows = await keys.store.query("SELECT * FROM keys")
            assert text not in repr(rows) and key_hash(text) in repr(rows)

            found = await keys.principals()
            principal, expires = found[key_hash(text)]
            assert expires is None
            assert principal.key_id == key.id and principal.team == "eng" and principal.local_only
            assert principal.routers == frozenset({"auto"})  # key and team both hold
            assert principal.backends == frozenset({"local"})
            assert principal.team_limits == Limits(60)

            same, new_text = await keys.rotate_key(key.id)
            assert same.id == key.id and new_text != text
            found = await keys.principals()
            assert key_hash(text) not in found and key_hash(new_text) in found

            await keys.update_team(Team("eng", team.scope, local_only=False, limits=Limits(None, 1000)))
            principal, _ = (await keys.principals())[key_hash(new_text)]
            assert not principal.local_only and principal.team_limits == Limits(None, 1000)

            revoked = await keys.revoke_key(key.id)
            assert revoked.revoked_at is not None
            assert await keys.principals() == {}
            assert [k.id for k in await keys.keys("eng")] == [key.id]
            with pytest.raises(KeyStoreError, match="revoked"):
                await keys.rotate_key(key.id)
        finally:
            await keys.store.close()

    asyncio.run(main())


def test_keyring_sees_changes_and_expiry(store_url: str) -> None:
    async def main() -> None:
        keys = Keys(open_store(store_url))
        ring = Keyring(store_url)
        try:
            await keys.create_team(Team("t"))
            _, text = await keys.create_key(Key("", "t", "a"))
            _, old = await keys.create_key(Key("", "t", "b", expires_at=time.time() - 1))
            await ring.start()
            assert ring.find(text) is not None
            assert ring.find(old) is None  # expired
            assert ring.find("sk-cx-" + "A" * 43) is None
            assert ring.find("not-a-key") is None
            assert ring.teams() == {"t"}
            key = (await keys.keys())[0]
            await keys.revoke_key(key.id)
            deadline = time.monotonic() + 1.0
            while ring.find(text) is not None:
                assert time.monotonic() < deadline, "revocation not seen within 1 s"
                await asyncio.sleep(0.02)
        finally:
            await ring.close()
            await keys.store.close()

    asyncio.run(main())


def _row(n: int, at: float) -> Row:
    return Row(at, f"req-{n}", "key_1", "eng", "auto", "local", "score", "local", "tiny", 10, 20, 0, 0.0, 0.01,
               0.5, 0.1, "2xx", "/v1/chat/completions")  # fmt: skip


def test_request_log_batches_bounds_and_prunes(store_url: str) -> None:
    async def main() -> None:
        metrics = Metrics()
        settings = RequestLogSettings(
            store_url, retention_days=1, flush_seconds=0.05, batch_rows=3, max_queue=5
        )
        log = RequestLog(settings, Recorder(metrics))
        now = time.time()
        for n in range(7):  # the queue holds 5: two dropped
            log.add(_row(n, now - 3 * 86400 if n == 0 else now))
        assert (
            metrics.registry.get_sample_value("crossover_request_log_rows_total", {"result": "dropped"}) == 2
        )
        log.start()
        deadline = time.monotonic() + 10
        while len(rows := await read_rows(log.store)) != 4 or time.monotonic() - log._pruned_at > 60:
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.05)
        # the writer prunes as it starts (then hourly): req-0 was past retention
        assert [r.request_id for r in rows] == ["req-1", "req-2", "req-3", "req-4"]
        assert rows[0] == _row(1, now)
        await log.store.write((INSERT_SQL, [astuple(_row(8, now - 2 * 86400))]))
        await log.prune()
        assert [r.request_id for r in await read_rows(log.store)] == ["req-1", "req-2", "req-3", "req-4"]
        log.add(_row(9, now))
        await log.close()  # writes what is queued
        again = open_store(store_url)
        assert len(await read_rows(again)) == 5
        await again.close()
        assert (
            metrics.registry.get_sample_value("crossover_request_log_rows_total", {"result": "written"}) == 6
        )

    asyncio.run(main())


def test_cli_keys_and_teams(tmp_path: Path) -> None:
    store = str(tmp_path / "keys.sqlite")

    def crossover(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *args, "--store", store]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)

    made = crossover("teams", "create", "eng", "--local-only", "--rpm", "60", "--usd-per-day", "5")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["limits"]["usd_per_day"] == 5
    created = json.loads(
        crossover("keys", "create", "--team", "eng", "--name", "ci", "--models", "a,b").stdout
    )
    assert created["key"].startswith("sk-cx-") and created["models"] == ["a", "b"]
    listed = crossover("keys", "list")
    assert created["id"] in listed.stdout and created["key"] not in listed.stdout
    rotated = json.loads(crossover("keys", "rotate", created["id"]).stdout)
    assert rotated["key"] != created["key"]
    assert json.loads(crossover("keys", "revoke", created["id"]).stdout)["revoked_at"] is not None
    updated = json.loads(crossover("teams", "update", "eng", "--no-local-only").stdout)
    assert updated["local_only"] is False and updated["limits"]["requests_per_minute"] == 60
    assert [t["name"] for t in json.loads(crossover("teams", "list").stdout)] == ["eng"]
    missing = crossover("keys", "create", "--team", "nobody")
    assert missing.returncode == 2 and "no team named 'nobody'" in missing.stderr
