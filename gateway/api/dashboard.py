"""`GET /dashboard`: one self-contained HTML page (inline CSS and JS, no external assets) for users
without Grafana, and `GET /dashboard/summary.json`, the figures it polls.

The figures come from `Metrics.render()`, so they are the same across workers. Like /metrics, both
are open even when `server.api_keys` is set: they carry only aggregates (by route, never a backend,
model, key or request). The history for "last hour" lives on the GatewayState, created on first use;
each summary request adds a snapshot to it (at most one per 30 s).
"""

from __future__ import annotations

import time
from importlib import resources

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.dashboard import History, snapshot, summary
from gateway.state import GatewayState

STARTED = time.monotonic()  # when this worker imported the app: its gateway's start, near enough
_HISTORY = "dashboard_history"  # attribute on the GatewayState
_page: bytes | None = None


def _html() -> bytes:
    global _page
    if _page is None:
        _page = resources.files("gateway").joinpath("static/dashboard.html").read_bytes()
    return _page


def history_of(state: GatewayState) -> History:
    history = getattr(state, _HISTORY, None)
    if not isinstance(history, History):
        history = History(STARTED)
        setattr(state, _HISTORY, history)
    return history


async def page(request: Request) -> Response:
    return Response(_html(), media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})


async def summary_json(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    history = history_of(state)
    now = snapshot(state.metrics.render(), time.monotonic())
    body = summary(now, history)
    history.record(now)
    return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})
