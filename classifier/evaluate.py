"""Routing quality, measured as RouteLLM measures it (routellm/evals/evaluate.py and benchmarks.py).

For one router over a labelled set (per question: is the weak/local model right, is the strong/API
model right):

- thresholds: the 11 bin edges of `pd.qcut(scores, 10)`, i.e. the 0%, 10%, ..., 100% quantiles of the
  scores (linear interpolation); at edge i a question goes to the strong model when score >= edge, and
  at the last edge when score > edge, so the curve runs from 100% to 0% strong calls;
- call-performance curve: (strong-call %, accuracy %) at each threshold;
- AUC: trapezoid of accuracy over strong-call share in [0, 1]; APGR = (AUC - weak AUC) / (strong AUC -
  weak AUC), where weak/strong AUC integrate the constant weak/strong accuracy over the same range;
- CPT(x%): np.interp(weak + x * (strong - weak), accuracies, strong-call %), over the curve sorted by
  strong-call % (as RouteLLM does, without forcing the accuracies to be monotonic).

Added here: AUROC of the score against the label (local wrong and API right), bootstrap 95% intervals
(resampling questions), the random and prompt-length baselines, the heuristic classifier, and a
leave-one-source-out table (MMLU-Pro `src` prefix: stemez, theoremQA, scibench).

    python -m classifier.evaluate [--data ../shared/data/routing] [--out classifier/models/learned-v1]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

NUM_RESULTS = 10
BOOTSTRAP = 1000


@dataclass(frozen=True, slots=True)
class Curve:
    thresholds: FloatArray
    strong_pct: FloatArray  # ascending
    accuracy: FloatArray  # percent, matching strong_pct
    weak_accuracy: float
    strong_accuracy: float


def call_performance(
    scores: FloatArray, weak_correct: BoolArray, strong_correct: BoolArray, num_results: int = NUM_RESULTS
) -> Curve:
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.quantile(scores, np.linspace(0.0, 1.0, num_results + 1))
    if len(np.unique(thresholds)) < len(thresholds):
        # pd.qcut(..., retbins=True) raises on duplicate edges: so does RouteLLM.
        raise ValueError("scores have too many ties for quantile thresholds (as pd.qcut)")
    strong_pct = []
    accuracy = []
    for i, threshold in enumerate(thresholds):
        selection = scores >= threshold if i != len(thresholds) - 1 else scores > threshold
        results = np.where(selection, strong_correct, weak_correct)
        strong_pct.append(float(selection.mean()) * 100)
        accuracy.append(float(results.mean()) * 100)
    order = np.argsort(np.array(strong_pct), kind="stable")
    return Curve(
        thresholds=thresholds,
        strong_pct=np.array(strong_pct)[order],
        accuracy=np.array(accuracy)[order],
        weak_accuracy=float(np.mean(weak_correct)) * 100,
        strong_accuracy=float(np.mean(strong_correct)) * 100,
    )


def apgr(curve: Curve) -> float:
    x = curve.strong_pct / 100
    auc = float(np.trapezoid(curve.accuracy, x))
    weak_auc = float(np.trapezoid(np.full(len(x), curve.weak_accuracy), x))
    strong_auc = float(np.trapezoid(np.full(len(x), curve.strong_accuracy), x))
    return (auc - weak_auc) / (strong_auc - weak_auc)


def cpt(curve: Curve, pct: float) -> float:
    """Strong-model calls (percent) needed to reach `pct` of the gap between weak and strong."""
    target = pct * (curve.strong_accuracy - curve.weak_accuracy) + curve.weak_accuracy
    return float(np.interp(target, curve.accuracy, curve.strong_pct))


def auroc(scores: FloatArray, labels: npt.NDArray[np.int64] | BoolArray) -> float:
    """Mann-Whitney AUROC with ties counted half."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True, slots=True)
class Metrics:
    apgr: float
    cpt50: float
    cpt80: float
    auroc: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.apgr, self.cpt50, self.cpt80, self.auroc)


def metrics(scores: FloatArray, weak: BoolArray, strong: BoolArray) -> Metrics:
    curve = call_performance(scores, weak, strong)
    label = (~weak) & strong
    return Metrics(apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8), auroc(scores, label))


