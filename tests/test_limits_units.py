"""Limits without servers: the config of static keys' limits, what Redis being down means for each kind
of limit, and how reset times and budget periods are told."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Sequence
from pathlib import Path

import pytest

from classifier import extract_features
from gateway.config import ConfigError, LimitsPolicy, Price, Settings, load, static_key_id
from gateway.limit_store import Budget, Correction, LocalStore, Verdict, Window
from gateway.limits import Limiter, LimitsUnavailable, RateLimited, _duration, _period_end
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal
from gateway.recorder import Recorder

BASE = "backends:\n  a:\n    kind: openai_compatible\n    base_url: http://127.0.0.1:1/v1\n    models: [{name: m}]\n"
ENV = {"K1": "sk-one-0123456789", "K2": "sk-two-0123456789"}


def load_ok(tmp_path: Path, extra: str) -> Settings:
    path = tmp_path / "g.yaml"
    path.write_text(BASE + extra)
    return load(path, ENV)


def test_static_keys_get_their_limits_and_their_teams(tmp_path: Path) -> None:
    settings = load_ok(
        tmp_path,
        "server:\n  api_keys: ['${K1}', '${K2}']\n"
        "  key_limits:\n    - {key: '${K1}', team: ml, requests_per_minute: 60, usd_per_day: 5}\n"
        "  teams:\n    ml: {tokens_per_minute: 1000, usd_per_month: 100}\n"
        "limits:\n  on_redis_down: {rate_limits: closed}\n  default_max_tokens: 256\n",
    )
    principals = settings.principals
    one = principals[ENV["K1"]]
    assert one == Principal(
        key_id=static_key_id(ENV["K1"]),
        team="ml",
        key_limits=Limits(requests_per_minute=60, usd_per_day=5.0),
        team_limits=Limits(tokens_per_minute=1000, usd_per_month=100.0),
    )
    assert one is not None and ENV["K1"] not in one.key_id
    assert principals[ENV["K2"]] == Principal(key_id=static_key_id(ENV["K2"]))  # a key without limits
    assert settings.limits == LimitsPolicy(rate_limits_open=False, budgets_open=False, default_max_tokens=256)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (
            "server:\n  api_keys: ['${K1}']\n  key_limits: [{key: '${K2}', requests_per_minute: 1}]\n",
            r"key_limits\[0\]\.key",
        ),
        (
            "server:\n  api_keys: ['${K1}']\n  key_limits: [{key: '${K1}', team: nope}]\n",
            r"key_limits\[0\]\.team",
        ),
        ("server:\n  api_keys: ['${K1}']\n  key_limits: [{key: sk-literal}]\n", r"key_limits\[0\]\.key"),
        ("server:\n  teams: {ml: {requests_per_minute: 0}}\n", r"server\.teams\.ml\.requests_per_minute"),
        ("limits:\n  on_redis_down: {budgets: maybe}\n", r"limits\.on_redis_down\.budgets"),
    ],
)
def test_bad_limits_config_names_the_key(tmp_path: Path, extra: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_ok(tmp_path, extra)


class Unreachable:
    """A store whose Redis is down: every check answers None."""

    async def check(self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict | None:
        return None

    def correct(self, correction: Correction) -> None:
        raise AssertionError("nothing was counted, so nothing is corrected")

    async def close(self) -> None:
        return None


RATED = Principal("k1", key_limits=Limits(requests_per_minute=5))
BUDGETED = Principal("k2", team="t", team_limits=Limits(usd_per_day=1.0))


@pytest.mark.parametrize(
    ("policy", "principal", "refused", "counted"),
    [
        (LimitsPolicy(), RATED, False, ("rate", "open")),
        (LimitsPolicy(), BUDGETED, True, ("budget", "closed")),
        (LimitsPolicy(rate_limits_open=False), RATED, True, ("rate", "closed")),
        (LimitsPolicy(budgets_open=True), BUDGETED, False, ("budget", "open")),
    ],
)
def test_redis_down_opens_or_closes_each_kind_by_config(
    policy: LimitsPolicy, principal: Principal, refused: bool, counted: tuple[str, str]
) -> None:
    metrics = Metrics()
    limiter = Limiter(Unreachable(), Recorder(metrics))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def admit() -> object:
        return await limiter.admit(principal, policy, lambda: extract_features(body), Price(), "openai")

    if refused:
        with pytest.raises(LimitsUnavailable) as err:
            asyncio.run(admit())
        assert err.value.status == 503 and err.value.code == "limits_unavailable"
    else:
        assert asyncio.run(admit()) is None  # admitted, nothing to settle, no headers
    kind, result = counted
    assert (
        metrics.registry.get_sample_value("crossover_limit_checks_total", {"kind": kind, "result": result})
        == 1
    )


def test_without_redis_each_process_counts_its_own() -> None:
    limiter = Limiter(LocalStore(), Recorder(Metrics()))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}

    async def burst() -> list[object]:
        measured = extract_features(body)
        calls = [
            limiter.admit(RATED, LimitsPolicy(), lambda: measured, Price(), "anthropic") for _ in range(7)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 2 and refused[0].status == 429
    assert refused[0].headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_reset_times_read_as_openai_writes_them() -> None:
    assert [_duration(ms) for ms in (0, 17, 999, 1000, 1500, 59_999, 60_000, 61_500)] == [
        "0ms", "17ms", "999ms", "1s", "1.5s", "60s", "1m0s", "1m1s",
    ]  # fmt: skip


def test_budget_periods_end_at_utc_midnight_and_month_end() -> None:
    t = calendar.timegm((2026, 12, 31, 23, 0, 0))
    assert _period_end("day", t) == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert _period_end("month", t) == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert _period_end("month", calendar.timegm((2026, 2, 10, 0, 0, 0))) == calendar.timegm(
        (2026, 3, 1, 0, 0, 0)
    )


class _Closing(LocalStore):
    """A local store that says what happened to it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def correct(self, correction: Correction) -> None:
        self.events.append("correct")
        super().correct(correction)

    async def close(self) -> None:
        self.events.append("close")


def test_a_replaced_limiter_closes_its_store_only_once_its_requests_settled() -> None:
    """After a reload replaced it, the requests it admitted are still corrected in its store, then it
    closes; a request that never settles holds the close for `wait` seconds at most."""
    measured = extract_features(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    )
    tokens = Principal(key_id="k", key_limits=Limits(tokens_per_minute=1000))

    async def run() -> tuple[list[str], list[str]]:
        store = _Closing()
        limiter = Limiter(store, Recorder(Metrics()))
        ticket = await limiter.admit(tokens, LimitsPolicy(), lambda: measured, Price(), "openai")
        assert ticket is not None
        closing = asyncio.create_task(limiter.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        ticket.settle(5, 0.0)
        await asyncio.wait_for(closing, 1)
        stuck = _Closing()
        never = Limiter(stuck, Recorder(Metrics()))
        assert await never.admit(tokens, LimitsPolicy(), lambda: measured, Price(), "openai") is not None
        await asyncio.wait_for(never.close(wait=0.05), 1)
        return store.events, stuck.events

    settled, stuck = asyncio.run(run())
    assert settled == ["correct", "close"]
    assert stuck == ["close"]
