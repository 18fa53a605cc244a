"""The auto-pipelined Redis wire against a real redis-server: commands sent while the connection is
being set up (AUTH, SELECT) or by a caller that leaves go where and as they should."""

from __future__ import annotations

import asyncio

import redis as redis_client

from gateway.config import Redis
from gateway.limit_store import RedisStore, Window
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from gateway.redis_wire import RedisWire
from tests.services import redis_server


def test_commands_sent_while_the_connection_authenticates_run_in_the_selected_database() -> None:
    """A command sent between the connection's opening and its SELECT ran in database 0: it was held
    behind the AUTH and written before the SELECT."""
    with redis_server(password="s3cret") as server:
        wire = RedisWire(server.url.replace("/0", "/2"), 5.0)

        async def scenario() -> int:
            calls = [asyncio.ensure_future(wire.call("INCR", "k"))]
            while not calls[0].done():  # one more on every turn of the loop while the first connects
                calls.append(asyncio.ensure_future(wire.call("INCR", "k")))
                await asyncio.sleep(0)
            await asyncio.gather(*calls)
            wire.close()
            await asyncio.sleep(0)  # the aborted transport closes its socket on the next turn
            return len(calls)

        sent = asyncio.run(scenario())
        assert redis_client.Redis(port=server.port, password="s3cret", db=0).get("k") is None
        assert redis_client.Redis(port=server.port, password="s3cret", db=2).get("k") == str(sent).encode()


def test_a_caller_cancelled_while_connecting_does_not_fail_the_others() -> None:
    """The connection's set-up ran in the first caller's task: its client leaving cancelled it, and
    every caller waiting on it was told Redis is unreachable (RedisLink then counts Redis as down)."""
    with redis_server(password="s3cret") as server:
        wire = RedisWire(server.url, 5.0)

        async def scenario() -> object:
            first = asyncio.ensure_future(wire.call("PING"))
            second = asyncio.ensure_future(wire.call("PING"))
            await asyncio.sleep(0)  # both are waiting on the connection
            first.cancel()
            try:
                return await second
            finally:
                wire.close()
                await asyncio.sleep(0)  # the aborted transport closes its socket on the next turn

        assert asyncio.run(scenario()) == b"PONG"


def test_a_server_that_does_not_speak_redis_is_an_outage_without_a_traceback() -> None:
    """A Redis URL pointing at another service (here one answering as HTTP does): hiredis's protocol
    error escaped the protocol, and the loop logged it with a traceback on every retry."""

    async def scenario() -> tuple[object, list[dict[str, object]]]:
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            await writer.wait_closed()

        loop = asyncio.get_running_loop()
        escaped: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: escaped.append(context))
        server = await asyncio.start_server(http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = RedisLink(Redis(f"redis://127.0.0.1:{port}/0", "t", 2.0, 5.0), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("r1", [Window("key:a:requests", 3, 1)], [])
        await store.close()
        await link.close()
        server.close()
        await server.wait_closed()
        return verdict, escaped

    verdict, escaped = asyncio.run(scenario())
    assert verdict is None  # Redis is unreachable: the limits' local answer
    assert escaped == []
