"""Config reload on file change and on SIGHUP: in-flight requests finish, a bad file is refused."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway
from tests.workers import replace_every_worker, wait_for_workers

HI = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


def config(sim: Server, threshold: float, watch: bool) -> dict[str, Any]:
    return {
        "server": {"watch_config": watch},
        "backends": {"openai": sim_backend(sim, {"name": "gpt-4o"}, {"name": "gpt-4o-mini"})},
        "routers": {"auto": {"local": "openai/gpt-4o-mini", "api": "openai/gpt-4o", "threshold": threshold}},
    }


def threshold_in_use(server: Server) -> str:
    response = httpx.post(server.url + "/v1/chat/completions", json=HI, timeout=10)
    assert response.status_code == 200
    return response.headers["x-crossover-threshold"]


def wait_for_threshold(server: Server, expected: str, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while threshold_in_use(server) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threshold_in_use(server) == expected


def test_file_change_reloads_and_bad_file_is_refused(tmp_path: Path, openai_sim: Server) -> None:
    server = start_gateway(tmp_path, config(openai_sim, 0.5, watch=True), env={"SIM_OPENAI_KEY": SIM_KEY})
    path = tmp_path / "gateway.yaml"
    try:
        assert threshold_in_use(server) == "0.5000"
        # A slow request is in flight while the config changes under it.
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 2.5}])
        slow: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: slow.update(
                r=httpx.post(server.url + "/v1/chat/completions", json={**HI, "model": "gpt-4o"}, timeout=10)
            )
        )
        thread.start()
        time.sleep(0.3)
        path.write_text(yaml.safe_dump(config(openai_sim, 0.0, watch=True)))
        wait_for_threshold(server, "0.0000")
        thread.join()
        assert slow["r"].status_code == 200
        assert slow["r"].json()["choices"][0]["message"]["content"] == "echo: hi"
        # Everything now scores at or above 0: routed to the API.
        assert httpx.post(server.url + "/v1/chat/completions", json=HI).headers["x-crossover-route"] == "api"

        bad = config(openai_sim, 0.0, watch=True)
        bad["routers"]["auto"]["threshold"] = 7
        path.write_text(yaml.safe_dump(bad))
        time.sleep(2.5)
        assert threshold_in_use(server) == "0.0000"
        assert "config reload rejected" in server.log_text()
        assert "routers.auto.threshold" in server.log_text()
        metrics = httpx.get(server.url + "/metrics").text
        assert 'crossover_config_reloads_total{result="rejected"} 1.0' in metrics
        assert 'crossover_config_reloads_total{result="applied"} 1.0' in metrics
    finally:
        server.stop()


def test_sighup_reloads(tmp_path: Path, openai_sim: Server) -> None:
    server = start_gateway(tmp_path, config(openai_sim, 0.5, watch=False), env={"SIM_OPENAI_KEY": SIM_KEY})
    try:
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config(openai_sim, 0.25, watch=False)))
        time.sleep(1.5)
        assert threshold_in_use(server) == "0.5000"  # not watching: nothing changes by itself
        server.process.send_signal(signal.SIGHUP)
        wait_for_threshold(server, "0.2500")
    finally:
        server.stop()


def reloads(server: Server, result: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    line = f'crossover_config_reloads_total{{result="{result}"}} '
    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


def wait_for_reloads(server: Server, result: str, count: float) -> None:
    deadline = time.monotonic() + 20
    while reloads(server, result) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert reloads(server, result) == count


def test_sighup_with_two_workers_reloads_each_and_counts_a_bad_file(
    tmp_path: Path, openai_sim: Server
) -> None:
    server = start_gateway(
        tmp_path, config(openai_sim, 0.5, watch=False), workers=2, env={"SIM_OPENAI_KEY": SIM_KEY}
    )
    path = tmp_path / "gateway.yaml"
    try:
        wait_for_workers(server)  # /healthz answered from one; both must be up to count two reloads
        bad = config(openai_sim, 0.25, watch=False)
        bad["routers"]["auto"]["threshold"] = 7
        path.write_text(yaml.safe_dump(bad))
        server.process.send_signal(signal.SIGHUP)
        wait_for_reloads(server, "rejected", 2)  # each worker tried, and kept its config
        log = server.log_text()
        assert "Traceback" not in log
        assert log.count("config reload rejected") == 2 and "routers.auto.threshold" in log
        assert {threshold_in_use(server) for _ in range(10)} == {"0.5000"}

        path.write_text(yaml.safe_dump(config(openai_sim, 0.25, watch=False)))
        server.process.send_signal(signal.SIGHUP)
        wait_for_reloads(server, "applied", 2)
        assert {threshold_in_use(server) for _ in range(10)} == {"0.2500"}
    finally:
        server.stop()


def test_a_worker_restarted_while_the_file_is_bad_serves_the_checked_config(
    tmp_path: Path, openai_sim: Server
) -> None:
    """uvicorn's supervisor stops everything when a replacement worker fails to start: a crash while the
    file is bad (a rejected edit, say) must not take the whole gateway down."""
    server = start_gateway(
        tmp_path, config(openai_sim, 0.5, watch=False), workers=2, env={"SIM_OPENAI_KEY": SIM_KEY}
    )
    try:
        # A worker still starting when the file turns bad would say so too: only replacements may.
        wait_for_workers(server)
        bad = config(openai_sim, 0.25, watch=False)
        bad["routers"]["auto"]["threshold"] = 7
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(bad))
        replace_every_worker(server)
        assert server.process.poll() is None
        assert {threshold_in_use(server) for _ in range(10)} == {"0.5000"}
        # A replacement's process exists before its app has started and said so: wait for both to say it.
        said = "this worker serves the config checked at start-up"
        deadline = time.monotonic() + 30
        while server.log_text().count(said) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = server.log_text()
        assert "Traceback" not in log
        assert log.count(said) == 2
    finally:
        server.stop()
