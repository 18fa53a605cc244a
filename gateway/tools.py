"""Offline commands over traffic logs and judged outcomes: `crossover classify`, `crossover calibrate`
and `crossover outcomes export`.

Input is JSONL, one chat request per line: `{"messages": [...]}` or a whole request object (a
completion's `prompt` works too). Users run these over their own traffic logs. With `--quality-target`,
calibrate reads the outcome store that shadow judging fills (gateway/store/) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from classifier import Classifier, Explainer, extract_features, load_classifier, weightiest
from gateway.config import ConfigError, Router, load
from gateway.online_threshold import share_threshold
from gateway.quality import RETAINED, Choice, quality_threshold
from gateway.routing import Ask, plan_route
from gateway.store import Judged, StoreError, open_store


class ToolError(Exception):
    """A problem the user can fix: said on stderr, exit status 2."""


def _requests(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ToolError(f"line {number}: not JSON ({exc.msg})") from None
        if not isinstance(request, dict) or not ("messages" in request or "prompt" in request):
            raise ToolError(f"line {number}: expected an object with 'messages' (or 'prompt')")
        yield number, request


def _router(args: argparse.Namespace) -> tuple[Router | None, Classifier]:
    if args.config is None:
        return None, load_classifier(args.classifier)
    try:
        settings = load(args.config, require_env=False)  # offline: no backend is called
    except ConfigError as exc:
        raise ToolError(f"invalid config: {exc}") from None
    name = args.router or next(iter(settings.routers), None)
    if name is None or name not in settings.routers:
        raise ToolError(f"the config has no router {name!r}")
    router = settings.routers[name]
    return router, load_classifier(router.classifier)


def classify(args: argparse.Namespace, out: IO[str]) -> int:
    if args.explain < 0:
        raise ToolError("--explain must be 0 or more")
    router, classifier = _router(args)
    with _open(args.input) as stream:
        for _, request in _requests(stream):
            features = extract_features(request)
            line: dict[str, Any] = {}
            if router is not None:
                # The server's own policy; offline there are no headers, keys or full backends.
                decision = plan_route(router, Ask(features), classifier.score)
                line.update(router=router.name, route=decision.route)
                if decision.rule is not None:
                    line["rule"] = decision.rule
            line = {"score": round(classifier.score(features), 6), **line}
            if args.explain and isinstance(classifier, Explainer):
                terms = weightiest(classifier, features, args.explain)
                line["top"] = [[name, round(value, 4)] for name, value in terms]
            out.write(json.dumps(line) + "\n")
    return 0


def _write_threshold(path: Path, router: str, threshold: float) -> None:
    """Replace (or add) `threshold:` inside `routers.<router>` in place, keeping the file's comments;
    the new file is validated before it replaces the old one (a running gateway then reloads it)."""
    text = path.read_text(encoding="utf-8")
    block = re.search(rf"(?ms)^routers:\s*\n.*?^(\s+){re.escape(router)}:\s*\n(.*?)(?=^\1\S|^\S|\Z)", text)
    first_key = re.search(r"(?m)^([ \t]+)\S", block.group(2)) if block else None
    if block is None or first_key is None:
        raise ToolError(f"write needs routers.{router} written as a block (one key a line) in {path}")
    line = re.search(r"(?m)^(\s+threshold:\s*)[^\s#]+", block.group(2))
    if line is None:  # the router used its classifier's default: add the line
        start = block.start(2)
        new = text[:start] + f"{first_key.group(1)}threshold: {threshold:.4f}\n" + text[start:]
    else:
        start = block.start(2) + line.start()
        new = text[:start] + line.group(1) + f"{threshold:.4f}" + text[block.start(2) + line.end() :]
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as tmp:
        tmp.write(new)
    try:
        load(tmp.name, require_env=False)
    except ConfigError as exc:
        os.unlink(tmp.name)
        raise ToolError(f"the updated config would be invalid: {exc}") from None
    os.replace(tmp.name, path)


def read_outcomes(url: str, router: str | None) -> list[Judged]:
    """Every judged row of the store at `url` (of one router's, given one)."""

    async def read() -> list[Judged]:
        store = open_store(url)
        try:
            return await store.rows()
        finally:
            await store.close()

    if "://" not in url and not Path(url).exists():
        raise ToolError(f"no outcome store at {url}")
    try:
        rows = asyncio.run(read())
    except StoreError as exc:
        raise ToolError(str(exc)) from None
    return [r for r in rows if router is None or r.router == router]


def calibrate_quality(args: argparse.Namespace, out: IO[str]) -> int:
    """The threshold that keeps the estimated quality of all answers at `--quality-target` of all-API
    quality, at the least API share (see gateway/quality.py)."""
    if not 0 < args.quality_target <= 1:
        raise ToolError("--quality-target must be above 0 and at most 1")
    if args.outcomes is None:
        raise ToolError("--quality-target needs --outcomes STORE (a path or a postgresql:// URL)")
    router = _router(args)[0]
    name = args.router or (router.name if router is not None else None)
    rows = [r for r in read_outcomes(args.outcomes, name) if r.score is not None]
    points = [(float(r.score), r.verdict in RETAINED, r.api_usd) for r in rows if r.score is not None]
    estimated = quality_threshold(points, args.quality_target)
    if estimated is None:
        where = f" of router {name!r}" if name else ""
        raise ToolError(f"no judged outcomes with a score{where} in {args.outcomes}")
    sure = quality_threshold(points, args.quality_target, sure=True)
    out.write(_choice_line("estimated", estimated, args.quality_target))
    if sure is not None:
        out.write(_choice_line("sure (95%)", sure, args.quality_target))
    else:
        out.write(f"sure (95%): none; {len(points)} judged requests are too few to be sure of the target\n")
    choice = sure if args.sure else estimated
    if choice is None:
        raise ToolError("--sure: no threshold is sure of the target yet; nothing written")
    if args.write:
        if router is None or args.config is None:
            raise ToolError("--write needs --config")
        _write_threshold(Path(args.config), router.name, choice.threshold)
        out.write(f"written to {args.config} (routers.{router.name}.threshold)\n")
    return 0


def _choice_line(kind: str, choice: Choice, target: float) -> str:
    low, high = choice.interval
    return (
        f"{kind}: threshold {choice.threshold:.4f} keeps {choice.quality:.1%} of all-API quality "
        f"(95% interval {low:.1%}-{high:.1%}, {choice.n} judged) with {choice.api_share:.1%} of requests "
        f"and {choice.api_spend_share:.1%} of the API spend on the API (target {target:.1%})\n"
    )


def export_outcomes(args: argparse.Namespace, out: IO[str]) -> int:
    """The store as JSONL in the training format: the prompt (when it was stored), the cues, the score,
    and the label "needs the API" (the local answer was not good enough: see gateway/learn.py), with the
    verdicts behind it."""
    for row in read_outcomes(args.store, args.router):
        line: dict[str, Any] = {}
        if row.prompt is not None:
            line.update(json.loads(row.prompt))
        if row.features is not None:
            line["cues"] = json.loads(row.features)
        line.update(
            label=int(row.verdict not in RETAINED),
            score=row.score,
            verdict=row.verdict,
            verdicts=[row.verdict_local_first, row.verdict_api_first],
            router=row.router,
            classifier=row.classifier,
            local_model=row.local_model,
            api_model=row.api_model,
            prompt_sha256=row.prompt_sha256,
            at=row.at,
        )
        out.write(json.dumps(line) + "\n")
    return 0


def calibrate(args: argparse.Namespace, out: IO[str]) -> int:
    if args.quality_target is not None:
        return calibrate_quality(args, out)
    if args.target_api_share is None:
        raise ToolError("give --target-api-share or --quality-target")
    if not 0 <= args.target_api_share <= 1:
        raise ToolError("--target-api-share must be between 0 and 1")
    router, classifier = _router(args)
    scores: list[float] = []
    pinned_api = total = 0
    with _open(args.input) as stream:
        for _, request in _requests(stream):
            total += 1
            features = extract_features(request)
            decision = plan_route(router, Ask(features), classifier.score) if router is not None else None
            if decision is None:
                scores.append(classifier.score(features))
            elif decision.score is None:  # a rule pinned it
                pinned_api += decision.route == "api"
            else:
                scores.append(decision.score)
    if not scores:
        # Nothing the threshold decides: writing one would only change requests this log never had.
        raise ToolError(
            f"none of the {total} requests is decided by the score (rules pin them all)"
            if total
            else "no requests to calibrate on"
        )
    threshold = share_threshold(sorted(scores), total, pinned_api, args.target_api_share)
    share = (sum(s >= threshold for s in scores) + pinned_api) / total
    pinned = f", {pinned_api} of them pinned by rules" if pinned_api else ""
    out.write(
        f"threshold {threshold:.4f}: {share:.1%} of {total} requests to the API{pinned} "
        f"(target {args.target_api_share:.1%})\n"
    )
    if args.write:
        if router is None or args.config is None:
            raise ToolError("--write needs --config")
        _write_threshold(Path(args.config), router.name, threshold)
        out.write(f"written to {args.config} (routers.{router.name}.threshold)\n")
    return 0


def _open(path: str | None) -> IO[str]:
    if path is None or path == "-":
        return os.fdopen(os.dup(sys.stdin.fileno()), encoding="utf-8")
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror}") from None


