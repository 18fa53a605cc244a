"""The worker processes of a `crossover serve --workers N` under test, seen through /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from tests.servers import Server

T = TypeVar("T")


def worker_pids(server: Server) -> set[int]:
    """uvicorn's worker processes (spawned by multiprocessing), not its resource tracker."""
    pid = server.process.pid
    workers = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):  # it exited meanwhile
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(int(child))
    return workers


def multiproc_dir(server: Server) -> Path:
    pid = min(worker_pids(server))
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return Path(
        next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode()
    )


def replace_every_worker(server: Server) -> None:
    """kill -9 each worker in turn, each time waiting until the supervisor has started its replacement."""
    for pid in worker_pids(server):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (pid in worker_pids(server) or len(worker_pids(server)) < 2):
            time.sleep(0.2)
        assert pid not in worker_pids(server) and len(worker_pids(server)) == 2
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200


def wait_for_workers(server: Server, count: int = 2) -> None:
    """Until every worker's app has started: before that, a worker ignores SIGHUP (nothing to reload)."""
    deadline = time.monotonic() + 30
    while server.log_text().count("Application startup complete.") < count:
        assert time.monotonic() < deadline, "the workers did not all start"
        time.sleep(0.1)


def folded(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 10) -> T:
    """`read()` again until `done` with it: a worker's buffered metric writes reach the other workers'
    /metrics at its next fold, within FOLD_SECONDS (gateway/metric_buffer.py); the scraped worker's own
    are always there."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value
