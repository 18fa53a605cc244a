"""Offline commands over traffic logs: `crossover classify` and `crossover calibrate`.

Input is JSONL, one chat request per line: `{"messages": [...]}` or a whole request object (a
completion's `prompt` works too). Users run these over their own traffic logs.
"""

from __future__ import annotations

import argparse
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
from gateway.routing import Ask, plan_route


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
        settings = load(args.config)
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
        load(tmp.name)
    except ConfigError as exc:
        os.unlink(tmp.name)
        raise ToolError(f"the updated config would be invalid: {exc}") from None
    os.replace(tmp.name, path)


def calibrate(args: argparse.Namespace, out: IO[str]) -> int:
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
        parser.add_argument("--target-api-share", type=float, required=True, help="e.g. 0.3 for 30%%")
        parser.add_argument("--write", action="store_true", help="write the threshold into --config")
    else:
        parser.add_argument(
            "--explain", type=int, default=0, metavar="N", help="add the N terms that weighed most"
        )


def run(args: argparse.Namespace) -> int:
    try:
        return (calibrate if args.command == "calibrate" else classify)(args, sys.stdout)
    except (ToolError, ValueError) as exc:
        print(f"crossover {args.command}: {exc}", file=sys.stderr)
        return 2
