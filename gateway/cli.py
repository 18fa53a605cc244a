"""The `crossover` command: serve, check, report, classify, calibrate, outcomes export,
keys|teams, classifier train|eval."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from gateway import keys_cli, report, tools
from gateway.config import ConfigError, Settings, embedded_default, load


def _settings(path: str | None) -> Settings:
    return embedded_default() if path is None else load(path)


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load(args.config)
    except ConfigError as exc:
        print(f"crossover: invalid config: {exc}", file=sys.stderr)
        return 2
    routers = ", ".join(settings.routers) or "none"
    print(f"{args.config}: ok ({len(settings.backends)} backends; router models: {routers})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config)  # fail before forking workers, with the key path
    except ConfigError as exc:
        print(f"crossover: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.config is None and settings.backends["openai"].api_key is None:
        logging.getLogger("crossover").warning(
            "OPENAI_API_KEY is not set: requests routed to the API (backend 'openai') will fail"
        )
    metrics_dir = None
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Workers share metrics through files; this must be set before prometheus_client is imported
        # in the worker processes, which are spawned fresh and inherit the environment.
        metrics_dir = tempfile.mkdtemp(prefix="crossover-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if args.config is not None:
        # absolute(), not resolve(): a Kubernetes ConfigMap mount is a symlink that is repointed on update.
        os.environ["CROSSOVER_CONFIG"] = str(Path(args.config).absolute())
    else:
        os.environ.pop("CROSSOVER_CONFIG", None)
    os.environ["CROSSOVER_WORKERS"] = str(args.workers)  # each worker's share of a GPU's cost
    from gateway.supervisor import serve

    try:
        return serve(
            functools.partial(app_from_env, settings),
            limits=settings.http,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_graceful_shutdown=30,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def app_from_env(validated: Settings | None = None) -> object:
    """The factory each uvicorn worker calls: the config path travels in CROSSOVER_CONFIG, the number of
    workers in CROSSOVER_WORKERS (both set by `crossover serve`). `validated` is the config `crossover
    serve` checked before starting: a worker that (re)starts while the file is invalid serves it, rather
    than failing to start, which makes uvicorn's supervisor stop the whole gateway."""
    from gateway.app import create_app

    # A SIGHUP before the app's lifespan installs its reload handler would end this worker: ignore it
    # until then (the config is being read right now anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    path = os.environ.get("CROSSOVER_CONFIG")
    loader = (lambda: load(path)) if path else None
    workers = max(1, int(os.environ.get("CROSSOVER_WORKERS", "1")))
    try:
        settings = _settings(path)
    except ConfigError as exc:
        if validated is None:
            raise
        logging.getLogger("crossover").error(
            "config file invalid, this worker serves the config checked at start-up: %s", exc
        )
        settings = validated
    return create_app(settings, loader=loader, workers=workers)


def _classifier(args: argparse.Namespace) -> int:
    """Offline tools (their heavy dependencies are the `train` extra)."""
    try:
        if any(a == "--outcomes" or a.startswith("--outcomes=") for a in args.rest):
            from gateway.learn import main as learn_main  # the deployment's own outcomes

            return learn_main(args.action, args.rest)
        if args.action == "train":
            from classifier.train import main as train_main

            return train_main(args.rest)
        from classifier.evaluate import main as eval_main

        return eval_main(args.rest)
    except ImportError as exc:
        print(
            f"crossover classifier {args.action}: needs the `train` extra: pip install -e '.[train]' ({exc})",
            file=sys.stderr,
        )
    except OSError as exc:
        print(f"crossover classifier {args.action}: {exc.filename}: {exc.strerror}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crossover", description="OpenAI-compatible routing gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: the embedded default, see README)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False)
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check", help="validate a config file without serving")
    check.add_argument("config")
    check.set_defaults(run=_check)
    report_cmd = commands.add_parser(
        "report", help="costs, savings and break-even of your traffic, from a gateway's /metrics"
    )
    report.add_arguments(report_cmd)
    report_cmd.set_defaults(run=report.run)
    for name, help_text in (
        ("classify", "score requests from JSONL (and say the route they would take)"),
        ("calibrate", "the threshold that sends a target share of requests to the API"),
    ):
        tool = commands.add_parser(name, help=help_text)
        tools.add_arguments(tool, calibrating=name == "calibrate")
        tool.set_defaults(run=tools.run)
    outcomes = commands.add_parser("outcomes", help="what shadow judging stored (see README, Quality)")
    tools.add_outcomes_arguments(outcomes)
    outcomes.set_defaults(run=tools.run)
    for name, help_text in (
        ("keys", "virtual keys in the keys store: create, list, rotate, revoke"),
        ("teams", "teams in the keys store: create, list, update"),
    ):
        store_cmd = commands.add_parser(name, help=help_text)
        keys_cli.add_arguments(store_cmd, name)
        store_cmd.set_defaults(run=keys_cli.run)
    classifier_cmd = commands.add_parser(
        "classifier", help="train or evaluate the learned classifier (--outcomes STORE: on your own traffic)"
    )
    classifier_cmd.add_argument("action", choices=["train", "eval"])
    classifier_cmd.add_argument("rest", nargs=argparse.REMAINDER)
    classifier_cmd.set_defaults(run=_classifier)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
