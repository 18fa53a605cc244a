"""Many concurrent slow streams: can one gateway worker hold them without slowing them down?

The upstream paces each stream like a model would: six chunks 100 ms apart (a role chunk with the
first token, four tokens, then the finish chunk with `data: [DONE]`), ~0.5 s per stream. N
connections each ask for one stream after another (closed loop), so a target that adds latency
delivers fewer streams per second: `streams/s` and the p50 stream time are compared with the same N
against the upstream direct. Both the upstream and the load generator are raw asyncio protocols on
uvloop (no per-stream task, no HTTP library), so that they cost far less CPU than the target.

    python3 bench/slow_streams.py run [--row 1000] [--steps 250,500,2000,5000,9500] [--duration 8]
    python3 bench/slow_streams.py upstream --port 18084 [--interval 0.1]
    python3 bench/slow_streams.py load --url http://127.0.0.1:18084/v1/chat/completions --conc 1000

`run` starts the upstream, the gateway (`crossover serve --workers 1`, its default pool) and the bare
aiohttp forwarder (bench/forwarder.py), measures the --row (1,000 streams) for the three targets, then
searches the largest N (of --steps and --row, ascending, until one falls short) the gateway holds at
>= 0.9x direct (9,500 at most: 20,000 open files per process is this machine's hard limit, and the
gateway holds two sockets per stream). It prints Markdown; loopback
only (ports 18084-18086). RSS is the gateway's peak resident memory during a run (all its processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
UPSTREAM_PORT, GATEWAY_PORT, FORWARDER_PORT = 18084, 18085, 18086
CHUNKS = 6
BODY = b'{"model":"bench-slow","messages":[{"role":"user","content":"Hi"}],"max_tokens":16,"stream":true}'
END = b"0\r\n\r\n"  # the last chunk of a chunked body


def _raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it


def _loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


# ---- the paced upstream --------------------------------------------------------------------------


def _sse_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(delta: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-slow",
        "choices": [{"index": 0, "delta": json.loads(delta), "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
FRAMES = (
    [_sse_chunk(_event('{"role":"assistant","content":"Paris"}'))]
    + [_sse_chunk(_event(f'{{"content":" t{i}"}}')) for i in range(1, CHUNKS - 1)]
    + [_sse_chunk(_event("{}", "stop") + b"data: [DONE]\n\n") + END]
)
MODELS = b'{"object":"list","data":[{"id":"bench-slow","object":"model"}]}'
MODELS_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(MODELS),
    MODELS,
)


class PacedUpstream(asyncio.Protocol):
    """Answers any POST with the paced stream (timers, not tasks), any other request with a model list."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            if (at := head.find(b"content-length:")) >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"post"):
                self._stream()
            else:
                self._write(MODELS_ANSWER)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _stream(self) -> None:
        self._write(STREAM_HEAD + FRAMES[0])
        loop = asyncio.get_running_loop()
        for i in range(1, CHUNKS):
            loop.call_later(i * self.interval, self._write, FRAMES[i])


