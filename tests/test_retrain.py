"""Learning from judged outcomes: `crossover classifier train|eval --outcomes STORE` on a real SQLite
store filled with synthetic outcomes whose truth is known.

The synthetic deployment: its local model writes poorly (a request for a poem, a story, an essay... is
judged `api_better`, or now and then `both_bad`) and does everything else as well as the API (math,
code, facts: `tie` or `local_better`), with 10% of the verdicts flipped, as a judge errs. The public
data teaches the opposite emphasis (reasoning and code are where small models fail), so the shipped
artifact ranks these outcomes badly, and retraining on them must fix that.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from classifier import extract_features, load_classifier
from classifier.boosted import BoostedClassifier
from classifier.cues import CUE_NAMES, cue_map
from classifier.measures import auroc
from gateway.config import ConfigError, load
from gateway.store import Judged, open_store
from tests.test_store import crossover, row

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="retraining needs the `train` extra",
)

TOPICS = (
    "the sea", "autumn", "a lighthouse keeper", "trains", "my grandmother's kitchen", "the moon landing",
    "a lost dog", "winter in Oslo", "coffee", "a robot learning to paint", "the first day of school",
    "rain on a tin roof", "an old bicycle", "the desert at night", "a chess match", "friendship",
)  # fmt: skip
WRITING = (
    "Write a short poem about {t}.",
    "Write a story about {t} for children.",
    "Compose a haiku sequence about {t}.",
    "Draft an essay on {t}, about 300 words.",
    "Create a limerick about {t}.",
    "Generate a bedtime story featuring {t}.",
)
OTHER = (
    "Calculate {a} * {b} and explain each step.",
    "Solve for x: {a}x + {b} = {c}. Show your work step by step.",
    "Implement a Python function that returns the {a}th Fibonacci number.",
    "Why does the algorithm run in O(n log n)? Prove it for n = {a}.",
    "What is {a} + {b}?",
    "In SQL, how do I select the {a} largest rows of a table?",
    "How many primes are there below {c}?",
    "Fix this code:\n```python\ndef f(x):\n    return x * {a}\n```",
)


SHIPPED = BoostedClassifier()  # what the synthetic deployment routed with


def synthetic(n: int, seed: int) -> list[tuple[dict[str, object], str]]:
    """n (request, verdict) pairs of the synthetic deployment."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        writing = rng.random() < 0.4
        template = rng.choice(WRITING if writing else OTHER)
        text = template.format(
            t=rng.choice(TOPICS), a=rng.randint(2, 99), b=rng.randint(2, 99), c=rng.randint(100, 999)
        )
        if rng.random() < 0.3:
            text = "Some context first. " * rng.randint(1, 40) + text
        needs_api = writing != (rng.random() < 0.1)  # the judge errs one time in ten
        if needs_api:
            verdict = "both_bad" if rng.random() < 0.2 else "api_better"
        else:
            verdict = "local_better" if rng.random() < 0.3 else "tie"
        out.append(({"messages": [{"role": "user", "content": text}]}, verdict))
    return out


def judged(n: int, request: dict[str, object], verdict: str, keep_prompt: bool) -> Judged:
    """The row shadow judging writes: cues always, the prompt only when kept."""
    features = extract_features(request)
    prompt = json.dumps(request) if keep_prompt else None
    return replace(row(n, SHIPPED.score(features), verdict, prompt), features=json.dumps(cue_map(features)))


async def fill(path: Path, outcomes: list[tuple[dict[str, object], str]], keep_prompts: bool) -> None:
    store = open_store(str(path))
    try:
        for n, (request, verdict) in enumerate(outcomes):
            await store.add(judged(n, request, verdict, keep_prompts and n % 2 == 0))
        await store.rows()  # an empty store is still created and migrated
    finally:
        await store.close()


