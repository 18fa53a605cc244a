"""learned-v2: its label rules, the served trees and their explanations, the shipped artifact, and the
evaluation protocol's command."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier import Explainer, extract_features, load_classifier
from classifier.boosted import DEFAULT_ARTIFACT, LEAF, BoostedClassifier, Tree
from classifier.cues import CUE_NAMES, cue_vector
from classifier.sources import RULES, PairRule, pair_label, weak_failure

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


def features(content: str, **extra: object) -> object:
    return extract_features({"messages": [{"role": "user", "content": content}], **extra})


def test_a_pair_label_needs_the_strong_model_to_win_by_the_margin() -> None:
    rule = PairRule(weak=("w1", "w2"), strong=("s",), eval_weak="w1", eval_strong="s", margin=0.3)
    assert pair_label({"w1": 0.2, "w2": 0.6, "s": 0.8}, rule) == (0.5, 2)  # +0.6 counts, +0.2 does not
    assert pair_label({"w1": 0.2, "s": 0.5}, rule) == (1.0, 1)  # exactly the margin counts; w2 unmeasured
    assert pair_label({"w1": 0.2}, rule) == (0.0, 0)  # no pair measured: no label
    assert weak_failure({"w1": 0.2, "w2": 0.6, "s": 0.8}, rule) == 0.5


def test_every_family_names_distinct_weak_and_strong_models() -> None:
    for rule in RULES.values():
        assert not set(rule.weak) & set(rule.strong)
        assert rule.eval_weak in rule.weak and rule.eval_strong in rule.strong


def test_a_tree_walks_left_at_or_below_the_threshold_and_charges_each_split() -> None:
    # root splits cue 0 at 1.0; its right child splits cue 2 at 5.0
    tree = Tree(
        feature=(0, LEAF, 2, LEAF, LEAF),
        threshold=(1.0, 0.0, 5.0, 0.0, 0.0),
        left=(1, -1, 3, -1, -1),
        right=(2, -1, 4, -1, -1),
        value=(0.0, -0.5, 0.25, 0.1, 0.4),
    )
    assert tree.predict([1.0, 0.0, 9.0]) == -0.5
    assert tree.predict([1.5, 0.0, 5.0]) == 0.1
    moves = [0.0, 0.0, 0.0]
    tree.path_terms([2.0, 0.0, 9.0], moves)
    assert moves == [0.25, 0.0, 0.15000000000000002]  # root -> right (+0.25), then -> right (+0.15)
    assert sum(moves) == pytest.approx(tree.predict([2.0, 0.0, 9.0]) - tree.value[0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1, max_value=50, allow_nan=False),
        min_size=len(CUE_NAMES),
        max_size=len(CUE_NAMES),
    )
)
def test_the_compiled_trees_add_up_what_walking_them_gives(x: list[float]) -> None:
    model = BoostedClassifier().load()
    assert model.tree_sum(x) == pytest.approx(sum(tree.predict(x) for tree in model.trees), abs=1e-12)


def test_cues_are_finite_and_in_order() -> None:
    x = cue_vector(features("Write a Python function that proves $x^2 \\ge 0$?\nA. yes\nB. no\nC. maybe"))
    assert len(x) == len(CUE_NAMES) and all(math.isfinite(v) for v in x)
    named = dict(zip(CUE_NAMES, x, strict=True))
    assert named["creation_words"] >= 1 and named["code_words"] >= 2 and named["has_options"] == 1.0
    assert named["questions"] == 1.0 and named["latex_marks"] >= 1


@settings(max_examples=150, deadline=None)
@given(
    st.text(max_size=400),
    st.integers(min_value=1, max_value=4),
    st.booleans(),
    st.sampled_from(["text", "json_object", "json_schema"]),
)
def test_scores_are_probabilities_and_explanations_add_up_to_the_logit(
    text: str, turns: int, tools: bool, response_format: str
) -> None:
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": text}] * turns,
        "response_format": {"type": response_format},
    }
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "f"}}]
    f = extract_features(body)
    classifier = BoostedClassifier()
    score = classifier.score(f)
    assert 0.0 <= score <= 1.0 and math.isfinite(score)
    z = classifier.load().explain_offset + sum(v for _, v in classifier.explain(f))
    assert z == pytest.approx(classifier.logit(f), abs=1e-9)


def test_registered_by_name_with_an_explanation_and_its_own_threshold() -> None:
    classifier = load_classifier("learned-v2")
    assert isinstance(classifier, BoostedClassifier) and isinstance(classifier, Explainer)
    assert 0.0 < classifier.default_threshold < 1.0
    hard = features("Prove that the integral of exp(-x^2) over the real line is sqrt(pi). " * 3)
    easy = features("hi, what's the capital of France?")
    assert classifier.score(hard) > classifier.score(easy)
    # learned-v2 is the default, `learned`; learned-v1 stays reachable by name
    assert load_classifier("learned").score(easy) == classifier.score(easy)
    assert load_classifier("learned-v1").score(easy) != classifier.score(easy)


def test_serving_needs_the_standard_library_only() -> None:
    code = (
        "import sys\n"
        "from classifier import extract_features\n"
        "from classifier.boosted import BoostedClassifier\n"
        "BoostedClassifier().score(extract_features({'prompt': 'x'}))\n"
        "assert 'numpy' not in sys.modules and 'sklearn' not in sys.modules, sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_artifact_is_small_and_documented() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_ARTIFACT.iterdir() if p.is_file())
    assert size < 5_000_000
    card = (DEFAULT_ARTIFACT / "MODEL_CARD.md").read_text(encoding="utf-8")
    for needed in (
        "leave one source family out",
        "In distribution",
        "APGR",
        "weak",
        "crossover classifier eval",
    ):
        assert needed in card


@pytest.mark.skipif(
    not DATA.exists() or not HAS_SKLEARN, reason="needs ../shared/data/routing and the train extra"
)
def test_training_reproduces_the_artifact_byte_for_byte(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "classifier", "train", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.json").read_bytes() == (DEFAULT_ARTIFACT / "model.json").read_bytes()


@pytest.mark.skipif(
    not DATA.exists() or not HAS_SKLEARN, reason="needs ../shared/data/routing and the train extra"
)
def test_eval_command_prints_both_tables_and_writes_the_plot(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "classifier",
            "eval",
            "--bootstrap",
            "20",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "(a) leave one source family out" in result.stdout and "(b) in distribution" in result.stdout
    assert (
        "| mmlu_pro held-out split (n=1066) | learned-v1 | 0.578" in result.stdout
    )  # learned-v1's own figure
    report = json.loads((tmp_path / "eval.json").read_text())
    families = [k for k in report["leave_one_family_out"] if k != "average"]
    assert len(families) == 4
    average = report["leave_one_family_out"]["average"]
    difference = average["learned-v2 - length"]["APGR"]
    assert difference == pytest.approx(average["learned-v2"]["APGR"] - average["length"]["APGR"])
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