def serve_upstream(port: int, interval: float) -> None:
    loop = _loop()
    server = loop.run_until_complete(
        loop.create_server(lambda: PacedUpstream(interval), HOST, port, backlog=4096)
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()


# ---- the load generator --------------------------------------------------------------------------


class Stats:
    def __init__(self, start: float, stop: float) -> None:
        self.start, self.stop = start, stop  # the measured window (perf_counter)
        self.latencies: list[float] = []
        self.bad = 0
        self.errors = 0


class StreamClient(asyncio.Protocol):
    """One keep-alive connection asking for one stream after another until the window closes."""

    def __init__(self, request: bytes, stats: Stats, closed: asyncio.Future[None]) -> None:
        self.request, self.stats, self.closed = request, stats, closed
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.status_ok: bool | None = None
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.tail, self.status_ok = b"", None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.status_ok is None:
            self.status_ok = data.startswith(b"HTTP/1.1 200")
        self.tail = (self.tail + data)[-64:]
        if not self.tail.endswith(END):
            return
        now = time.perf_counter()
        if self.stats.start <= now <= self.stats.stop:
            if self.status_ok and b"[DONE]" in self.tail:
                self.stats.latencies.append(now - self.sent)
            else:
                self.stats.bad += 1
        if now < self.stats.stop:
            self._send()
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.stats.stop:
            self.stats.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def _load(url: str, conc: int, duration: float, ramp: float, warmup: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    stats = Stats(t0 + ramp + warmup, t0 + ramp + warmup + duration)
    closed: list[asyncio.Future[None]] = []

    async def open_one(delay: float) -> None:
        await asyncio.sleep(delay)
        done = loop.create_future()
        closed.append(done)
        try:
            await loop.create_connection(lambda: StreamClient(request, stats, done), host, port)
        except OSError:
            stats.errors += 1
            done.set_result(None)

    # Spread the connections over one stream's length, so they do not all ask at the same instant.
    await asyncio.gather(*(open_one(ramp * i / conc) for i in range(conc)))
    await asyncio.sleep(max(0.0, stats.stop - time.perf_counter()))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*closed), 10)
    lat = sorted(stats.latencies)
    n = len(lat)
    return {
        "conc": conc,
        "streams_per_s": n / duration,
        "p50_ms": statistics.median(lat) * 1000 if n else 0.0,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
        "bad": stats.bad,
        "errors": stats.errors,
    }


def load(url: str, conc: int, duration: float, ramp: float, warmup: float) -> dict[str, float]:
    loop = _loop()
    try:
        return loop.run_until_complete(_load(url, conc, duration, ramp, warmup))
    finally:
        loop.close()


# ---- the run: processes, measurements, report ---------------------------------------------------