def held_out_auroc(classifier: BoostedClassifier, outcomes: list[tuple[dict[str, object], str]]) -> float:
    scores = [classifier.score(extract_features(request)) for request, _ in outcomes]
    labels = [verdict in ("api_better", "both_bad") for _, verdict in outcomes]
    return auroc(np.array(scores), np.array(labels))


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 judged outcomes (half of them with the prompt kept), retrained on by the command."""
    home = tmp_path_factory.mktemp("retrain")
    asyncio.run(fill(home / "outcomes.sqlite", synthetic(400, seed=1), keep_prompts=True))
    result = crossover(
        "classifier", "train", "--outcomes", str(home / "outcomes.sqlite"), "--out", str(home / "mine")
    )
    assert result.returncode == 0, result.stderr
    assert "trees added to the prior's" in result.stdout and f"learned:{home / 'mine'}" in result.stdout
    return home / "mine"


def test_retraining_on_outcomes_moves_the_auroc_up(retrained: Path) -> None:
    held = synthetic(400, seed=2)
    before = held_out_auroc(BoostedClassifier(), held)
    after = held_out_auroc(BoostedClassifier(retrained), held)
    # 400 held-out outcomes, ~170 of them needing the API: an AUROC's standard error is under 0.03
    # here (Hanley-McNeil), so 0.3 is ten of them (measured: 0.25 -> 0.90).
    assert after >= before + 0.3, (before, after)
    assert after >= 0.8  # the truth is one cue, but one verdict in ten is flipped: 0.89 is the ceiling
    meta = json.loads((retrained / "model.json").read_text())["meta"]
    assert meta["outcomes"]["n"] == 400 and meta["outcomes"]["trees_added"] > 0


def test_a_retrained_artifact_is_a_classifier_by_path(retrained: Path) -> None:
    by_folder = load_classifier(f"learned:{retrained}")
    by_file = load_classifier(f"learned-v2:{retrained / 'model.json'}")
    features = extract_features({"messages": [{"role": "user", "content": "Write a poem about rain."}]})
    assert (
        by_folder.score(features) == by_file.score(features) == BoostedClassifier(retrained).score(features)
    )
    with pytest.raises(ValueError, match="no learned-v2 artifact"):
        load_classifier(f"learned:{retrained / 'missing'}")
    # explained like the shipped one: the new trees' terms add up to the logit too
    served = BoostedClassifier(retrained)
    total = sum(v for _, v in served.explain(features)) + served.load().explain_offset
    assert total == pytest.approx(served.logit(features), abs=1e-9)


def test_a_router_takes_the_retrained_artifact_by_path(retrained: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "crossover.yaml"
    text = (
        "backends:\n"
        "  local: {kind: openai_compatible, base_url: 'http://127.0.0.1:1/v1', models: [{name: m}]}\n"
        "routers:\n"
        "  auto: {classifier: 'learned:CLASSIFIER', local: local, api: local/m}\n"
    )
    cfg.write_text(text.replace("CLASSIFIER", str(retrained)))
    artifact = json.loads((retrained / "model.json").read_text())
    assert load(cfg).routers["auto"].threshold == artifact["default_threshold"]  # the artifact's own
    cfg.write_text(text.replace("CLASSIFIER", str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"routers\.auto.*no learned-v2 artifact"):
        load(cfg)


def test_export_writes_the_cues_and_the_training_label(retrained: Path) -> None:
    result = crossover("outcomes", "export", "--store", str(retrained.parent / "outcomes.sqlite"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 400 and all(len(line["cues"]) == len(CUE_NAMES) for line in lines)
    assert {line["verdict"]: line["label"] for line in lines} == {
        "api_better": 1, "both_bad": 1, "tie": 0, "local_better": 0,
    }  # fmt: skip


def test_eval_on_outcomes_prints_the_table(retrained: Path, tmp_path: Path) -> None:
    store = tmp_path / "held.sqlite"
    asyncio.run(fill(store, synthetic(300, seed=3), keep_prompts=False))
    mine = f"learned:{retrained}"
    result = crossover(
        "classifier", "eval", "--outcomes", str(store), "--classifier", mine, "--classifier", "learned",
        "--classifier", "heuristic", "--bootstrap", "100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "| held out | method | APGR | CPT(50%) | CPT(80%) | AUROC |"
    methods = [line.split(" | ")[1] for line in lines[2:]]
    assert methods == [mine, "learned", "served", "length", "random", f"{mine} - learned", f"{mine} - length"]
    assert "left out: heuristic: reads prompts, not kept for every outcome" in result.stderr
    auroc_of = {line.split(" | ")[1]: float(line.split(" | ")[5].split()[0]) for line in lines[2:7]}
    assert auroc_of[mine] > auroc_of["learned"] + 0.3
    assert auroc_of["served"] == pytest.approx(auroc_of["learned"], abs=1e-6)  # the rows logged learned's


def test_a_store_without_judged_outcomes_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    asyncio.run(fill(empty, [], keep_prompts=False))
    for action in ("train", "eval"):
        result = crossover("classifier", action, "--outcomes", str(empty))
        assert result.returncode == 2
        assert result.stderr == f"crossover classifier {action}: no judged outcomes in {empty}\n"
    missing = crossover("classifier", "train", "--outcomes", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 2 and missing.stderr.startswith(
        "crossover classifier train: no outcome store"
    )
    shipped = crossover(
        "classifier", "train", "--outcomes", str(empty), "--out", "classifier/models/learned-v2"
    )
    assert shipped.returncode == 2 and "shipped artifact" in shipped.stderr
