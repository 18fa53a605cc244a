"""The learned classifier: RouteLLM's metric arithmetic, the committed artifact, and its routing quality."""

from __future__ import annotations

import json
import math
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from classifier import extract_features, load_classifier
from classifier.learned import DEFAULT_ARTIFACT, LearnedClassifier, _normalise_slow, pre_tokenize, tokenize
from classifier.measures import apgr, auroc, call_performance, cpt, metrics, paired_bootstrap

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"


def _perfect_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Ten questions: the local model gets 0-5 right, the API model all ten; the router ranks the four
    # questions only the API solves (6-9) highest.
    scores = np.arange(10) / 10
    weak = np.arange(10) < 6
    strong = np.ones(10, dtype=bool)
    return scores, weak, strong


def test_call_performance_curve_of_a_perfect_router() -> None:
    curve = call_performance(*_perfect_case())
    assert np.allclose(curve.thresholds, np.linspace(0, 0.9, 11))
    assert np.allclose(curve.strong_pct, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert np.allclose(curve.accuracy, [60, 70, 80, 90, 100, 100, 100, 100, 100, 100, 100])
    assert (curve.weak_accuracy, curve.strong_accuracy) == (60.0, 100.0)


def test_apgr_and_cpt_of_a_perfect_router() -> None:
    curve = call_performance(*_perfect_case())
    # Area above the weak line: 0.4 * 40 / 2 (the ramp) + 0.6 * 40 (the plateau) = 32 of 40.
    assert apgr(curve) == pytest.approx(0.8)
    assert cpt(curve, 0.5) == pytest.approx(20.0)  # 80% accuracy is reached at 2 calls of 10
    assert cpt(curve, 0.8) == pytest.approx(32.0)  # 92%: between 30% (90) and 40% (100)


def test_a_reversed_router_is_below_random() -> None:
    scores, weak, strong = _perfect_case()
    worst = metrics(-scores, weak, strong)
    assert worst.apgr == pytest.approx(0.2)
    assert worst.auroc == 0.0


def test_random_router_apgr_is_about_half() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    weak = rng.random(n) < 0.45
    strong = rng.random(n) < 0.75
    m = metrics(rng.random(n), weak, strong)
    assert m.apgr == pytest.approx(0.5, abs=0.02)
    assert m.cpt50 == pytest.approx(50.0, abs=3.0)
    assert m.cpt80 == pytest.approx(80.0, abs=3.0)
    assert m.auroc == pytest.approx(0.5, abs=0.02)


def test_paired_bootstrap_of_a_method_against_itself_is_zero_and_a_better_one_is_positive() -> None:
    rng = np.random.default_rng(4)
    n = 600
    weak = rng.random(n) < 0.5
    strong = weak | (rng.random(n) < 0.6)
    label = (~weak) & strong
    good = label + rng.random(n)  # ranks every needed call first: a near-perfect router
    noise = rng.random(n)
    point, (lo, hi) = paired_bootstrap(noise, noise, weak, strong, reps=200)
    assert np.all(point == 0) and np.all(lo == 0) and np.all(hi == 0)
    point, (lo, hi) = paired_bootstrap(good, noise, weak, strong, reps=200)
    assert point[0] > 0.2 and lo[0] > 0.1  # APGR up, interval clear of zero
    assert point[3] > 0.3 and lo[3] > 0.2  # AUROC up


def test_auroc_counts_ties_as_half() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)


def test_quantile_thresholds_refuse_heavy_ties_as_pd_qcut_does() -> None:
    with pytest.raises(ValueError, match="ties"):
        call_performance(np.array([0.0] * 8 + [1.0] * 2), np.zeros(10, bool), np.ones(10, bool))


@pytest.mark.parametrize(
    "request_body",
    [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": []},
        {"prompt": "def f(x):\n    return x ** 2\n" * 50, "max_tokens": 4000},
        {
            "messages": [{"role": "user", "content": "Résumé naïve 你好 😀 \u200b x\u00b2 \u222b"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_schema", "json_schema": {}},
        },
        {"messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational. " * 400}]},
    ],
)
def test_artifact_loads_and_scores_in_unit_interval(request_body: dict[str, object]) -> None:
    score = LearnedClassifier().score(extract_features(request_body))
    assert 0.0 <= score <= 1.0 and math.isfinite(score)


def test_artifact_is_small_and_documented() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_ARTIFACT.iterdir() if p.is_file())
    assert size < 3_000_000
    card = (DEFAULT_ARTIFACT / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "llama-3.1-8b-instruct" in card and "gpt-4o-2024-05-13" in card and "APGR" in card


def test_loads_by_module_attribute() -> None:
    classifier = load_classifier("classifier.learned:LearnedClassifier")
    assert 0.0 <= classifier.score(extract_features({"messages": [{"role": "user", "content": "x"}]})) <= 1.0


def test_ascii_fast_path_matches_the_unicode_path() -> None:
    rng = np.random.default_rng(3)
    alphabet = string.printable
    for _ in range(300):
        text = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 60))
        assert pre_tokenize(text) == _normalise_slow(text)