def _interval(
    statistic: Callable[[npt.NDArray[np.int64]], Sequence[float]], n: int, reps: int, seed: int
) -> FloatArray:
    """2 x k: the 2.5% and 97.5% percentiles of `statistic` over `reps` resamples of n items (a
    resample whose curve cannot be cut into quantiles is skipped)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(reps):
        try:
            rows.append(statistic(rng.integers(0, n, n)))
        except ValueError:
            continue
    return np.asarray(np.percentile(np.array(rows), [2.5, 97.5], axis=0), dtype=np.float64)


def bootstrap(
    scores: FloatArray, weak: BoolArray, strong: BoolArray, reps: int = BOOTSTRAP, seed: int = 0
) -> FloatArray:
    """2 x 4 array: the 2.5% and 97.5% percentiles of (APGR, CPT50, CPT80, AUROC) over resamples."""
    return _interval(lambda i: metrics(scores[i], weak[i], strong[i]).as_tuple(), len(scores), reps, seed)


def paired_bootstrap(
    scores: FloatArray,
    baseline: FloatArray,
    weak: BoolArray,
    strong: BoolArray,
    reps: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """The difference scores - baseline in (APGR, CPT50, CPT80, AUROC), and its 2 x 4 interval: both
    methods measured on the same resample each time, so shared noise cancels."""

    def difference(i: npt.NDArray[np.int64]) -> Sequence[float]:
        a = metrics(scores[i], weak[i], strong[i]).as_tuple()
        b = metrics(baseline[i], weak[i], strong[i]).as_tuple()
        return [x - y for x, y in zip(a, b, strict=True)]

    point = np.asarray(difference(np.arange(len(scores))), dtype=np.float64)
    return point, _interval(difference, len(scores), reps, seed)


# ---------------------------------------------------------------------------------------------------


Scorer = Callable[[Sequence[object]], FloatArray]


def _baselines(examples: Sequence[object], seed: int) -> dict[str, FloatArray]:
    from classifier.heuristic import HeuristicClassifier
    from classifier.train import Example

    typed = [e for e in examples if isinstance(e, Example)]
    feats = [e.features() for e in typed]
    heuristic = HeuristicClassifier()
    rng = np.random.default_rng(seed)
    return {
        "random": rng.random(len(typed)),
        "length": np.array([float(f.total_chars) for f in feats]) + rng.random(len(typed)) * 1e-3,
        "heuristic": np.array([heuristic.score(f) for f in feats]) + rng.random(len(typed)) * 1e-9,
    }


def _row(
    name: str, scores: FloatArray, weak: BoolArray, strong: BoolArray, reps: int = BOOTSTRAP
) -> dict[str, object]:
    m = metrics(scores, weak, strong)
    lo, hi = bootstrap(scores, weak, strong, reps)
    return {
        "method": name,
        "APGR": m.apgr,
        "CPT50": m.cpt50,
        "CPT80": m.cpt80,
        "AUROC": m.auroc,
        "ci_low": [float(v) for v in lo],
        "ci_high": [float(v) for v in hi],
    }


def _fmt(row: dict[str, object]) -> str:
    lo = row["ci_low"]
    hi = row["ci_high"]
    assert isinstance(lo, list) and isinstance(hi, list)
    cells = []
    for k, key in enumerate(("APGR", "CPT50", "CPT80", "AUROC")):
        value = row[key]
        assert isinstance(value, float)
        unit = "%" if key.startswith("CPT") else ""
        digits = 1 if unit else 3
        cells.append(f"{value:.{digits}f}{unit} [{lo[k]:.{digits}f}, {hi[k]:.{digits}f}]")
    return f"| {row['method']} | " + " | ".join(cells) + " |"


TABLE_HEAD = "| method | APGR | CPT(50%) | CPT(80%) | AUROC |\n|---|---|---|---|---|"


def plot(curves: dict[str, Curve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    any_curve = next(iter(curves.values()))
    for name, curve in curves.items():
        ax.plot(curve.strong_pct, curve.accuracy, marker=".", label=name)
    ax.axhline(any_curve.weak_accuracy, color="grey", linestyle="--", label="local only")
    ax.axhline(any_curve.strong_accuracy, color="red", linestyle="--", label="API only")
    ax.set_xlabel("API model calls (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from classifier.learned import DEFAULT_ARTIFACT, LearnedClassifier
    from classifier.train import (
        CACHE_DIR,
        DEFAULT_API,
        DEFAULT_DATA,
        DEFAULT_LOCAL,
        SEED,
        design_matrix,
        distill_embedding,
        fit_head,
        labels,
        load_examples,
        split,
    )

    parser = argparse.ArgumentParser(prog="crossover classifier eval", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--out", type=Path, default=None, help="where to write eval.json/eval.png")
    parser.add_argument("--local", default=DEFAULT_LOCAL)
    parser.add_argument("--api", default=DEFAULT_API)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--no-loso", action="store_true", help="skip the leave-one-source-out table")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="resamples per interval")
    args = parser.parse_args(argv)
    out: Path = args.out or args.artifact

    examples = load_examples(args.data, args.local, args.api)
    _, test = split(examples, args.seed)
    weak = np.array([e.local_correct for e in test])
    strong = np.array([e.api_correct for e in test])
    learned = LearnedClassifier(args.artifact)
    scores = {"learned": np.array([learned.score(e.features()) for e in test])}
    scores |= _baselines(test, args.seed)
    rows = [_row(name, s, weak, strong, args.bootstrap) for name, s in scores.items()]
    print(f"held-out split: {len(test)} questions, local {weak.mean():.3f}, API {strong.mean():.3f} accuracy")
    print(TABLE_HEAD)
    for row in rows:
        print(_fmt(row))
    print("\npaired differences, learned - baseline (same resamples for both):")
    print("| comparison | ΔAPGR | ΔCPT(50%) | ΔCPT(80%) | ΔAUROC |\n|---|---|---|---|---|")
    paired = []
    for name in ("heuristic", "length", "random"):
        point, (lo, hi) = paired_bootstrap(scores["learned"], scores[name], weak, strong, args.bootstrap)
        paired.append(
            {"baseline": name, "difference": point.tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist()}
        )
        cells = [
            f"{point[k]:+.{d}f}{u} [{lo[k]:+.{d}f}, {hi[k]:+.{d}f}]"
            for k, (d, u) in enumerate(((3, ""), (1, " pts"), (1, " pts"), (3, "")))
        ]
        print(f"| learned - {name} | " + " | ".join(cells) + " |")
    curves = {name: call_performance(s, weak, strong) for name, s in scores.items()}
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, out / "eval.png", f"MMLU-Pro held-out ({args.local} vs {args.api})")
    report: dict[str, object] = {"held_out": rows, "paired": paired, "n_test": len(test)}

    if not args.no_loso:
        try:
            tokens, matrix = distill_embedding(args.cache)
        except ImportError as exc:
            print(f"leave-one-source-out skipped: it retrains, which needs the `train` extra ({exc})")
            args.no_loso = True
    if not args.no_loso:
        x_all = design_matrix(examples, tokens, matrix, "featurising all")
        l2 = float(json.loads((args.artifact / "head.json").read_text())["meta"]["l2"])
        loso = []
        for source in sorted({e.source for e in examples}):
            inside = np.array([e.source != source for e in examples])
            held = [e for e in examples if e.source == source]
            head = fit_head(x_all[inside], labels([e for e in examples if e.source != source]), l2)
            w = np.array([e.local_correct for e in held])
            s = np.array([e.api_correct for e in held])
            per = {"learned": head.scores(x_all[~inside])} | _baselines(held, args.seed)
            for name, sc in per.items():
                row = _row(f"{source} (n={len(held)}): {name}", sc, w, s, args.bootstrap)
                loso.append(row)
        print("\nleave-one-source-out (trained on the other sources, l2 from the artifact):")
        print(TABLE_HEAD)
        for row in loso:
            print(_fmt(row))
        report["leave_one_source_out"] = loso
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
