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

A model's result may be right/wrong or a grade scaled to [0, 1] (Arena's GPT-4 ratings); "accuracy" is
then the mean grade. Added here: AUROC of the score against the label (the strong model did better),
bootstrap 95% intervals (resampling prompts; every method on the same resamples, so differences are
paired), the random and prompt-length baselines, the heuristic classifier, and the two tables of
classifier/protocol.py: leave one source family out, and the in-distribution split.

    crossover classifier eval [--data ../shared/data/routing] [--out classifier/models/learned-v2]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from classifier.measures import (
    BOOTSTRAP,
    FloatArray,
    call_performance,
    metrics,
    percentiles,
    resamples,
)
from classifier.protocol import Held, in_distribution, leave_one_family_out
from classifier.sources import FAMILIES, Example

METHODS = ("learned-v2", "learned-v1", "heuristic", "length", "random")
KEYS = ("APGR", "CPT50", "CPT80", "AUROC")
TABLE_HEAD = "| held out | method | APGR | CPT(50%) | CPT(80%) | AUROC |\n|---|---|---|---|---|---|"


def _resampled(held: Held, reps: int, seed: int) -> dict[str, FloatArray]:
    """Per method, reps x 4 metrics on the same resamples of the set (so differences are paired)."""
    out = {}
    for method, s in held.scores.items():

        def statistic(i: npt.NDArray[np.int64], s: FloatArray = s) -> Sequence[float]:
            return metrics(s[i], held.weak[i], held.strong[i]).as_tuple()

        out[method] = resamples(statistic, len(s), reps, seed)
    return out


def _cells(point: Sequence[float] | FloatArray, rows: FloatArray, signed: bool = False) -> list[str]:
    lo, hi = percentiles(rows)
    sign = "+" if signed else ""
    cells = []
    for k, key in enumerate(KEYS):
        unit, digits = ("%", 1) if key.startswith("CPT") else ("", 3)
        cells.append(
            f"{point[k]:{sign}.{digits}f}{unit} [{lo[k]:{sign}.{digits}f}, {hi[k]:{sign}.{digits}f}]"
        )
    return cells


def _record(point: Sequence[float] | FloatArray, rows: FloatArray) -> dict[str, object]:
    lo, hi = percentiles(rows)
    return dict(zip(KEYS, (float(v) for v in point), strict=True)) | {
        "ci_low": lo.tolist(),
        "ci_high": hi.tolist(),
    }


def report(
    helds: Sequence[Held],
    reps: int,
    seed: int,
    average: bool,
    methods: Sequence[str] = METHODS,
    lead: str = "learned-v2",
    against: Sequence[str] = ("length", "learned-v1"),
) -> tuple[list[str], dict[str, object]]:
    """The table's lines (each set's methods with 95% intervals, then `lead` minus each of `against`,
    paired) and the same figures as JSON; with `average`, rows averaged over the sets, resample by
    resample."""
    lines = [TABLE_HEAD]
    record: dict[str, object] = {}
    points: dict[str, list[FloatArray]] = {}
    draws: dict[str, list[FloatArray]] = {}
    for held in helds:
        rows = _resampled(held, reps, seed)
        per: dict[str, object] = {"pair": held.pair}
        for method in methods:
            if method not in held.scores:
                continue
            point = np.array(metrics(held.scores[method], held.weak, held.strong).as_tuple())
            lines.append(f"| {held.name} | {method} | " + " | ".join(_cells(point, rows[method])) + " |")
            per[method] = _record(point, rows[method])
            points.setdefault(method, []).append(point)
            draws.setdefault(method, []).append(rows[method])
        for baseline in against:
            if baseline not in held.scores:
                continue
            point = np.array(metrics(held.scores[lead], held.weak, held.strong).as_tuple()) - np.array(
                metrics(held.scores[baseline], held.weak, held.strong).as_tuple()
            )
            diff = rows[lead] - rows[baseline]
            label = f"{lead} - {baseline}"
            lines.append(f"| {held.name} | {label} | " + " | ".join(_cells(point, diff, signed=True)) + " |")
            per[label] = _record(point, diff)
        record[held.name] = per
    if average:
        summary: dict[str, object] = {}
        for method in METHODS:
            if method not in points or len(points[method]) != len(helds):
                continue  # learned-v1 has no MMLU-Pro row: no average comparable with the others
            point = np.mean(points[method], axis=0)
            lines.append(
                f"| average | {method} | " + " | ".join(_cells(point, np.mean(draws[method], axis=0))) + " |"
            )
            summary[method] = _record(point, np.mean(draws[method], axis=0))
        point = np.mean(points["learned-v2"], axis=0) - np.mean(points["length"], axis=0)
        diff = np.mean(draws["learned-v2"], axis=0) - np.mean(draws["length"], axis=0)
        lines.append(
            "| average | learned-v2 - length | " + " | ".join(_cells(point, diff, signed=True)) + " |"
        )
        summary["learned-v2 - length"] = _record(point, diff)
        wins = sum(
            a[0] > b[0] and a[0] > c[0]
            for a, b, c in zip(points["learned-v2"], points["length"], points["random"], strict=True)
        )
        summary["families_above_length_and_random"] = int(wins)
        lines.append(
            f"\nlearned-v2's APGR is above both length and random on {wins} of {len(helds)} families"
        )
        record["average"] = summary
    return lines, record


