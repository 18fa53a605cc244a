"""`crossover report`: the economics of your own traffic, from the gateway's Prometheus counters.

Three steps, the middle one pure:

    parse_exposition(text) -> Totals          the counters, summed by route
    economics(totals, period_hours, gpu_usd_per_hour, ops_usd_per_month) -> Report
    render_text(report) / render_png(report, path)

A month is 30 days: what accumulated over the period is scaled linearly to 720 hours. The self-hosted
deployment is a fixed cost (its hourly rate around the clock, plus `accounting.ops_usd_per_month`);
what it saves is the all-API (baseline) cost of the requests it serves. Self-hosting pays off from

    break-even (locally served queries/day) = (GPU cost per month + ops per month)
                                              / (30 x baseline cost of one locally served query)

Every ratio whose denominator is zero or absent is None, shown as "n/a". matplotlib is imported only
by `render_png`, so serving never needs it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config import ConfigError, gpu_usd_per_hour, parse
from gateway.exposition import ExpositionError, Key, read_exposition, read_totals
from gateway.quality import Retained, retained
from gateway.routing import PATHS

DAYS_PER_MONTH = 30
HOURS_PER_MONTH = 24 * DAYS_PER_MONTH


class ReportError(Exception):
    """The report cannot be made; the message says why and what to pass."""


# ---- step 1: the counters -------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """Cumulative values since the gateway started, summed by route (local, api, direct)."""

    requests: Mapping[str, float] = field(default_factory=dict)  # every outcome
    failed: Mapping[str, float] = field(default_factory=dict)  # status class 4xx or 5xx
    cost_usd: Mapping[str, float] = field(default_factory=dict)  # API prices + GPU share
    baseline_usd: Mapping[str, float] | None = None  # None: no sample (no baseline model priced)
    input_tokens: Mapping[str, float] = field(default_factory=dict)
    output_tokens: Mapping[str, float] = field(default_factory=dict)
    gpu_idle_usd: float = 0.0
    gpu_usd_per_hour: float | None = None  # the crossover_gpu_cost_usd_per_hour gauges, summed
    process_start: float | None = None  # process_start_time_seconds, Unix time
    verdicts: Mapping[str, float] = field(default_factory=dict)  # shadow-judged requests by verdict
    shadow_usd: float = 0.0  # what shadow judging spent


# sample name -> (short name, labels kept): what the report reads of a gateway's metrics.
_SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "crossover_requests_total": ("requests", ("route", "status_class")),
    "crossover_cost_usd_total": ("cost", ("route",)),
    "crossover_baseline_cost_usd_total": ("baseline", ("route",)),
    "crossover_tokens_total": ("tokens", ("kind", "route")),
    "crossover_gpu_idle_cost_usd_total": ("idle", ()),
    "crossover_gpu_cost_usd_per_hour": ("gpu_rate", ()),
    "crossover_start_time_seconds": ("start", ()),
    "process_start_time_seconds": ("process_start", ()),
    "crossover_shadow_judged_total": ("judged", ("verdict",)),
    "crossover_shadow_cost_usd_total": ("shadow_cost", ()),
}


def _by_route(values: Mapping[Key, float], short: str, *match: str) -> dict[str, float]:
    """{route: value} of one short name, its other kept labels equal to `match` (a prefix)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if key[0] == short and key[1 : 1 + len(match)] == match:
            out[key[-1]] = out.get(key[-1], 0.0) + value
    return out


def parse_exposition(text: str) -> Totals:
    """The counters the report needs from Prometheus exposition text (as `GET /metrics` returns it).
    Absent metrics are empty, or None where "absent" and "zero" mean different things."""
    try:
        values, present = read_totals(text, _SAMPLES)
    except ExpositionError as exc:
        raise ReportError(str(exc)) from None
    requests = {k[1]: 0.0 for k in values if k[0] == "requests"}
    failed: dict[str, float] = {}
    for (short, *labels), value in values.items():
        if short == "requests":
            requests[labels[0]] += value
            if labels[1][:1] in ("4", "5"):
                failed[labels[0]] = failed.get(labels[0], 0.0) + value
    start = values.get(("start",), values.get(("process_start",)))
    return Totals(
        requests=requests,
        failed=failed,
        cost_usd=_by_route(values, "cost"),
        baseline_usd=_by_route(values, "baseline") if "baseline" in present else None,
        input_tokens=_by_route(values, "tokens", "input"),
        output_tokens=_by_route(values, "tokens", "output"),
        gpu_idle_usd=values.get(("idle",), 0.0),
        gpu_usd_per_hour=values.get(("gpu_rate",)),
        process_start=start,
        verdicts={k[1]: v for k, v in values.items() if k[0] == "judged"},
        shadow_usd=values.get(("shadow_cost",), 0.0),
    )


