"""The sink's HTTP/1.1 transport against a real server on a loopback port, scripted per test:
what it sends, how it reads each way an answer can be framed, and how it fails."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from collector.sinks.http1 import CLOSE_WAIT, MAX_BODY, Http1Transport


@dataclass
class Received:
    head: list[bytes]
    body: bytes


@dataclass
class Server:
    """Answers each request with the next of `answers` (raw bytes, or a coroutine given the
    writer); records what came, and how many connections."""

    answers: list[bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]]
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while self.answers:
                head = []
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    head.append(line.rstrip(b"\r\n"))
                if not head:
                    return
                length = next(
                    int(h.split(b":", 1)[1])
                    for h in head
                    if h.lower().startswith(b"content-length")
                )
                self.received.append(Received(head, await reader.readexactly(length)))
                answer = self.answers.pop(0)
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over: a handler still hanging ends quietly (asyncio's streams
            # log a cancelled handler as an error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(
    *answers: bytes | Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Server]:
    server = Server(list(answers))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        for handler in server.handlers:
            handler.cancel()
        await asyncio.gather(*server.handlers)
        listener.close()
        await listener.wait_closed()


async def post(
    transport: Http1Transport, url: str, body: bytes = b"m v=1 1\n", **headers: str
) -> httpx.Response:
    request = httpx.Request("POST", f"{url}/write?db=d&precision=ms", content=body, headers=headers)
    return await transport.handle_async_request(request)


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.8\r\n\r\n"


async def test_the_request_goes_as_given_and_a_204_is_read() -> None:
    async with serving(NO_CONTENT) as server, Http1Transport(timeout=5) as transport:
        response = await post(transport, server.url, Authorization="Token t")
    assert response.status_code == 204 and response.content == b""
    assert response.headers["x-influxdb-version"] == "1.8"
    [got] = server.received
    assert got.head[0] == b"POST /write?db=d&precision=ms HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in got.head
    assert b"Authorization: Token t" in got.head
    assert b"Content-Length: 8" in got.head
    assert got.body == b"m v=1 1\n"


async def test_one_connection_carries_every_request() -> None:
    async with (
        serving(NO_CONTENT, NO_CONTENT, NO_CONTENT) as server,
        Http1Transport(timeout=5) as transport,
    ):
        for n in range(3):
            assert (await post(transport, server.url, body=b"x" * n)).status_code == 204
    assert server.connections == 1
    assert [r.body for r in server.received] == [b"", b"x", b"xx"]


async def late_close(writer: asyncio.StreamWriter) -> None:
    # HTTP/1.0, no length: the body is what comes until the close, here in two parts.
    writer.write(b'HTTP/1.0 400 Bad Request\r\n\r\n{"error":')
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b'"unable to parse"}\n')
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n"
        b'{"error":"unable to parse"}\n',
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'a;x=1\r\n{"error":"\r\n12\r\nunable to parse"}\n\r\n0\r\nTrailer: t\r\n\r\n',
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 28\r\n\r\n"
        b'{"error":"unable to parse"}\n',
        late_close,
    ],
    ids=["content-length", "chunked", "after-100-continue", "until-close"],
)
async def test_an_answer_is_read_however_it_is_framed(
    answer: bytes | Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async with serving(answer, NO_CONTENT) as server, Http1Transport(timeout=5) as transport:
        response = await post(transport, server.url)
        assert response.status_code == 400
        assert response.json() == {"error": "unable to parse"}
        assert response.reason_phrase == "Bad Request"
        assert (await post(transport, server.url)).status_code == 204  # and it goes on
    assert server.connections == (2 if answer is late_close else 1)


async def test_a_server_that_stops_reading_costs_one_timeout_not_a_hang() -> None:
    stalled: list[asyncio.Task[None]] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        stalled.append(task)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)  # reads nothing: the client's large body fills the buffers
        writer.close()

    listener = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        async with Http1Transport(timeout=0.3, slow_link=float("inf")) as transport:
            started = loop.time()
            with pytest.raises(httpx.ReadTimeout):
                await post(transport, f"http://127.0.0.1:{port}", body=b"x" * 50_000_000)
            # Cut, not closed politely: that would wait CLOSE_WAIT more for the stalled server.
            assert loop.time() - started < 0.3 + CLOSE_WAIT
    finally:
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled)
        listener.close()
        await listener.wait_closed()


async def test_a_connection_closed_while_idle_is_replaced_and_the_request_sent_again() -> None:
    async def close(writer: asyncio.StreamWriter) -> None:
        writer.write(NO_CONTENT)
        await writer.drain()
        writer.transport.abort()  # as an idle timeout on the server's side

    async with serving(close, NO_CONTENT) as server, Http1Transport(timeout=5) as transport:
        assert (await post(transport, server.url, body=b"first")).status_code == 204
        await asyncio.sleep(0.05)
        assert (await post(transport, server.url, body=b"second")).status_code == 204
    assert [r.body for r in server.received] == [b"first", b"second"]
    assert server.connections == 2


async def test_a_kept_connection_closed_as_the_request_came_is_tried_once_more() -> None:
    async def drop(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # the request was read, no answer: a close racing with it

    async with (
        serving(NO_CONTENT, drop, NO_CONTENT, drop) as server,
        Http1Transport(timeout=5) as transport,
    ):
        assert (await post(transport, server.url, body=b"first")).status_code == 204
        assert (await post(transport, server.url, body=b"second")).status_code == 204
        # Dropped again on the new connection: the server is failing, an error (no third try).
        with pytest.raises(httpx.ReadError):
            await post(transport, server.url, body=b"third")
    assert [r.body for r in server.received] == [b"first", b"second", b"second", b"third"]


async def test_no_server_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens there once the probe is closed
    async with Http1Transport(timeout=5) as transport:
        with pytest.raises(httpx.ConnectError) as refused:
            await post(transport, f"http://127.0.0.1:{port}")
        with pytest.raises(httpx.ConnectError) as unknown:
            await post(transport, "http://influx.invalid:8086")
    assert str(refused.value) == "Connection refused"
    assert str(unknown.value).startswith("cannot resolve the host name (")


async def test_a_server_that_does_not_answer_times_out_and_the_next_request_starts_afresh() -> None:
    async def hang(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with serving(hang, NO_CONTENT) as server, Http1Transport(timeout=0.2) as transport:
        with pytest.raises(httpx.ReadTimeout, match=r"no answer within 0\.2 s"):
            await post(transport, server.url)
        assert (await post(transport, server.url)).status_code == 204
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "is not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", "is not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "two differ"),
        (f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), "an answer of"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "limit"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "transfer coding",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", "chunk size"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switch of protocols"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.1 status line"),
    ],
    ids=[
        "not-http",
        "bad-header",
        "bad-length",
        "signed-length",
        "two-lengths",
        "too-large",
        "long-line",
        "other-coding",
        "other-coding-on-two-lines",
        "bad-chunk-size",
        "upgrade",
        "four-digit-status",
    ],
)
async def test_an_answer_that_is_not_http_is_a_protocol_error(answer: bytes, message: str) -> None:
    async with serving(answer) as server, Http1Transport(timeout=5) as transport:
        with pytest.raises(httpx.RemoteProtocolError, match=message):
            await post(transport, server.url)


async def test_a_server_that_closes_in_the_middle_of_an_answer_is_a_read_error() -> None:
    cut = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\n{"error"'
    async with serving(cut) as server, Http1Transport(timeout=5) as transport:
        with pytest.raises(httpx.ReadError):
            await post(transport, server.url)


async def test_a_cancelled_request_leaves_no_connection_behind() -> None:
    async def hang(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with serving(hang, NO_CONTENT) as server, Http1Transport(timeout=5) as transport:
        pending = asyncio.create_task(post(transport, server.url))
        await asyncio.sleep(0.1)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert (await post(transport, server.url)).status_code == 204
    assert server.connections == 2


async def test_only_plain_http_is_served_and_a_header_cannot_smuggle_a_line() -> None:
    async with Http1Transport(timeout=5) as transport:
        with pytest.raises(httpx.UnsupportedProtocol, match="https"):
            await post(transport, "https://127.0.0.1:1")
        with pytest.raises(httpx.LocalProtocolError, match="line break"):
            await post(transport, "http://127.0.0.1:1", Authorization="Token t\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="timeout must be more than 0 seconds, not 0"):
        Http1Transport(timeout=0)


async def test_a_204_that_carries_a_body_anyway_is_not_read_into_the_next_answer() -> None:
    wrong = b"HTTP/1.1 204 No Content\r\nContent-Length: 20\r\n\r\nHTTP/1.1 500 Oops\r\n\r\n"
    async with serving(wrong, NO_CONTENT) as server, Http1Transport(timeout=5) as transport:
        assert (await post(transport, server.url)).status_code == 204
        assert (await post(transport, server.url)).status_code == 204
        assert server.connections == 2  # the first, with its stray bytes, was not kept


async def test_a_large_body_is_given_time_for_its_size() -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.4)  # longer than the timeout, shorter than the time for the body
        writer.write(NO_CONTENT)

    async with (
        serving(slow, slow) as server,
        Http1Transport(timeout=0.2, slow_link=1_000_000) as transport,
    ):
        response = await post(transport, server.url, body=b"m v=1 1\n" * 100_000)  # +0.8 s
        assert response.status_code == 204
        with pytest.raises(httpx.ReadTimeout):
            await post(transport, server.url)  # 8 bytes: 0.2 s
