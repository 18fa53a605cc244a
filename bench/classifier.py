"""How long scoring takes: feature extraction plus score(), per classifier, on one CPU.

    python bench/classifier.py [--data ../shared/data/routing] [--cpu 0]

Prompts are MMLU-Pro questions from the routing data (each call a different one, so the learned
classifier's word cache warms as it would on real traffic, not on one repeated prompt): a typical
question as it is; and "8k-token" prompts of ~32,000 characters (questions concatenated; ~4 characters
a token), as one user turn and as a 16-turn conversation. Prints a Markdown table of p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifier import extract_features, load_classifier

EIGHT_K_TOKENS_CHARS = 32_000


def questions(data: Path) -> list[str]:
    with gzip.open(data / "mmlu_pro_outcomes.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    letters = "ABCDEFGHIJ"
    return [
        r["question"] + "\n\nOptions:\n" + "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(r["options"]))
        for r in rows
    ]


def long_text(rng: random.Random, pool: list[str]) -> str:
    parts: list[str] = []
    size = 0
    while size < EIGHT_K_TOKENS_CHARS:
        parts.append(rng.choice(pool))
        size += len(parts[-1]) + 2
    return "\n\n".join(parts)[:EIGHT_K_TOKENS_CHARS]


def workloads(pool: list[str], rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    typical = [{"messages": [{"role": "user", "content": q}]} for q in rng.sample(pool, 3000)]
    one_turn = [{"messages": [{"role": "user", "content": long_text(rng, pool)}]} for _ in range(300)]
    conversation = []
    for _ in range(300):
        text = long_text(rng, pool)
        step = len(text) // 16
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": text[i * step : (i + 1) * step]}
            for i in range(16)
        ]
        messages.append({"role": "user", "content": rng.choice(pool)})
        conversation.append({"messages": messages})
    return {
        "typical (MMLU-Pro question)": typical,
        "8k tokens, one turn": one_turn,
        "8k tokens, 16 turns": conversation,
    }


def measure(name: str, requests: list[dict[str, Any]]) -> list[float]:
    classifier = load_classifier(name)
    classifier.score(extract_features(requests[0]))  # load the artifact outside the timing
    times = []
    for request in requests:
        started = time.perf_counter_ns()
        classifier.score(extract_features(request))
        times.append((time.perf_counter_ns() - started) / 1e6)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "routing"
    )
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    rng = random.Random(20240701)
    loads = workloads(questions(args.data), rng)
    print("| classifier | prompt | mean chars | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for name in ("heuristic", "learned-v1", "learned-v2"):
        for label, requests in loads.items():
            times = sorted(measure(name, requests))
            chars = statistics.mean(extract_features(r).total_chars for r in requests)
            p50 = times[len(times) // 2]
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"| {name} | {label} | {chars:,.0f} | {p50:.3f} | {p99:.3f} | {times[-1]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