def _rss_mib(pgid: int) -> float:
    """Resident memory of every process of a process group (the gateway's workers included)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def _server(cmd: list[str], log: Path, ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    import urllib.error
    import urllib.request

    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # any answer: it is up
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{cmd[:4]} did not answer {ready_url}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _measure(url: str, conc: int, args: argparse.Namespace, rss_of: int | None = None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "load", "--url", url, "--conc", str(conc)]
    cmd += ["--duration", str(args.duration), "--ramp", str(args.ramp), "--warmup", str(args.warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
    peak = 0.0
    while proc.poll() is None:
        if rss_of is not None:
            peak = max(peak, _rss_mib(rss_of))
        time.sleep(0.5)
    assert proc.stdout is not None
    result: dict[str, float] = json.loads(proc.stdout.read())
    result["rss_mib"] = peak
    return result


def _row(target: str, r: dict[str, float], direct: dict[str, float] | None) -> str:
    ratio = f"{r['streams_per_s'] / direct['streams_per_s']:.2f}x" if direct else "1x"
    added = f"{r['p50_ms'] - direct['p50_ms']:+.1f}" if direct else "-"
    rss = f"{r['rss_mib']:.0f}" if r["rss_mib"] else "-"
    return (
        f"| {target} | {r['conc']:.0f} | {r['streams_per_s']:.0f} | {ratio} | {r['p50_ms']:.1f} | {added} "
        f"| {r['p99_ms']:.1f} | {r['bad']:.0f} | {r['errors']:.0f} | {rss} |"
    )


def _steal() -> tuple[int, int]:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    return values[7], sum(values)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


def run(args: argparse.Namespace) -> int:
    taken = [p for p in (UPSTREAM_PORT, GATEWAY_PORT, FORWARDER_PORT) if not _free(p)]
    if taken:
        print(f"[streams] ports {taken} on {HOST} are in use; stop whatever listens there", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="crossover-streams."))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    direct_url = f"http://{HOST}:{UPSTREAM_PORT}/v1/chat/completions"
    gateway_url = f"http://{HOST}:{GATEWAY_PORT}/v1/chat/completions"
    forwarder_url = f"http://{HOST}:{FORWARDER_PORT}/v1/chat/completions"
    config = work / "crossover.yaml"
    config.write_text(
        "server:\n  watch_config: false\nbackends:\n  slow:\n    kind: openai_compatible\n"
        f"    base_url: http://{HOST}:{UPSTREAM_PORT}/v1\n    models:\n      - name: bench-slow\n"
    )
    py = sys.executable
    upstream = [py, __file__, "upstream", "--port", str(UPSTREAM_PORT), "--interval", str(args.interval)]
    gateway = [py, "-m", "gateway.cli", "serve", "--config", str(config), "--host", HOST]
    gateway += ["--port", str(GATEWAY_PORT), "--workers", "1", "--log-level", "warning"]
    forwarder = [py, str(HERE / "forwarder.py"), "--upstream", direct_url, "--port", str(FORWARDER_PORT)]
    lines = [
        "| target | streams | streams/s | vs direct | p50 ms | p50 added ms | p99 ms | bad | errors | RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    failed = 0
    steal0 = _steal()

    def report(target: str, r: dict[str, float], direct: dict[str, float] | None) -> None:
        nonlocal failed
        failed += int(r["bad"] + r["errors"] > 0)
        lines.append(_row(target, r, direct))
        print(f"[streams] {lines[-1]}", file=sys.stderr, flush=True)

    search: list[tuple[int, float]] = []  # (concurrent streams, gateway / direct streams/s)
    with _server(upstream, work / "upstream.log", f"http://{HOST}:{UPSTREAM_PORT}/v1/models"):
        row = args.row
        direct = _measure(direct_url, row, args)
        report("upstream direct", direct, None)
        with _server(forwarder, work / "forwarder.log", f"http://{HOST}:{FORWARDER_PORT}/") as fw:
            report("forwarder aiohttp", _measure(forwarder_url, row, args, rss_of=fw.pid), direct)
        with _server(gateway, work / "gateway.log", f"http://{HOST}:{GATEWAY_PORT}/healthz") as gw:
            g = _measure(gateway_url, row, args, rss_of=gw.pid)
            report("crossover w1", g, direct)
            known = {row: g["streams_per_s"] / direct["streams_per_s"]}
            # The search: ascending, until the gateway falls below 0.9x direct.
            for conc in sorted(set(args.steps) | {row}):
                if conc not in known:
                    d = _measure(direct_url, conc, args)
                    g = _measure(gateway_url, conc, args, rss_of=gw.pid)
                    report("upstream direct", d, None)
                    report("crossover w1", g, d)
                    known[conc] = g["streams_per_s"] / d["streams_per_s"] if d["streams_per_s"] else 0.0
                search.append((conc, known[conc]))
                if known[conc] < 0.9:
                    break
    log = (work / "gateway.log").read_text(errors="replace")
    if "Traceback" in log or "ERROR" in log:
        print(f"[streams] the gateway logged errors:\n{log[-3000:]}", file=sys.stderr)
        failed += 1
    steal1 = _steal()
    steal = 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    print(
        f"\n{args.interval * 1000:.0f} ms between chunks; {args.duration:.0f} s per run; steal {steal:.0f}%\n"
    )
    print("\n".join(lines))
    held = max((conc for conc, ratio in search if ratio >= 0.9), default=0)
    ratios = ", ".join(f"{conc}: {ratio:.2f}x" for conc, ratio in search)
    print(f"\nGateway / direct streams/s by concurrent streams: {ratios}; held at >= 0.9x: {held}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, default=UPSTREAM_PORT)
    up.add_argument("--interval", type=float, default=0.1)
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--conc", type=int, default=1000)
    for p in (ld, sub.add_parser("run")):
        p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
        p.add_argument("--ramp", type=float, default=0.5, help="seconds over which connections open")
        p.add_argument("--warmup", type=float, default=1.0, help="seconds after the ramp before measuring")
    rn = sub.choices["run"]
    rn.add_argument("--interval", type=float, default=0.1)
    rn.add_argument("--row", type=int, default=1000, help="concurrent streams of the three-target row")
    rn.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[250, 500, 2000, 5000, 9500]
    )
    args = parser.parse_args()
    _raise_fd_limit()
    if args.command == "upstream":
        serve_upstream(args.port, args.interval)
        return 0
    if args.command == "load":
        print(json.dumps(load(args.url, args.conc, args.duration, args.ramp, args.warmup)))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
