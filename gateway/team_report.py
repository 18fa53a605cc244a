"""`crossover report --by team`: cost, all-API cost and savings per team.

Two sources, the same table:
- a gateway's /metrics (`--metrics`): the `crossover_team_*` counters since that gateway started
  (one replica's view);
- the request log (`--request-log STORE`, optionally `--since-hours H`): durable, across replicas and
  restarts, so it is the one to bill from.
A team's cost is what its requests cost (API tokens, and their share of self-hosted GPU time while
busy); the idle GPU time nobody used is the platform's, not a team's. "All-API" is what the same
requests would have cost on the baseline model (`accounting.baseline`); savings are the difference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.exposition import ExpositionError, read_exposition, read_totals
from gateway.request_log import Row, read_rows
from gateway.store import StoreError, open_store

_SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "crossover_team_requests_total": ("requests", ("team", "status_class")),
    "crossover_team_cost_usd_total": ("cost", ("team",)),
    "crossover_team_baseline_cost_usd_total": ("baseline", ("team",)),
}


class TeamReportError(Exception):
    """The report cannot be made; the message says why."""


@dataclass(frozen=True, slots=True)
class TeamLine:
    team: str
    requests: float
    failed: float  # status class 4xx or 5xx
    cost_usd: float
    baseline_usd: float

    @property
    def savings_usd(self) -> float:
        return self.baseline_usd - self.cost_usd

    @property
    def savings_share(self) -> float | None:
        return self.savings_usd / self.baseline_usd if self.baseline_usd > 0 else None

    def public(self) -> dict[str, object]:
        return {
            "team": self.team,
            "requests": self.requests,
            "failed": self.failed,
            "cost_usd": self.cost_usd,
            "all_api_usd": self.baseline_usd,
            "savings_usd": self.savings_usd,
            "savings_share": self.savings_share,
        }


def teams_from_metrics(texts: Iterable[str | bytes]) -> list[TeamLine]:
    totals: dict[tuple[str, ...], float] = {}
    for text in texts:
        try:
            values, _ = read_totals(text, _SAMPLES)
        except ExpositionError as exc:
            raise TeamReportError(str(exc)) from None
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
    requests: dict[str, float] = {}
    failed: dict[str, float] = {}
    for (short, team, *rest), value in totals.items():
        if short == "requests":
            requests[team] = requests.get(team, 0.0) + value
            if rest[0][:1] in ("4", "5"):
                failed[team] = failed.get(team, 0.0) + value
    teams = set(requests) | {k[1] for k in totals}
    return _sorted(
        TeamLine(t, requests.get(t, 0.0), failed.get(t, 0.0), totals.get(("cost", t), 0.0),
                 totals.get(("baseline", t), 0.0))
        for t in teams
    )  # fmt: skip


def teams_from_rows(rows: Iterable[Row]) -> list[TeamLine]:
    sums: dict[str, list[float]] = {}
    for row in rows:
        if row.team is None:
            continue
        line = sums.setdefault(row.team, [0.0, 0.0, 0.0, 0.0])
        line[0] += 1
        line[1] += row.status[:1] in ("4", "5")
        line[2] += row.usd or 0.0
        line[3] += row.baseline_usd or 0.0
    return _sorted(TeamLine(team, *values) for team, values in sums.items())


def _sorted(lines: Iterable[TeamLine]) -> list[TeamLine]:
    return sorted(lines, key=lambda line: (-line.cost_usd, line.team))


def render_teams(lines: list[TeamLine], source: str) -> str:
    head = f"{'team':<24} {'requests':>10} {'failed':>8} {'cost':>12} {'all-API':>12} {'savings':>12} {'':>6}"
    out = [f"Cost by team ({source})", "", head]
    for line in [*lines, _total(lines)] if lines else []:
        share = f"{line.savings_share:.0%}" if line.savings_share is not None else "n/a"
        out.append(
            f"{line.team[:24]:<24} {line.requests:>10,.0f} {line.failed:>8,.0f} {_usd(line.cost_usd):>12} "
            f"{_usd(line.baseline_usd):>12} {_usd(line.savings_usd):>12} {share:>6}"
        )
    if not lines:
        out.append("(no requests with a team's key yet)")
    return "\n".join(out) + "\n"


def _total(lines: list[TeamLine]) -> TeamLine:
    return TeamLine(
        "(all teams)",
        sum(x.requests for x in lines),
        sum(x.failed for x in lines),
        sum(x.cost_usd for x in lines),
        sum(x.baseline_usd for x in lines),
    )


def _usd(x: float) -> str:
    return f"-${-x:,.4f}" if x < 0 else f"${x:,.4f}"


def team_lines(
    metrics: str | None, request_log: str | None, since_hours: float | None
) -> tuple[list[TeamLine], str]:
    """The table's lines, and where they came from."""
    if request_log is None:
        if metrics is None:
            raise TeamReportError("pass --metrics URL_OR_FILE or --request-log STORE")
        try:
            text, _ = read_exposition(metrics)
        except ExpositionError as exc:
            raise TeamReportError(str(exc)) from None
        return teams_from_metrics([text]), f"metrics: {metrics}"
    since = time.time() - since_hours * 3600 if since_hours else 0.0

    async def rows() -> list[Row]:
        store = open_store(request_log)
        try:
            return await read_rows(store, since)
        finally:
            await store.close()

    try:
        found = asyncio.run(rows())
    except StoreError as exc:
        raise TeamReportError(str(exc)) from None
    return teams_from_rows(found), "request log" + (f", last {since_hours:g} h" if since_hours else "")
