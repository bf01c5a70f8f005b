"""The three ways a simulated device is reached: Modbus TCP, RTU frames over TCP (a serial
gateway), and RTU on a pseudo-terminal standing in for an RS-485 line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

from simulators.protocol import mbap_frame, rtu_frame, split_rtu_requests

__all__ = ["PtyServer", "Reply", "Responder", "TcpServer"]

# The response PDU (None: stay silent) and whether to corrupt the frame carrying it.
Reply = tuple[bytes | None, bool]
Responder = Callable[[int, bytes], Awaitable[Reply]]

# A device forgets a half-received RTU frame after this much silence (3.5 characters at 9600
# baud is 4 ms; the margin covers a busy event loop).
_RTU_SILENCE_S = 0.1
_RTU_MAX_BUFFER = 512


def _corrupt_rtu(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])  # the CRC no longer matches


class TcpServer:
    """A listening TCP port speaking MBAP (`rtu=False`) or bare RTU frames (`rtu=True`).

    `switch_off` closes the port and every connection (a device without power); `switch_on`
    listens again on the same port.
    """

    def __init__(self, host: str, port: int, respond: Responder, *, rtu: bool) -> None:
        self.host, self.port, self.rtu = host, port, rtu
        self._respond = respond
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def switch_on(self) -> None:
        if self._server is None:
            handler = self._serve_rtu if self.rtu else self._serve_mbap
            self._server = await asyncio.start_server(handler, self.host, self.port)

    async def switch_off(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve_mbap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def frames() -> None:
            while True:
                transaction, protocol, length, unit = struct.unpack(
                    ">HHHB", await reader.readexactly(7)
                )
                if protocol != 0 or not 2 <= length <= 254:
                    return  # not Modbus: hang up, as most devices do
                pdu, corrupt = await self._respond(unit, await reader.readexactly(length - 1))
                if pdu is None:
                    continue
                if corrupt:
                    pdu = bytes(b ^ 0x5A for b in pdu)  # unknown function code, wrong lengths
                writer.write(mbap_frame(transaction, unit, pdu))
                await writer.drain()

        await self._connection(frames(), writer)

    async def _serve_rtu(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def frames() -> None:
            buffer, last = b"", 0.0
            while chunk := await reader.read(256):
                now = time.monotonic()
                buffer = (b"" if now - last > _RTU_SILENCE_S else buffer) + chunk
                last = now
                requests, buffer = split_rtu_requests(buffer[-_RTU_MAX_BUFFER:])
                for request in requests:
                    pdu, corrupt = await self._respond(request[0], request[1:-2])
                    if pdu is not None:
                        frame = rtu_frame(request[0], pdu)
                        writer.write(_corrupt_rtu(frame) if corrupt else frame)
                        await writer.drain()

        await self._connection(frames(), writer)

    async def _connection(self, frames: Awaitable[None], writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await frames
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            # Only switch_off cancels us. Ending normally matters: on Python 3.11 asyncio's
            # stream callback calls task.exception(), which raises on a cancelled task.
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()


class PtyServer:
    """RTU on a pseudo-terminal; `path` becomes a symlink to the slave side (e.g. /dev/pts/7),
    which a collector opens like a USB-RS485 adapter. Serial settings are ignored, as a pty does.
    """

    def __init__(self, path: str, respond: Responder) -> None:
        self.path = Path(path)
        self._respond = respond
        self._fds: tuple[int, int] | None = None
        self._requests: asyncio.Queue[bytes] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._buffer, self._last = b"", 0.0
        self.silent = False  # switched off: the line stays quiet

    async def switch_on(self) -> None:
        self.silent = False
        if self._fds is not None:
            return
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_symlink():
                self.path.unlink()  # left behind by a killed run
            os.symlink(os.ttyname(slave), self.path)
        except OSError:
            os.close(master)
            os.close(slave)
            raise
        # Keeping our own slave fd open stops reads on the master failing (EIO) between clients.
        self._fds = (master, slave)
        asyncio.get_running_loop().add_reader(master, self._on_readable)
        self._worker = asyncio.create_task(self._answer_requests(), name=f"pty {self.path}")

    async def switch_off(self) -> None:
        self.silent = True

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._fds is not None:
            master, slave = self._fds
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)
            os.close(slave)
            self._fds = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _on_readable(self) -> None:
        assert self._fds is not None
        try:
            chunk = os.read(self._fds[0], 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        now = time.monotonic()
        if self.silent or not chunk:
            self._buffer = b""
            return
        self._buffer = (b"" if now - self._last > _RTU_SILENCE_S else self._buffer) + chunk
        self._last = now
        requests, self._buffer = split_rtu_requests(self._buffer[-_RTU_MAX_BUFFER:])
        for request in requests:
            self._requests.put_nowait(request)

    async def _answer_requests(self) -> None:
        # One at a time, as on a half-duplex bus: a slow unit delays everyone behind it.
        while True:
            request = await self._requests.get()
            pdu, corrupt = await self._respond(request[0], request[1:-2])
            if pdu is None or self.silent or self._fds is None:
                continue
            frame = rtu_frame(request[0], pdu)
            with contextlib.suppress(OSError):  # nobody listening on the other side
                os.write(self._fds[0], _corrupt_rtu(frame) if corrupt else frame)