# ---- step 2: the economics (pure) -----------------------------------------------------------------


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole == 0:
        return None
    return part / whole


@dataclass(frozen=True)
class RouteFigures:
    route: str
    requests: float
    failed: float
    share: float | None  # of all requests
    monthly_cost_usd: float
    monthly_baseline_usd: float | None
    input_tokens: float
    output_tokens: float


@dataclass(frozen=True)
class Report:
    period_hours: float
    requests: float
    queries_per_day: float
    routes: tuple[RouteFigures, ...]
    monthly_request_cost_usd: float  # what the requests cost (API prices + GPU share of busy time)
    monthly_gpu_idle_usd: float
    monthly_metered_usd: float  # request cost + idle GPU: everything the gateway metered
    monthly_ops_usd: float
    monthly_hybrid_usd: float  # metered + ops: what running this setup costs
    monthly_all_api_usd: float | None  # the same requests priced on the baseline API model
    savings_usd: float | None  # all-API - hybrid, per month
    savings_ratio: float | None  # of all-API
    blended_usd_per_query: float | None  # metered (idle GPU included) / requests
    gpu_usd_per_hour: float  # the whole self-hosted deployment
    monthly_gpu_usd: float  # gpu_usd_per_hour x 720 h
    gpu_idle_share: float | None  # idle cost / GPU cost over the period
    local_share: float | None  # of all requests
    local_queries_per_day: float
    baseline_usd_per_query: float | None  # all requests
    nonlocal_usd_per_query: float  # metered cost of the requests not served locally, / all requests
    baseline_usd_per_local_query: float | None  # what a locally served query would cost on the API
    breakeven_local_per_day: float | None  # locally served queries/day at which self-hosting pays off
    breakeven_per_day: float | None  # the same in all queries/day, at the measured local share
    notes: tuple[str, ...] = ()  # where the inputs came from, and anything odd in them
    quality: Retained = field(
        default_factory=lambda: Retained(0.0, 0.0)
    )  # shadow judging's verdicts on the local answers
    monthly_shadow_usd: float = 0.0  # what judging them costs, beside the metered cost

    @property
    def monthly_fixed_usd(self) -> float:
        return self.monthly_gpu_usd + self.monthly_ops_usd

    def hybrid_monthly(self, queries_per_day: float) -> float | None:
        """This setup's cost per month at this volume: the fixed GPU and ops cost, plus the requests not
        served locally at what they cost now (per query of all traffic)."""
        if self.local_share is None or self.baseline_usd_per_local_query is None:
            return None
        return self.monthly_fixed_usd + DAYS_PER_MONTH * queries_per_day * self.nonlocal_usd_per_query

    def all_api_monthly(self, queries_per_day: float) -> float | None:
        """The cost per month at this volume without self-hosting: the locally served share on the
        baseline API model instead. Equals `hybrid_monthly` at break-even."""
        hybrid = self.hybrid_monthly(queries_per_day)
        if hybrid is None or self.local_share is None or self.baseline_usd_per_local_query is None:
            return None
        local = self.local_share * self.baseline_usd_per_local_query
        return hybrid - self.monthly_fixed_usd + DAYS_PER_MONTH * queries_per_day * local


