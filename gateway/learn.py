"""`crossover classifier train|eval --outcomes STORE`: learn from, and measure on, the outcomes shadow
judging stored. This module reads the store into the plain rows of classifier/outcomes.py; the fitting
(classifier/retrain.py) and the metrics (classifier/evaluate.py) never see the gateway.

What a verdict means here:

- Training label, "needs the API": the local answer was not good enough, i.e. the verdict is
  `api_better` or `both_bad` (not in quality.RETAINED). A tie keeps the local answer. `both_bad` counts
  as a local failure because that is what the public label the prior learned counts (a prompt every
  weak model failed is hard for the local model, whatever the strong one did), and what `calibrate
  --quality-target` counts as quality lost: the score ranks what the threshold is then set against.
- Evaluation: each answer's quality, as the public evaluation reads a pair's results (right/wrong):
  local_better 1/0, tie 1/1, api_better 0/1, both_bad 0/0; the AUROC's label is then "the API did better".

A row's cues are those stored with it at judging time (exact: the whole request, max_tokens and
response_format included); a row from before they were stored uses its prompt, if kept; a row with
neither is left out and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier import extract_features
from classifier.boosted import DEFAULT_ARTIFACT
from classifier.cues import cue_vector, cues_from_map
from classifier.outcomes import BASELINES, CLASSIFIERS, Outcome, table
from gateway.quality import RETAINED
from gateway.store import Judged
from gateway.tools import ToolError, read_outcomes

QUALITIES = {"local_better": (1.0, 0.0), "tie": (1.0, 1.0), "api_better": (0.0, 1.0), "both_bad": (0.0, 0.0)}


def outcome(row: Judged) -> Outcome | None:
    """The row as training and evaluation read it; None without cues or a prompt to compute them from."""
    features = extract_features(json.loads(row.prompt)) if row.prompt is not None else None
    cues = cues_from_map(json.loads(row.features)) if row.features is not None else None
    if cues is None and features is not None:
        cues = cue_vector(features)
    if cues is None or row.verdict not in QUALITIES:
        return None
    local, api = QUALITIES[row.verdict]
    needs_api = 0.0 if row.verdict in RETAINED else 1.0
    return Outcome(cues, needs_api, local, api, row.score, features)


def outcomes(store: str, router: str | None) -> list[Outcome]:
    rows = read_outcomes(store, router)
    found = [o for o in map(outcome, rows) if o is not None]
    if not found:
        where = f" of router {router!r}" if router else ""
        raise ToolError(f"no judged outcomes{where} in {store}")
    if len(found) < len(rows):
        print(f"{len(rows) - len(found)} outcomes without cues or a stored prompt left out", file=sys.stderr)
    return found


def train(argv: Sequence[str]) -> int:
    from classifier.retrain import SEED, retrain, write

    parser = argparse.ArgumentParser(
        prog="crossover classifier train", description="fit learned-v2 to this deployment's judged outcomes"
    )
    parser.add_argument(
        "--outcomes", metavar="STORE", required=True, help="a SQLite path or postgresql:// URL"
    )
    parser.add_argument("--router", help="only this router's outcomes")
    parser.add_argument("--prior", type=Path, default=DEFAULT_ARTIFACT, help="the artifact to start from")
    parser.add_argument(
        "--out", type=Path, default=Path("learned-v2-local"), help="the new artifact's folder"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if args.out.resolve() == DEFAULT_ARTIFACT.resolve():
        raise ToolError("--out is the shipped artifact: write the retrained one elsewhere")
    rows = outcomes(args.outcomes, args.router)
    retrained = retrain(args.prior, rows, args.seed)
    write(retrained, args.out, rows)
    losses = ", ".join(f"{n}: {v:.4f}" for n, v in retrained.losses.items())
    print(f"{len(rows)} judged outcomes; cross-validated log loss by trees added: {losses}")
    print(
        f"wrote {args.out / 'model.json'} ({retrained.rounds} trees added to the prior's, default threshold "
        f"{retrained.artifact['default_threshold']}); use it with `classifier: learned:{args.out}`"
    )
    return 0


def evaluate(argv: Sequence[str]) -> int:
    from classifier.measures import BOOTSTRAP
    from classifier.retrain import SEED

    parser = argparse.ArgumentParser(
        prog="crossover classifier eval",
        description="measure classifiers on this deployment's judged outcomes",
    )
    parser.add_argument(
        "--outcomes", metavar="STORE", required=True, help="a SQLite path or postgresql:// URL"
    )
    parser.add_argument("--router", help="only this router's outcomes")
    parser.add_argument(
        "--classifier",
        action="append",
        metavar="NAME",
        help="a classifier (a name, learned:PATH, module:attribute); repeat for more; the first is "
        f"compared with the second and with length (default: {', '.join(CLASSIFIERS)})",
    )
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="resamples per interval")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    rows = outcomes(args.outcomes, args.router)
    if not any(r.api > r.local for r in rows) or all(r.api > r.local for r in rows):
        raise ToolError("the outcomes need both requests where the API did better and others to rank")
    names = [*(args.classifier or CLASSIFIERS), *BASELINES]
    lines, skipped, _ = table(rows, names, args.bootstrap, args.seed)
    print("\n".join(lines))
    for note in skipped:
        print(f"left out: {note}", file=sys.stderr)
    return 0


def main(action: str, argv: Sequence[str]) -> int:
    try:
        return train(argv) if action == "train" else evaluate(argv)
    except (ToolError, ValueError) as exc:
        print(f"crossover classifier {action}: {exc}", file=sys.stderr)
        return 2
