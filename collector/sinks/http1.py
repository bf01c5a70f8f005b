"""A lean HTTP/1.1 transport for the sink's requests to one InfluxDB: one kept-alive connection,
requests written and answers parsed on plain asyncio streams.

httpx's client and httpcore spend about a millisecond of CPU on each request, five times what
this does; the sink makes one a second, on machines where that millisecond is a tenth of the
collector's CPU (`make bench`). It serves `httpx.AsyncBaseTransport`'s one method, so the sink
builds and reads `httpx.Request` and `httpx.Response` as before, tests swap in
`httpx.MockTransport` through the same seam, and failures are httpx's own exceptions.

Only what InfluxDB's HTTP API needs: plain `http://` (https goes through httpx's transport),
bodies given whole, answers sized by Content-Length, chunked or ended by a close; no proxies, no
redirects, no upgrades. A request on a kept-alive connection that the server closed
meanwhile (or as the request came) is sent once more on a new one: writes to InfluxDB are
idempotent. `timeout` bounds a request as a whole, connecting, sending and the answer
together, plus a second for each 64 KiB of its body: a batch that crosses a slow link to a
network's InfluxDB is given time for its size, so that retrying it is not the same timeout again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import httpx

__all__ = ["Http1Transport"]

MAX_LINE = 64 * 1024  # a status or header line longer than this is not an InfluxDB answer
MAX_HEADERS = 100
MAX_BODY = 64 * 1024 * 1024  # an answer larger than this is refused (InfluxDB's are small)
CLOSE_WAIT = 1.0  # seconds a graceful close may take before the connection is cut
SLOW_LINK = 64 * 1024  # bytes a second a body is given on top of `timeout` (a 512 kbit/s link)


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this transport reads it."""