def test_mixed_unicode_takes_the_slow_path_word_by_word_with_the_same_result() -> None:
    rng = np.random.default_rng(5)
    alphabet = (
        string.printable
        + "\u00e9\u00ef\u00df\u0130\u03b1\u03a3\u2211\u222b\u2264\u00a0\u3000\u4e2d\u6587\u201c\u201d\u2014\u00b7\u0301"
    )
    for _ in range(500):
        text = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 80))
        assert pre_tokenize(text) == _normalise_slow(text), repr(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cf", "Cs")), max_size=60))
@example("foo\x85bar")  # NEL, a C1 control: dropped, not a space
@example("\u039f\u0394\u039f\u03a3\x85x\ufffd")
def test_fast_pre_tokenizer_equals_the_unicode_path_on_any_text(text: str) -> None:
    # Format characters (Cf) are the one documented exception: next to a capital sigma they change
    # which lower-case sigma Python picks.
    assert pre_tokenize(text) == _normalise_slow(text)


def test_wordpiece_splits_and_drops_unknowns() -> None:
    model = LearnedClassifier().load()
    vocab = model.vocab
    ids = tokenize("Hello, naïve WORLD!", vocab)
    inverse = {i: t for t, i in vocab.items()}
    assert [inverse[i] for i in ids] == ["hello", ",", "naive", "world", "!"]
    assert tokenize("a" * 101, vocab) == []


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data/routing is not beside the project")
def test_learned_beats_length_and_random_on_the_held_out_split() -> None:
    from classifier.train_v1 import DEFAULT_API, DEFAULT_LOCAL, load_examples, split

    _, test = split(load_examples(DATA, DEFAULT_LOCAL, DEFAULT_API))
    assert len(test) > 900
    weak = np.array([e.local_correct for e in test])
    strong = np.array([e.api_correct for e in test])
    learned = LearnedClassifier()
    feats = [e.features() for e in test]
    learned_m = metrics(np.array([learned.score(f) for f in feats]), weak, strong)
    tiebreak = np.random.default_rng(0).random(len(test)) * 1e-3
    length_m = metrics(np.array([float(f.total_chars) for f in feats]) + tiebreak, weak, strong)
    assert learned_m.apgr > length_m.apgr + 0.05
    assert learned_m.auroc > length_m.auroc + 0.08
    assert learned_m.auroc > 0.58
    assert learned_m.cpt50 < length_m.cpt50 - 5.0


def test_folded_artifact_equals_the_logistic_regression_it_was_trained_as() -> None:
    """Serving (one float per token, standard library) gives the numpy head's probabilities."""
    from classifier.train_v1 import CACHE_DIR, PCA_DIMS

    if not (CACHE_DIR / f"minilm-m2v-pca{PCA_DIMS}.npz").exists() or not DATA.exists():
        pytest.skip("needs the distilled embedding cache (python -m classifier.train_v1) and the data")
    from classifier.train_v1 import (
        DEFAULT_API,
        DEFAULT_LOCAL,
        design_matrix,
        distill_embedding,
        fit_head,
        labels,
        load_examples,
        split,
    )

    train, test = split(load_examples(DATA, DEFAULT_LOCAL, DEFAULT_API))
    tokens, matrix = distill_embedding()
    l2 = float(json.loads((DEFAULT_ARTIFACT / "head.json").read_text())["meta"]["l2"])
    head = fit_head(design_matrix(train, tokens, matrix), labels(train), l2)
    sample = test[:100]
    expected = head.scores(design_matrix(sample, tokens, matrix))
    learned = LearnedClassifier()
    served = np.array([learned.score(e.features()) for e in sample])
    assert np.allclose(served, expected, atol=1e-5)


def test_training_reproduces_the_artifact_byte_for_byte(tmp_path: Path) -> None:
    from classifier.train_v1 import CACHE_DIR, PCA_DIMS

    if not (CACHE_DIR / f"minilm-m2v-pca{PCA_DIMS}.npz").exists() or not DATA.exists():
        pytest.skip("needs the distilled embedding cache (python -m classifier.train_v1) and the data")
    result = subprocess.run(
        [sys.executable, "-m", "classifier.train_v1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for name in ("vocab.txt", "token_weights.f32"):
        assert (tmp_path / name).read_bytes() == (DEFAULT_ARTIFACT / name).read_bytes(), name
    new, shipped = (json.loads((d / "head.json").read_text()) for d in (tmp_path, DEFAULT_ARTIFACT))
    new["meta"].pop("trained")
    shipped["meta"].pop("trained")
    assert new == shipped
