"""A tiny HTTP/1.1 control endpoint (loopback only) to fault, freeze and inspect a running
simulator from a shell, e.g.
  curl -X POST localhost:5019/faults -d '{"device": "press-plc", "kind": "drop"}'

Routes (JSON in and out):
  GET    /devices          devices, endpoints, machines, states, faults, request counts
  GET    /boards           MQTT boards: firmware, machine, topics, online, fault, messages sent
  GET    /faults           {"target": "kind[:arg]"}
  POST   /faults           {"device": NAME|"all", "kind": KIND, "arg": NUMBER?} (NAME: a device,
                           machine or board)
  DELETE /faults/NAME      clear one device's, machine's or board's fault ("all": every fault)
  POST   /freeze           hold simulated time still
  POST   /unfreeze
  POST   /advance          {"seconds": N}: jump simulated time forward
  GET    /time             {"time": ISO 8601 in the plant's zone, "frozen": bool}
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.simulator import Simulator

__all__ = ["ControlServer"]


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        self.sim, self.host, self.port = sim, host, port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            status, body = await self._answer(reader)
            payload = json.dumps(body, indent=1).encode() + b"\n"
            writer.write(
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled only by close(); see TcpServer._connection for why we end quietly
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[HTTPStatus, Any]:
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            if len(request_line) < 2:
                raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise _HttpError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return HTTPStatus.OK, await self._route(request_line[0], request_line[1], body)
        except _HttpError as exc:
            return exc.status, {"error": str(exc)}
        except (ValueError, KeyError) as exc:  # bad JSON, unknown device, bad fault
            message = exc.args[0] if exc.args else str(exc)
            return HTTPStatus.BAD_REQUEST, {"error": str(message)}

    async def _route(self, method: str, path: str, body: dict[str, Any]) -> Any:
        sim = self.sim
        if (method, path) == ("GET", "/devices"):
            return sim.describe()
        if (method, path) == ("GET", "/boards"):
            return sim.describe_boards()
        if (method, path) == ("GET", "/faults"):
            return {target: fault.describe() for target, fault in sim.faults().items()}
        if (method, path) == ("POST", "/faults"):
            if "device" not in body or "kind" not in body:
                raise _HttpError(HTTPStatus.BAD_REQUEST, 'expected {"device": .., "kind": ..}')
            await sim.set_fault(str(body["device"]), str(body["kind"]), body.get("arg"))
            return {"ok": True}
        if method == "DELETE" and path.startswith("/faults/"):
            await sim.clear_fault(path.removeprefix("/faults/"))
            return {"ok": True}
        if (method, path) == ("POST", "/freeze"):
            sim.freeze()
            return {"frozen": True}
        if (method, path) == ("POST", "/unfreeze"):
            sim.unfreeze()
            return {"frozen": False}
        if (method, path) == ("POST", "/advance"):
            sim.advance(float(body.get("seconds", 0)))
            return {"time": sim.now().isoformat()}
        if (method, path) == ("GET", "/time"):
            return {"time": sim.now().isoformat(), "frozen": sim.frozen}
        raise _HttpError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