def economics(
    totals: Totals,
    period_hours: float,
    gpu_usd_per_hour: float,
    ops_usd_per_month: float,
    *,
    notes: Iterable[str] = (),
) -> Report:
    """The figures of the report. `period_hours`: how long the counters accumulated;
    `gpu_usd_per_hour`: the whole self-hosted deployment (0 if none); `ops_usd_per_month`: operating it."""
    if not period_hours > 0 or math.isinf(period_hours):
        raise ValueError(f"period_hours must be a positive number of hours, not {period_hours}")
    if gpu_usd_per_hour < 0 or ops_usd_per_month < 0:
        raise ValueError("GPU and ops costs cannot be negative")
    to_month = HOURS_PER_MONTH / period_hours
    per_day = 24 / period_hours
    notes = list(notes)

    names = [*PATHS, *sorted((set(totals.requests) | set(totals.cost_usd)) - set(PATHS))]
    requests = sum(totals.requests.values())
    base = totals.baseline_usd
    routes = tuple(
        RouteFigures(
            route=name,
            requests=totals.requests.get(name, 0.0),
            failed=totals.failed.get(name, 0.0),
            share=_ratio(totals.requests.get(name, 0.0), requests),
            monthly_cost_usd=totals.cost_usd.get(name, 0.0) * to_month,
            monthly_baseline_usd=None if base is None else base.get(name, 0.0) * to_month,
            input_tokens=totals.input_tokens.get(name, 0.0),
            output_tokens=totals.output_tokens.get(name, 0.0),
        )
        for name in names
    )
    request_cost = sum(totals.cost_usd.values())
    metered = request_cost + totals.gpu_idle_usd
    monthly_ops = ops_usd_per_month
    hybrid = metered * to_month + monthly_ops
    all_api = None if base is None else sum(base.values()) * to_month
    savings = None if all_api is None else all_api - hybrid

    gpu_over_period = gpu_usd_per_hour * period_hours
    idle_share = _ratio(totals.gpu_idle_usd, gpu_over_period)
    if idle_share is not None and idle_share > 1.0001:
        notes.append(
            f"The idle GPU cost metered ({_usd(totals.gpu_idle_usd)}) exceeds the GPU cost at "
            f"{_usd(gpu_usd_per_hour)}/h over {_hours(period_hours)}: the period or the GPU rate "
            "does not match what the gateway ran with."
        )

    local = totals.requests.get("local", 0.0)
    local_share = _ratio(local, requests)
    per_local = None if base is None else _ratio(base.get("local", 0.0), local)
    fixed = gpu_usd_per_hour * HOURS_PER_MONTH + ops_usd_per_month
    breakeven_local = None
    if fixed > 0 and per_local is not None and per_local > 0:
        breakeven_local = fixed / (DAYS_PER_MONTH * per_local)
    breakeven = _ratio(breakeven_local, local_share)
    return Report(
        period_hours=period_hours,
        requests=requests,
        queries_per_day=requests * per_day,
        routes=routes,
        monthly_request_cost_usd=request_cost * to_month,
        monthly_gpu_idle_usd=totals.gpu_idle_usd * to_month,
        monthly_metered_usd=metered * to_month,
        monthly_ops_usd=monthly_ops,
        monthly_hybrid_usd=hybrid,
        monthly_all_api_usd=all_api,
        savings_usd=savings,
        savings_ratio=_ratio(savings, all_api),
        blended_usd_per_query=_ratio(metered, requests),
        gpu_usd_per_hour=gpu_usd_per_hour,
        monthly_gpu_usd=gpu_usd_per_hour * HOURS_PER_MONTH,
        gpu_idle_share=idle_share,
        local_share=local_share,
        local_queries_per_day=local * per_day,
        baseline_usd_per_query=None if base is None else _ratio(sum(base.values()), requests),
        nonlocal_usd_per_query=_ratio(request_cost - totals.cost_usd.get("local", 0.0), requests) or 0.0,
        baseline_usd_per_local_query=per_local,
        breakeven_local_per_day=breakeven_local,
        breakeven_per_day=breakeven,
        notes=tuple(notes),
        quality=retained(totals.verdicts.items()),
        monthly_shadow_usd=totals.shadow_usd * to_month,
    )


# ---- step 3: text and chart -----------------------------------------------------------------------

NA = "n/a"


def _usd(x: float | None) -> str:
    """Dollars: cents down to ten cents, three significant digits below."""
    if x is None or math.isnan(x):
        return NA
    sign, x = ("-" if x < 0 else ""), abs(x)
    if x == 0 or x >= 0.1:
        return f"{sign}${x:,.2f}"
    decimals = min(8, max(2, 2 - math.floor(math.log10(x))))
    return f"{sign}${x:.{decimals}f}"