class Http1Transport(httpx.AsyncBaseTransport):
    """`handle_async_request` for `http://` URLs, each within `timeout` seconds in all."""

    def __init__(self, *, timeout: float, slow_link: float = SLOW_LINK) -> None:
        """`slow_link`: the bytes a second a request's body is given time for, on top."""
        if not timeout > 0:
            raise ValueError(f"timeout must be more than 0 seconds, not {timeout}")
        self.timeout = timeout
        self.slow_link = slow_link
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._origin: tuple[str, int] | None = None
        self._lock = asyncio.Lock()  # one request at a time on the one connection

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"Http1Transport serves http:// only, not {url.scheme}://", request=request
            )
        origin = (url.host, url.port or 80)
        head = self._head(request)
        body = request.content
        async with self._lock:
            if self._origin != origin:
                await self._close()
                self._origin = origin
            allowed = self.timeout + len(body) / self.slow_link
            try:
                async with asyncio.timeout(allowed):
                    reused = self._streams is not None
                    try:
                        return await self._exchange(request, head, body)
                    except (ConnectionError, asyncio.IncompleteReadError, _Closed):
                        if not reused:
                            raise
                    # The kept-alive connection was closed by the server (idle, or as this
                    # request came): once more, on a new one. Writes are idempotent.
                    self._abort()
                    return await self._exchange(request, head, body)
            except TimeoutError as exc:
                self._abort()  # where the answer stands is unknown: start afresh
                if exc.errno is not None:  # the network's (ETIMEDOUT), not our deadline
                    raise httpx.ReadError(str(exc), request=request) from exc
                raise httpx.ReadTimeout(
                    f"no answer within {allowed:.3g} s", request=request
                ) from exc
            except _ConnectFailed as exc:
                self._abort()
                raise httpx.ConnectError(_why(exc.__cause__), request=request) from exc
            except (ConnectionError, asyncio.IncompleteReadError, _Closed) as exc:
                self._abort()
                raise httpx.ReadError(
                    str(exc) or "the server closed the connection", request=request
                ) from exc
            except OSError as exc:  # the network: no route to the host any more, and such
                self._abort()
                raise httpx.ReadError(str(exc), request=request) from exc
            except (_ProtocolError, asyncio.LimitOverrunError, ValueError) as exc:
                self._abort()
                raise httpx.RemoteProtocolError(str(exc), request=request) from exc
            except BaseException:
                self._abort()  # cancelled mid-request: the connection is in an unknown state
                raise

    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        url = request.url
        lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), url.raw_path)]
        for name, value in request.headers.raw:  # as given, Host among them (httpx adds it)
            if name.lower() in (b"content-length", b"transfer-encoding", b"connection"):
                continue  # set below, for the whole body given at once
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise httpx.LocalProtocolError(
                    f"header {name.decode('latin-1')!r} holds a line break", request=request
                )
            lines.append(name + b": " + value)
        lines.append(b"Content-Length: %d" % len(request.content))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _exchange(self, request: httpx.Request, head: bytes, body: bytes) -> httpx.Response:
        reader, writer = await self._connection()
        writer.write(head + body)  # one send for the usual batch
        await writer.drain()
        while True:
            status_line = await reader.readline()
            if not status_line:
                raise _Closed("the server closed the connection")
            version, status = _status(status_line)
            if status == 101:
                raise _ProtocolError("a switch of protocols, which was not asked for")
            if not 100 <= status < 200:
                break
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # an interim answer (100 Continue from a proxy): the real one follows
        headers: list[tuple[bytes, bytes]] = []
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise _Closed("the server closed the connection in the middle of an answer")
            if len(headers) >= MAX_HEADERS:
                raise _ProtocolError(f"more than {MAX_HEADERS} header lines")
            name, colon, value = line.partition(b":")
            if not colon:
                raise _ProtocolError(f"not a header line: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        fields: dict[bytes, bytes] = {}
        for name, value in headers:
            key = name.lower()
            if key == b"content-length" and fields.get(key, value) != value:
                raise _ProtocolError("two different Content-Length headers")
            if key == b"transfer-encoding" and key in fields:
                value = fields[key] + b", " + value  # one list, as if on one line
            fields[key] = value
        keep = version == b"HTTP/1.1" and fields.get(b"connection", b"").lower() != b"close"
        coding = fields.get(b"transfer-encoding")
        if status in (204, 304) or request.method == "HEAD":
            content = b""  # none, whatever the headers say
            if status == 204 and (coding or fields.get(b"content-length", b"0") != b"0"):
                keep = False  # a body it should not have sent would be read as the next answer
        elif coding is not None:
            if coding.lower() != b"chunked":
                raise _ProtocolError(f"an answer in transfer coding {coding[:40]!r}")
            content = await _chunked(reader)
        elif b"content-length" in fields:
            length = _digits(fields[b"content-length"], 10, "Content-Length")
            if length > MAX_BODY:
                raise _ProtocolError(f"an answer of {length} bytes")
            content = await reader.readexactly(length)
        else:
            content = await _until_close(reader)
            keep = False
        if not keep:
            await self._close()
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is not None:
            if not self._streams[0].at_eof():
                return self._streams
            await self._close()
        assert self._origin is not None
        host, port = self._origin
        try:
            self._streams = await asyncio.open_connection(host, port, limit=MAX_LINE)
        except OSError as exc:
            raise _ConnectFailed() from exc
        return self._streams

    def _abort(self) -> None:
        # At once, whatever is still unsent: a graceful close would wait for a server that
        # stopped reading (TCP gives up only after many minutes).
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].transport.abort()

    async def _close(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await streams[1].wait_closed()
                return
            streams[1].transport.abort()

    async def aclose(self) -> None:
        async with self._lock:
            await self._close()


class _Closed(Exception):
    """The server closed the connection before its answer was whole."""


class _ConnectFailed(Exception):
    """No connection could be made (the cause says why)."""


def _why(exc: BaseException | None) -> str:
    # asyncio words a refused connection as "[Errno 111] Connect call failed ('h', 8086)": the
    # sink's message names the endpoint already, what is wanted is the reason.
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _status(line: bytes) -> tuple[bytes, int]:
    # The reason phrase is left: httpx gives the status code's own.
    version, _, rest = line.rstrip(b"\r\n").partition(b" ")
    code, after = rest[:3], rest[3:4]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or after not in (b"", b" ")
    ):
        raise _ProtocolError(f"not an HTTP/1.1 status line: {line[:80]!r}")
    return version, int(code)


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _digits(text: bytes, base: int, what: str) -> int:
    # int() would take "+5", " 5" and "1_0" too: an answer framed so is not trusted.
    ok = bool(text) and len(text) <= 16
    ok = ok and (text.isdigit() if base == 10 else all(c in _HEX for c in text))
    if not ok:
        raise _ProtocolError(f"{what} {text[:40]!r} is not a number")
    return int(text, base)


async def _until_close(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise _ProtocolError(f"an answer of more than {MAX_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        if not line:
            raise _Closed("the server closed the connection in the middle of an answer")
        length = _digits(line.split(b";", 1)[0].strip(), 16, "chunk size")
        if length == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers: none wanted
            return b"".join(parts)
        size += length
        if size > MAX_BODY:
            raise _ProtocolError(f"an answer of more than {MAX_BODY} bytes")
        parts.append(await reader.readexactly(length))
        if (await reader.readexactly(2)) != b"\r\n":
            raise _ProtocolError("a chunk not ended by CRLF")
