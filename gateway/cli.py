"""The `crossover` command: serve, check, report, classify, calibrate, outcomes export,
keys|teams, classifier train|eval."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from gateway import keys_cli, logs, report, tools
from gateway.config import ConfigError, Settings, embedded_default, load
from gateway.vllm_child import VllmChild, VllmError, local_port, port_free, with_vllm

log = logging.getLogger("crossover")


def _settings(path: str | None) -> Settings:
    return embedded_default() if path is None else load(path)


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load(args.config, require_env=False)  # offline: the secrets belong to the server
    except ConfigError as exc:
        print(f"crossover: invalid config: {exc}", file=sys.stderr)
        return 2
    routers = ", ".join(settings.routers) or "none"
    print(f"{args.config}: ok ({len(settings.backends)} backends; router models: {routers})")
    if settings.unset:
        print("note: `crossover serve` will need:\n  " + "\n  ".join(settings.unset))
    return 0


def _announce(settings: Settings) -> None:
    """Where each backend is expected: the first thing to check when one does not answer."""
    for backend in settings.backends.values():
        models = ", ".join(m.name for m in backend.models) or "discovered from its /models"
        log.info(
            "backend %r (%s) expected at %s; models: %s", backend.name, backend.kind, backend.base_url, models
        )


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config)  # fail before forking workers, with the key path
    except ConfigError as exc:
        print(f"crossover: invalid config: {exc}", file=sys.stderr)
        return 2
    child = None
    if args.with_vllm is not None:
        try:
            settings, child = _vllm_child(args, settings)
        except VllmError as exc:
            print(f"crossover: --with-vllm: {exc}", file=sys.stderr)
            return 2
    _announce(settings)
    if args.config is None and settings.backends["openai"].api_key is None:
        log.warning("OPENAI_API_KEY is not set: requests routed to the API (backend 'openai') will fail")
    metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        _forget_earlier_runs(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    elif args.workers > 1:
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
    os.environ["CROSSOVER_LOG_FORMAT"] = args.log_format  # workers configure their own logging
    os.environ["CROSSOVER_LOG_LEVEL"] = args.log_level
    from gateway.supervisor import serve

    if child is not None:
        # uvicorn raises the signal it shut down for again once it is done, which would end this process
        # before vLLM is stopped: a handler of ours takes it, and the process exits through `finally`.
        signal.signal(signal.SIGTERM, lambda *_: None)
        child.start()
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
            # JSON: uvicorn's own loggers propagate to the root handler, which writes JSON.
            **({"log_config": None} if args.log_format == "json" else {}),
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        )
    finally:
        if child is not None:
            child.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _forget_earlier_runs(metrics_dir: Path) -> None:
    """A given metrics directory outlives the gateway (the image's, a Kubernetes emptyDir across
    container restarts): an earlier run's files would be summed into this run's metrics, and a
    worker that gets a dead one's PID (PID 1 again, in a container) would carry on its gauges."""
    for stale in metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)


def _vllm_child(args: argparse.Namespace, settings: Settings) -> tuple[Settings, VllmChild]:
    """The vLLM child for the backend it serves; without a config file, on a free port when the
    default one is taken (written into the local backend through CROSSOVER_LOCAL_BASE_URL)."""
    name = args.vllm_backend
    backend = settings.backends.get(name)
    if backend is None:
        raise VllmError(f"the config has no backend {name!r} for vLLM (choose one with --vllm-backend)")
    if args.config is None and "CROSSOVER_LOCAL_BASE_URL" not in os.environ:
        port = local_port(backend.base_url, name)
        if not port_free(port):
            log.info("port %d is taken; vLLM gets a free one", port)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ["CROSSOVER_LOCAL_BASE_URL"] = f"http://127.0.0.1:{port}/v1"  # workers inherit it
            settings = embedded_default()
            backend = settings.backends[name]
    return settings, with_vllm(args.with_vllm, backend.base_url, name, args.vllm_bin, args.vllm_arg)


def app_from_env(validated: Settings | None = None) -> object:
    """The factory each uvicorn worker calls: the config path travels in CROSSOVER_CONFIG, the number of
    workers in CROSSOVER_WORKERS (both set by `crossover serve`). `validated` is the config `crossover
    serve` checked before starting: a worker that (re)starts while the file is invalid serves it, rather
    than failing to start, which makes uvicorn's supervisor stop the whole gateway."""
    from gateway.app import create_app

    # A SIGHUP before the app's lifespan installs its reload handler would end this worker: ignore it
    # until then (the config is being read right now anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log_format = os.environ.get("CROSSOVER_LOG_FORMAT", "plain")
    logs.configure("json" if log_format == "json" else "plain", os.environ.get("CROSSOVER_LOG_LEVEL", "info"))
    path = os.environ.get("CROSSOVER_CONFIG")
    loader = (lambda: load(path)) if path else None
    workers = max(1, int(os.environ.get("CROSSOVER_WORKERS", "1")))
    try:
        settings = _settings(path)
    except ConfigError as exc:
        if validated is None:
            raise
        log.error("config file invalid, this worker serves the config checked at start-up: %s", exc)
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    serve.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=30,
        metavar="SECONDS",
        help="after SIGTERM, how long in-flight requests (streams included) may take to finish",
    )
    serve.add_argument(
        "--log-format", default="plain", choices=logs.LOG_FORMATS, help="json: one JSON object per line"
    )
    serve.add_argument(
        "--with-vllm",
        metavar="MODEL",
        help="start and supervise `vllm serve MODEL` on the local backend's port (restarted if it dies)",
    )
    serve.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for vllm serve, repeatable; write it with '=': --vllm-arg=--max-model-len=8192",
    )
    serve.add_argument(
        "--vllm-bin",
        help="the vllm executable, or a vLLM environment's python (default: CROSSOVER_VLLM_BIN, or vllm on PATH)",
    )
    serve.add_argument("--vllm-backend", default="local", help="the backend vLLM serves (default: local)")
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
    logs.configure(getattr(args, "log_format", "plain"), getattr(args, "log_level", "info"))
    try:
        code: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`crossover classify ... | head`): not an error worth a traceback. Python's
        # own flush at exit would fail again, so stdout goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    return code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crossover")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