def _pct(x: float | None) -> str:
    return NA if x is None else f"{x * 100:.1f}%"


def _count(x: float | None) -> str:
    if x is None:
        return NA
    return f"{x:,.1f}" if abs(x) < 100 and x != round(x) else f"{x:,.0f}"


def _tokens(x: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _hours(h: float) -> str:
    if h < 1:
        return f"{h * 60:,.1f} min"
    return f"{h:,.1f} h" if h < 48 else f"{h / 24:,.1f} days"


def render_text(r: Report) -> str:
    lines = [
        f"Crossover economics: {_count(r.requests)} request{'' if r.requests == 1 else 's'} "
        f"over {_hours(r.period_hours)} "
        f"({_count(r.queries_per_day)} queries/day), scaled to a {DAYS_PER_MONTH}-day month",
        "",
    ]
    header = ("route", "requests", "share", "failed", "tokens in/out", "cost/month", "all-API/month")
    rows: list[tuple[str, ...]] = [header]
    for f in r.routes:
        rows.append(
            (
                f.route,
                _count(f.requests),
                _pct(f.share),
                _count(f.failed),
                f"{_tokens(f.input_tokens)}/{_tokens(f.output_tokens)}",
                _usd(f.monthly_cost_usd),
                _usd(f.monthly_baseline_usd),
            )
        )
    rows.append(("GPU idle", "", "", "", "", _usd(r.monthly_gpu_idle_usd), ""))
    rows.append(("ops", "", "", "", "", _usd(r.monthly_ops_usd), ""))
    failed = sum(f.failed for f in r.routes)
    rows.append(
        (
            "total",
            _count(r.requests),
            _pct(1.0 if r.requests else None),
            _count(failed),
            "",
            _usd(r.monthly_hybrid_usd),
            _usd(r.monthly_all_api_usd),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))

    def item(label: str, text: str) -> None:
        lines.append(f"{label + ':':<24}{text}")

    lines.append("")
    item(
        "Blended cost per query",
        f"{_usd(r.blended_usd_per_query)} (metered cost, idle GPU included, / requests; ops excluded)",
    )
    item(
        "All-API cost",
        f"{_usd(r.monthly_all_api_usd)}/month (the same requests priced on the baseline API model)"
        if r.monthly_all_api_usd is not None
        else f"{NA} (no crossover_baseline_cost_usd_total samples: no baseline model, or no usage yet)",
    )
    item(
        "Savings",
        NA
        if r.savings_usd is None
        else f"{_usd(r.savings_usd)}/month ({_pct(r.savings_ratio)} of all-API), ops included"
        + ("" if r.savings_usd >= 0 else ": this setup costs more than the API alone"),
    )
    item("Quality retained", quality_line(r.quality, r.monthly_shadow_usd))
    if r.gpu_usd_per_hour > 0:
        item(
            "GPU",
            f"{_usd(r.gpu_usd_per_hour)}/h = {_usd(r.monthly_gpu_usd)}/month; "
            f"idle for {_pct(r.gpu_idle_share)} of its cost over the period",
        )
    else:
        item("GPU", f"no GPU cost known (idle share {NA})")
    item("Local share", f"{_pct(r.local_share)} ({_count(r.local_queries_per_day)} local queries/day)")
    item(
        "All-API cost per query",
        f"{_usd(r.baseline_usd_per_local_query)} for a locally served one; "
        f"{_usd(r.baseline_usd_per_query)} over all requests",
    )
    lines.extend(_breakeven_lines(r))
    lines += [
        "",
        "Assumptions:",
        f"  - What accumulated over {_hours(r.period_hours)} is scaled linearly to a month of "
        f"{DAYS_PER_MONTH} days ({HOURS_PER_MONTH} h).",
        "  - The self-hosted deployment is a fixed cost: its hourly rate around the clock, busy or idle, "
        "plus ops per month.",
        f"  - When volume changes, the local share of traffic ({_pct(r.local_share)}) and the all-API cost "
        f"of a locally served query ({_usd(r.baseline_usd_per_local_query)}) stay as measured, and the "
        "deployment has the capacity for the volume; the other requests cost per query what they cost now.",
        "  - All-API: each request priced on the baseline API model with the tokens it actually used.",
        "  - Requests of every outcome are counted; failed ones usually carry no token cost.",
    ]
    if r.notes:
        lines += ["", "Inputs:", *(f"  - {n}" for n in r.notes)]
    return "\n".join(lines) + "\n"


def quality_line(q: Retained, monthly_shadow_usd: float) -> str:
    """The share of local answers judged at least as good as the API's, or why there is none."""
    if q.share is None or q.interval is None:
        return f"{NA} (no shadow-judged requests: see routers.NAME.shadow)"
    low, high = q.interval
    return (
        f"{_pct(q.share)} of local answers judged at least as good as the API's "
        f"(95% interval {_pct(low)}-{_pct(high)}, {_count(q.judged)} judged; "
        f"judging costs {_usd(monthly_shadow_usd)}/month)"
    )


def _breakeven_lines(r: Report) -> list[str]:
    label = f"{'Break-even:':<24}"
    pad = " " * len(label)
    if r.breakeven_local_per_day is None:
        if r.monthly_fixed_usd <= 0:
            why = "no GPU or ops cost known (pass --config, or configure gpu_usd_per_hour)"
        elif r.baseline_usd_per_local_query is None:
            why = "no all-API cost of locally served queries measured (no local requests, or no baseline)"
        else:
            why = "locally served queries cost nothing on the baseline model"
        return [f"{label}{NA}: {why}"]
    lines = [
        f"{label}{_count(r.breakeven_local_per_day)} locally served queries/day"
        f" = ({_usd(r.monthly_gpu_usd)} GPU + {_usd(r.monthly_ops_usd)} ops per month)"
        f" / ({DAYS_PER_MONTH} x {_usd(r.baseline_usd_per_local_query)})",
        f"{pad}= {_count(r.breakeven_per_day)} queries/day in all, at the measured local share "
        f"of {_pct(r.local_share)}",
    ]
    measured, target = r.local_queries_per_day, r.breakeven_local_per_day
    if measured >= target:
        verdict = f"above break-even ({measured / target:.1f}x): self-hosting pays off at this volume"
    else:
        verdict = (
            f"below break-even ({measured / target:.2f}x): "
            "at this volume, sending the local traffic to the API would be cheaper"
        )
    lines.append(f"{pad}measured: {_count(measured)} locally served queries/day, {verdict}")
    return lines


COLORS = {"local": "#2e7d32", "api": "#1565c0", "direct": "#6a1b9a", "GPU idle": "#9e9e9e", "ops": "#ef6c00"}


def render_png(r: Report, path: str | Path) -> None:
    """A chart: monthly cost at the measured volume (this setup by route vs all-API), and monthly cost
    against queries/day for all-API and for this setup, with the break-even point marked."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # type: ignore[import-not-found, unused-ignore]
        from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]
        from matplotlib.ticker import FuncFormatter  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ReportError(
            "the PNG chart needs matplotlib, which is not installed: "
            "pip install 'crossover[report]' (or pip install matplotlib)"
        ) from None

    def usd_ticks(x: float, _pos: Any) -> str:
        return f"${x:,.0f}" if abs(x) >= 10 or x == 0 else f"${x:,.2f}"

    fig = Figure(figsize=(13, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(
        f"Crossover economics: {_count(r.requests)} requests over {_hours(r.period_hours)}, "
        f"scaled to {DAYS_PER_MONTH} days",
        fontsize=13,
    )
    bars, lines = fig.subplots(1, 2, width_ratios=[1, 1.5])

    # Left: monthly cost at the measured volume, this setup and all-API, stacked by route.
    parts = [(f.route, f.monthly_cost_usd) for f in r.routes]
    parts += [("GPU idle", r.monthly_gpu_idle_usd), ("ops", r.monthly_ops_usd)]
    bottom = 0.0
    for name, value in parts:
        if value > 0:
            color = COLORS.get(name, "#607d8b")
            bars.bar(0, value, bottom=bottom, color=color, label=name, width=0.6)
            bottom += value
    api_bottom = 0.0
    for f in r.routes:
        if f.monthly_baseline_usd:
            color = COLORS.get(f.route, "#607d8b")
            bars.bar(1, f.monthly_baseline_usd, bottom=api_bottom, color=color, alpha=0.5, width=0.6)
            bars.bar(1, f.monthly_baseline_usd, bottom=api_bottom, fill=False, hatch="//", ec="white", lw=0)
            api_bottom += f.monthly_baseline_usd
    top = max(bottom, api_bottom) or 1.0
    for x, height, amount in ((0, bottom, r.monthly_hybrid_usd), (1, api_bottom, r.monthly_all_api_usd)):
        label = _usd(amount) if amount is not None else f"{NA}\n(no baseline cost)"
        bars.text(x, height + top * 0.01, label, ha="center", va="bottom", fontsize=10, weight="bold")
    bars.set_ylim(0, top * 1.32)
    bars.set_xticks([0, 1], ["this setup\n(metered + ops)", "all-API\n(baseline model)"])
    bars.set_xlim(-0.6, 1.6)
    bars.yaxis.set_major_formatter(FuncFormatter(usd_ticks))
    bars.set_ylabel("USD per month")
    title = f"Monthly cost at the measured {_count(r.queries_per_day)} queries/day"
    if r.savings_usd is not None:
        title += f"\nsavings {_usd(r.savings_usd)}/month ({_pct(r.savings_ratio)})"
    bars.set_title(title, fontsize=11)
    if bottom > 0:
        bars.legend(loc="upper center", ncol=5, fontsize=8, handlelength=1, columnspacing=1)
    bars.grid(axis="y", alpha=0.3)
    bars.set_axisbelow(True)

    # Right: monthly cost against volume; the lines cross at break-even.
    lines.set_xlabel(f"queries per day (local share held at {_pct(r.local_share)})")
    lines.set_ylabel("USD per month")
    lines.set_title("Monthly cost vs volume", fontsize=11)
    lines.grid(alpha=0.3)
    if r.hybrid_monthly(0) is None:
        lines.text(
            0.5,
            0.5,
            "break-even n/a\n(no local requests, or no baseline cost in the metrics)",
            ha="center",
            va="center",
            transform=lines.transAxes,
        )
    else:
        span = max(r.queries_per_day, r.breakeven_per_day or 0.0) * 1.6 or 100.0
        xs = [span * i / 200 for i in range(201)]
        lines.plot(
            xs,
            [r.all_api_monthly(x) or 0.0 for x in xs],
            color=COLORS["api"],
            ls="--",
            label="all-API (the local share on the baseline model)",
        )
        lines.plot(
            xs,
            [r.hybrid_monthly(x) or 0.0 for x in xs],
            color=COLORS["local"],
            label=f"self-hosted + API ({_usd(r.monthly_fixed_usd)}/month GPU + ops)",
        )
        if r.requests:
            lines.axvline(r.queries_per_day, color="#424242", ls=":", lw=1)
            lines.plot(
                [r.queries_per_day],
                [r.monthly_hybrid_usd],
                "o",
                color=COLORS["local"],
                label="measured (metered + ops)",
            )
        if r.breakeven_per_day is not None:
            y = r.hybrid_monthly(r.breakeven_per_day) or 0.0
            lines.plot([r.breakeven_per_day], [y], "D", color="#c62828", ms=9, label="break-even")
            lines.annotate(
                f"break-even: {_count(r.breakeven_per_day)} queries/day\n"
                f"({_count(r.breakeven_local_per_day)} served locally), {_usd(y)}/month",
                (r.breakeven_per_day, y),
                xytext=(10, -34),
                textcoords="offset points",
                color="#c62828",
                fontsize=9,
            )
        lines.set_xlim(0, span)
        lines.set_ylim(bottom=0)
        lines.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:,.0f}"))
        lines.yaxis.set_major_formatter(FuncFormatter(usd_ticks))
        lines.legend(loc="upper left", fontsize=9)
    fig.savefig(path, format="png")


# ---- the command ----------------------------------------------------------------------------------


def config_costs(path: str | Path) -> tuple[float, float, str | None]:
    """(GPU USD per hour of every self-hosted deployment, summed; ops USD per month; baseline) from a
    config file. Only the file is read: secrets named in it need not be set to make a report."""
    path = Path(path)
    try:
        spec = parse(yaml.safe_load(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the config: {exc.strerror}") from None
    except (yaml.YAMLError, ConfigError) as exc:
        raise ReportError(f"{path}: invalid config: {exc}") from None
    gpu = sum(gpu_usd_per_hour(b) for b in spec.backends.values())
    baseline = spec.accounting.baseline
    if baseline is None and spec.routers:
        baseline = next(iter(spec.routers.values())).api
    return gpu, spec.accounting.ops_usd_per_month, baseline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        metavar="URL_OR_FILE",
        help="a gateway's /metrics URL (http://127.0.0.1:4000/metrics), or a saved exposition text file",
    )
    parser.add_argument(
        "--by",
        choices=["team"],
        help="team: cost, all-API cost and savings per team (gateway/team_report.py)",
    )
    parser.add_argument(
        "--request-log", metavar="STORE", help="--by team from the request log (SQLite file or URL)"
    )
    parser.add_argument(
        "--since-hours", type=float, metavar="H", help="--by team --request-log: the last H hours"
    )
    parser.add_argument(
        "--period-hours",
        type=float,
        metavar="H",
        help="how long the counters accumulated (default: since process_start_time_seconds, if exported)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the gateway's config: GPU cost and accounting.ops_usd_per_month "
        "(default: the GPU cost the gateway exports, no ops cost)",
    )
    parser.add_argument("--png", metavar="PATH", help="also write a chart to this PNG file")


def make_report(
    metrics: str, period_hours: float | None = None, config: str | None = None, now: float | None = None
) -> Report:
    try:
        text, taken = read_exposition(metrics)
    except ExpositionError as exc:
        raise ReportError(str(exc)) from None
    totals = parse_exposition(text)
    notes = [f"metrics: {metrics}"]
    if period_hours is not None:
        if not (period_hours > 0 and math.isfinite(period_hours)):
            raise ReportError(f"--period-hours must be a positive number of hours, not {period_hours}")
        notes.append(f"period: {_hours(period_hours)} (--period-hours)")
    elif totals.process_start is not None:
        is_url = metrics.startswith(("http://", "https://"))
        period_hours = ((taken if now is None else now) - totals.process_start) / 3600
        if period_hours <= 0:
            raise ReportError("process_start_time_seconds is in the future; pass --period-hours")
        when = "now" if is_url or now is not None else "the file's modification time"
        notes.append(f"period: {_hours(period_hours)} (from process_start_time_seconds to {when})")
    else:
        raise ReportError(
            "the metrics do not say how long they accumulated (no process_start_time_seconds): "
            "pass --period-hours, e.g. the gateway's uptime in hours"
        )
    gauge = totals.gpu_usd_per_hour
    if config is not None:
        gpu, ops, baseline = config_costs(config)
        notes.append(f"GPU and ops cost: {config} ({_usd(gpu)}/h, {_usd(ops)}/month ops)")
        if baseline is not None:
            notes.append(f"baseline model (all-API): {baseline}")
        if gauge is not None and abs(gauge - gpu) > 1e-9:
            notes.append(f"the gateway metered its GPU cost at {_usd(gauge)}/h, not {_usd(gpu)}/h")
    else:
        gpu, ops = gauge or 0.0, 0.0
        source = "crossover_gpu_cost_usd_per_hour" if gauge is not None else "none exported"
        notes.append(f"GPU cost: {_usd(gpu)}/h ({source}); ops cost: $0 (pass --config for both)")
    return economics(totals, period_hours, gpu, ops, notes=notes)


def run(args: argparse.Namespace) -> int:
    """`crossover report`: the text to stdout, the chart to --png."""
    if args.by == "team":
        return _team_report(args)
    try:
        if args.metrics is None:
            raise ReportError("--metrics URL_OR_FILE is required")
        report = make_report(args.metrics, args.period_hours, args.config)
        if args.png:
            render_png(report, args.png)
    except ReportError as exc:
        print(f"crossover report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing the PNG
        print(f"crossover report: {args.png}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_text(report))
    if args.png:
        print(f"\nChart: {args.png}")
    return 0


def _team_report(args: argparse.Namespace) -> int:
    from gateway.team_report import TeamReportError, render_teams, team_lines

    try:
        lines, source = team_lines(args.metrics, args.request_log, args.since_hours)
    except (ReportError, TeamReportError) as exc:
        print(f"crossover report: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_teams(lines, source))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crossover report", description="The economics of your traffic.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
