"""`crossover serve`'s process model: one uvicorn server, or uvicorn's supervisor over N workers, with two
changes to the supervisor.

- SIGHUP is passed to every worker, which reloads its config in place, exactly as a single worker does
  (uvicorn's own answer, restarting the workers, turned a bad file into a startup traceback in a new
  worker that nobody counted as a rejected reload).
- A worker starts with SIGHUP ignored, until its app takes the signal over: a SIGHUP that came while a
  worker was still starting used to kill it (Python's default for the signal).
- A worker that exits (crash, kill, restart) is marked dead in the shared metrics directory, so its
  `live*` gauges (requests in flight, open circuits) stop counting; its counters stay, as they should.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import Server
from uvicorn.supervisors.multiprocess import Multiprocess

from gateway.server_limits import GatewayConfig


@contextlib.contextmanager
def _hup_ignored_by_new_workers() -> Iterator[None]:
    """An ignored signal stays ignored across exec, so a worker spawned meanwhile starts ignoring it.
    (The supervisor itself would miss a SIGHUP in these few milliseconds.)"""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class Supervisor(Multiprocess):
    def init_processes(self) -> None:
        with _hup_ignored_by_new_workers():
            super().init_processes()

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def _forget_gone(self, before: set[int]) -> None:
        for pid in before - self._pids():
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    def handle_signals(self) -> None:
        before = self._pids()
        super().handle_signals()
        self._forget_gone(before)

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        with _hup_ignored_by_new_workers():
            super().keep_subprocess_alive()
        self._forget_gone(before)

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.process.is_alive():
                os.kill(process.pid, signal.SIGHUP)


def serve(app: Callable[[], object], *, workers: int, **options: Any) -> int:
    """What `uvicorn.run` does, with the gateway's HTTP limits and supervisor. Returns an exit code."""
    config = GatewayConfig(app, workers=workers, **options)
    server = Server(config=config)
    try:
        if workers > 1:
            Supervisor(config, sockets=[config.bind_socket()]).run()
            return 0
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started or workers > 1 else STARTUP_FAILURE
