"""Every labelled source in ../shared/data/routing, read into one shape, and the rules that turn its
outcomes, grades and votes into a "needs the strong model" label.

Every per-model result is read on one scale, a quality in 0..1 (a right answer is 1, a GPT-4 grade of
7/10 is 0.7), so a label rule is a function of qualities and the rules stay comparable across sources. Human votes have no per-model quality; a battle between a weak-tier and a
strong-tier model is read directly as one comparison.

The decisions, each measured by leave-one-family-out (`crossover classifier eval --ablations`; the
figures are in classifier/models/learned-v2/MODEL_CARD.md):

- Models: several weak (self-hostable, 7B-13B) and strong models per source (RULES). More models give a
  less noisy estimate of "a small model is not enough here" than one pair does.
- Label (`weak_fails`, the one learned-v2 ships with): the share of the weak models that failed the
  prompt (wrong, under half marks, a grade under 5/10). The alternative (`label`): the share of
  (weak, strong) pairs in which the strong model did better by the source's margin (0/1 outcomes need
  a flip; grades MARGIN_RATING, 3 of 10). It transferred worse: where both fail, the request is hard
  for the local model all the same.
- Votes: for a battle between the weak and the strong tier, the strong model winning is 1 in both
  labels; "both bad" is 1 for `weak_fails` (the weak one failed) and 0 for the pair label.
- Families: the unit held out by the evaluation. A family is one publisher's collection, so prompts
  written and graded the same way never sit on both sides of a split.
- Evaluation pairs: one (weak, strong) pair per family, whose per-prompt results the metrics use.

GSM8K train has no outcomes, so it gives no label and is not used for fitting.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.features import Features, extract_features

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"
SEED = 20240701
TEST_SHARE = 0.2

MARGIN_BINARY = 0.5  # 0 -> 1
MARGIN_RATING = 0.3  # 3 points of 10


@dataclass(frozen=True, slots=True)
class PairRule:
    """Which models of a source are weak, which strong, and which one pair the evaluation reports."""

    weak: tuple[str, ...]
    strong: tuple[str, ...]
    eval_weak: str
    eval_strong: str
    margin: float


# The evaluation pair of each family is the product's setup where the source has it (Llama-3.1-8B vs
# GPT-4o on MMLU-Pro), RouteLLM's pair (Mixtral-8x7B vs GPT-4-1106) where it exists, and otherwise the
# source's 8B model against its strongest one.
RULES: dict[str, PairRule] = {
    "mmlu_pro": PairRule(
        weak=("llama-3.1-8b-instruct", "mistral-7b-instruct-v0.2"),
        strong=("gpt-4o-2024-05-13", "gemini-1.5-pro-002"),
        eval_weak="llama-3.1-8b-instruct",
        eval_strong="gpt-4o-2024-05-13",
        margin=MARGIN_BINARY,
    ),
    "routerbench": PairRule(
        weak=("mistralai/mistral-7b-chat", "WizardLM/WizardLM-13B-V1.2", "mistralai/mixtral-8x7b-chat"),
        strong=("gpt-4-1106-preview",),
        eval_weak="mistralai/mixtral-8x7b-chat",
        eval_strong="gpt-4-1106-preview",
        margin=MARGIN_BINARY,
    ),
    "llmrouter": PairRule(
        weak=("llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct-v0.3", "gemma-2-9b-it"),
        strong=("llama-3.1-nemotron-51b-instruct", "llama-3.3-nemotron-super-49b-v1"),
        eval_weak="llama-3.1-8b-instruct",
        eval_strong="llama-3.1-nemotron-51b-instruct",
        margin=MARGIN_BINARY,
    ),
    "arena": PairRule(
        weak=(
            "Mistral-7B-Instruct-v0.1",
            "Starling-LM-7B-alpha",
            "openchat_3.5",
            "Mixtral-8x7B-Instruct-v0.1",
        ),
        strong=("gpt-4-1106-preview", "gpt-4-0314"),
        eval_weak="Mixtral-8x7B-Instruct-v0.1",
        eval_strong="gpt-4-1106-preview",
        margin=MARGIN_RATING,
    ),
}

# Arena battles: 2023 models, tiered by size and by the Arena leaderboard of the time. Mid-sized open
# models (30-70B) and PaLM-2 sit in neither tier, and battles inside one tier say nothing about the gap.
STRONG_TIER = frozenset({"gpt-4", "claude-1", "claude-2", "claude-instant-1", "gpt-3.5-turbo"})
WEAK_TIER = frozenset(
    {
        "vicuna-13b", "koala-13b", "oasst-pythia-12b", "RWKV-4-Raven-14B", "vicuna-7b", "chatglm-6b",
        "alpaca-13b", "mpt-7b-chat", "fastchat-t5-3b", "dolly-v2-12b", "wizardlm-13b",
        "stablelm-tuned-alpha-7b", "gpt4all-13b-snoozy", "llama-13b", "llama-2-13b-chat",
        "llama-2-7b-chat", "chatglm2-6b",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    family: str  # the unit of leave-one-out: mmlu_pro, routerbench, llmrouter, arena
    source: str  # the task inside the family (e.g. llmrouter/math)
    messages: tuple[tuple[str, str], ...]  # (role, text)
    label: float  # share of the family's (weak, strong) comparisons that the strong model won
    comparisons: int
    weak_fails: float  # the alternative label: share of the weak models that failed (below half marks)
    eval_weak: float | None = None  # the evaluation pair's qualities, when both were measured
    eval_strong: float | None = None

    def features(self) -> Features:
        return extract_features({"messages": [{"role": r, "content": t} for r, t in self.messages]})

    @property
    def test(self) -> bool:
        return is_test(self.id)


def is_test(example_id: str, seed: int = SEED) -> bool:
    """The in-distribution split: by a hash of the id, never by file order (as learned-v1)."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_SHARE