def plot(helds: Sequence[Held], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(helds), figsize=(4.2 * len(helds), 4.2), squeeze=False)
    for ax, held in zip(axes[0], helds, strict=True):
        for method in METHODS:
            if method in held.scores:
                curve = call_performance(held.scores[method], held.weak, held.strong)
                ax.plot(curve.strong_pct, curve.accuracy, marker=".", label=method)
        curve = call_performance(held.scores["random"], held.weak, held.strong)
        ax.axhline(curve.weak_accuracy, color="grey", linestyle="--", label="weak only")
        ax.axhline(curve.strong_accuracy, color="red", linestyle="--", label="strong only")
        ax.set_title(held.name if "held-out split" in held.name else f"held out: {held.name}", fontsize=9)
        ax.set_xlabel("strong-model calls (%)")
    axes[0][0].set_ylabel("quality (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ablations(examples: Sequence[Example], seed: int) -> list[str]:
    """Leave-one-family-out APGR of the recipe with one decision changed at a time (no intervals)."""
    from classifier.train import ABLATIONS

    lines = ["| recipe | " + " | ".join(FAMILIES) + " | average |", "|---" * (len(FAMILIES) + 2) + "|"]
    length: list[float] = []
    for name, recipe in ABLATIONS.items():
        helds = leave_one_family_out(examples, None, seed, recipe)
        values = [metrics(h.scores["learned-v2"], h.weak, h.strong).apgr for h in helds]
        length = length or [metrics(h.scores["length"], h.weak, h.strong).apgr for h in helds]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
        sys.stderr.write(lines[-1] + "\n")
    lines.append(
        "| prompt length | " + " | ".join(f"{v:.3f}" for v in length) + f" | {np.mean(length):.3f} |"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    from classifier.boosted import DEFAULT_ARTIFACT
    from classifier.learned import DEFAULT_ARTIFACT as V1_ARTIFACT
    from classifier.sources import DEFAULT_DATA, SEED, load_all

    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="crossover classifier eval", description=doc.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="the learned-v2 artifact")
    parser.add_argument("--v1", type=Path, default=V1_ARTIFACT, help="the learned-v1 artifact")
    parser.add_argument("--out", type=Path, default=None, help="where to write eval.json/eval.png")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-loso", action="store_true", help="skip the leave-one-family-out table")
    parser.add_argument("--ablations", action="store_true", help="also measure each recipe decision")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="resamples per interval")
    args = parser.parse_args(argv)
    out: Path = args.out or args.artifact

    examples = load_all(args.data)
    report_json: dict[str, object] = {"bootstrap": args.bootstrap}
    helds = []
    if not args.no_loso:
        loso = leave_one_family_out(examples, args.v1, args.seed)
        lines, report_json["leave_one_family_out"] = report(loso, args.bootstrap, args.seed, average=True)
        print("(a) leave one source family out: trained on the other families, tested on this one")
        print("\n".join(lines))
        helds.extend(loso)
    held = in_distribution(examples, args.artifact, args.v1, args.seed)
    lines, report_json["in_distribution"] = report([held], args.bootstrap, args.seed, average=False)
    print(f"\n(b) in distribution: the shipped artifacts on held-out MMLU-Pro questions ({held.pair})")
    print("\n".join(lines))
    helds.insert(0, held)
    if args.ablations:
        print("\nrecipe decisions, leave-one-family-out APGR (one change at a time):")
        print("\n".join(ablations(examples, args.seed)))
    out.mkdir(parents=True, exist_ok=True)
    plot(helds, out / "eval.png")
    (out / "eval.json").write_text(json.dumps(report_json, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