def add_arguments(parser: argparse.ArgumentParser, calibrating: bool) -> None:
    parser.add_argument("--input", help="JSONL file of requests (default: standard input)")
    parser.add_argument("--config", help="gateway config: use its router's classifier and threshold")
    parser.add_argument("--router", help="router model in --config (default: the first)")
    parser.add_argument("--classifier", default="learned", help="without --config: which classifier")
    if calibrating:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--target-api-share", type=float, help="e.g. 0.3 for 30%%")
        target.add_argument(
            "--quality-target", type=float, help="e.g. 0.95: keep 95%% of all-API quality (needs --outcomes)"
        )
        parser.add_argument("--outcomes", metavar="STORE", help="the outcome store shadow judging writes")
        parser.add_argument(
            "--sure",
            action="store_true",
            help="with --quality-target: by the 95%% lower bound, not the estimate",
        )
        parser.add_argument("--write", action="store_true", help="write the threshold into --config")
    else:
        parser.add_argument(
            "--explain", type=int, default=0, metavar="N", help="add the N terms that weighed most"
        )


def add_outcomes_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="judged outcomes as JSONL, in the training format")
    export.add_argument("--store", required=True, help="a SQLite path or a postgresql:// URL")
    export.add_argument("--router", help="only this router's outcomes")


def run(args: argparse.Namespace) -> int:
    commands = {"calibrate": calibrate, "classify": classify, "outcomes": export_outcomes}
    try:
        return commands[args.command](args, sys.stdout)
    except (ToolError, ValueError) as exc:
        print(f"crossover {args.command}: {exc}", file=sys.stderr)
        return 2