def pair_label(qualities: dict[str, float], rule: PairRule) -> tuple[float, int]:
    """(share of pairs where the strong model beats the weak one by the margin, pairs counted)."""
    wins = 0
    count = 0
    for weak in rule.weak:
        for strong in rule.strong:
            if weak in qualities and strong in qualities:
                count += 1
                wins += qualities[strong] - qualities[weak] >= rule.margin - 1e-9
    return (wins / count if count else 0.0), count


def weak_failure(qualities: dict[str, float], rule: PairRule) -> float:
    failed = [qualities[w] < 0.5 for w in rule.weak if w in qualities]
    return sum(failed) / len(failed) if failed else 0.0


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _literal(value: Any) -> Any:
    # The published files hold some fields as Python reprs of lists and dicts.
    return ast.literal_eval(value) if isinstance(value, str) else value


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(m.get("role", "user")), str(m.get("content", ""))) for m in _literal(value))


def mmlu_prompt(question: str, options: Sequence[str]) -> str:
    """The question as a user would send it: the stem, then lettered options (as learned-v1)."""
    letters = "ABCDEFGHIJKLMNOP"
    lines = [f"{letters[i]}. {option}" for i, option in enumerate(options)]
    return question.strip() + "\n\nOptions:\n" + "\n".join(lines)


def _example(
    family: str, source: str, row_id: str, messages: tuple[tuple[str, str], ...], qualities: dict[str, float]
) -> Example | None:
    rule = RULES[family]
    label, count = pair_label(qualities, rule)
    if not count:
        return None
    return Example(
        # MMLU-Pro keeps its own ids, so that the in-distribution split is learned-v1's question for question
        id=row_id if family == "mmlu_pro" else f"{family}:{row_id}",
        family=family,
        source=source,
        messages=messages,
        label=label,
        comparisons=count,
        weak_fails=weak_failure(qualities, rule),
        eval_weak=qualities.get(rule.eval_weak),
        eval_strong=qualities.get(rule.eval_strong),
    )


def load_mmlu_pro(data: Path) -> list[Example]:
    out = []
    for row in _rows(data / "mmlu_pro_outcomes.jsonl.gz"):
        if str(row["src"]).startswith("ori_mmlu"):  # kept for independent evaluation
            continue
        qualities = {m: float(bool(v)) for m, v in row["correct"].items()}
        text = mmlu_prompt(row["question"], row["options"])
        source = "mmlu_pro/" + str(row["src"]).split("-", 1)[0]
        example = _example("mmlu_pro", source, str(row["id"]), (("user", text),), qualities)
        if example:
            out.append(example)
    return out


def load_outcomes(data: Path, filename: str, family: str, scale: float = 1.0) -> list[Example]:
    """The shared shape of RouterBench, LLMRouter and Arena-bench rows (`outcomes` per model)."""
    out = []
    for row in _rows(data / filename):
        qualities = {m: float(v) / scale for m, v in _literal(row["outcomes"]).items() if v is not None}
        example = _example(family, str(row["source"]), str(row["id"]), _messages(row["messages"]), qualities)
        if example:
            out.append(example)
    return out


def load_battles(data: Path) -> list[Example]:
    """One example per battle between the weak and the strong tier; no evaluation pair (votes only)."""
    out = []
    for row in _rows(data / "arena_battles.jsonl.gz"):
        a, b, winner = row["model_a"], row["model_b"], row["winner"]
        if a in STRONG_TIER and b in WEAK_TIER:
            strong_side = "model_a"
        elif b in STRONG_TIER and a in WEAK_TIER:
            strong_side = "model_b"
        else:
            continue
        out.append(
            Example(
                id=f"arena:battle:{row['id']}",
                family="arena",
                source="arena/battles",
                messages=_messages(row["messages"]),
                label=1.0 if winner == strong_side else 0.0,
                comparisons=1,
                weak_fails=1.0 if winner in (strong_side, "tie (bothbad)") else 0.0,
            )
        )
    return out


def load_all(data: Path = DEFAULT_DATA) -> list[Example]:
    return (
        load_mmlu_pro(data)
        + load_outcomes(data, "routerbench_subset.jsonl.gz", "routerbench")
        + load_outcomes(data, "llmrouter_outcomes.jsonl.gz", "llmrouter")
        + load_outcomes(data, "arena_bench_ratings.jsonl.gz", "arena", scale=10.0)
        + load_battles(data)
    )


FAMILIES = ("arena", "llmrouter", "mmlu_pro", "routerbench")
