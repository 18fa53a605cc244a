"""The gateway's own CPU time per request for its metrics: what one answered, routed, non-streamed
request records (`Recorder.decided` and `Recorder.answered`, and the in-flight gauge's +1/-1), as the
request path calls them, with the values a request of bench/crossover.yaml carries. Scrapes are not
timed: they fold what requests recorded (gateway/metrics.py).

    python3 -P bench/recorder_cpu.py [--requests 200000] [--team]
"""

from __future__ import annotations

import argparse
import time

from gateway.config import ModelEntry, Price, Target
from gateway.metrics import Metrics
from gateway.recorder import Outcome, Recorder
from gateway.routing import Decision
from providers.base import Usage

PRICE = Price(0.15e-6, 0.075e-6, 0.6e-6)
DECISION = Decision("api", Target("api", "gpt-4o-mini"), Target("local", "llama"), "score", 0.7, 0.5)


def outcome(team: str | None) -> Outcome:
    return Outcome(
        decision=DECISION,
        backend="api",
        model=ModelEntry("gpt-4o-mini", "gpt-4o-mini", PRICE),
        stream=False,
        status_class="2xx",
        seconds=0.0042,
        overhead=0.00031,
        usage=Usage(24, 16),
        gpu_usd=0.0,
        baseline=Price(2.5e-6, 1.25e-6, 10e-6),
        team=team,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--team", action="store_true", help="as with keys on: the team's counters too")
    args = parser.parse_args()
    metrics = Metrics()
    recorder = Recorder(metrics)
    o = outcome("bench" if args.team else None)
    for _ in range(2):  # the first round warms the label caches
        cpu = time.process_time()
        for _ in range(args.requests):
            recorder.serving(+1)
            recorder.decided("auto", DECISION, 0.00004)
            recorder.answered(o)
            recorder.serving(-1)
        cpu = time.process_time() - cpu
    scrape = time.process_time()
    metrics.render()
    scrape = time.process_time() - scrape
    print(
        f"{cpu / args.requests * 1e6:.2f} us of CPU per request; a scrape after them: {scrape * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
