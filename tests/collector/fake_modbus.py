"""An in-memory Modbus device behind the source's client seam, for unit tests without sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusIOException


@dataclass
class FakeResponse:
    registers: list[int] = field(default_factory=list)
    bits: list[bool] = field(default_factory=list)
    exception_code: int = 0

    def isError(self) -> bool:
        return self.exception_code != 0


@dataclass
class FakeLink:
    """One link with several units; `fault` per unit: None, 'timeout' or an exception code."""

    tables: dict[tuple[int, str], dict[int, int]] = field(default_factory=dict)
    faults: dict[int, Any] = field(default_factory=dict)
    reachable: bool = True
    drops_every_read: bool = False  # accepts connections, then closes them at the first read
    # As a strict device: an address never `set` is exception 2, a table of a unit with none
    # set is exception 1, and a unit with no table at all does not answer.
    strict: bool = False
    aligned: int = 0  # strict, and reads must start and end on multiples of this (Eastron: 2)
    lose_every: int = 0  # every n-th request gets no answer (a noisy RS-485 line)
    requests: list[tuple[int, str, int, int]] = field(default_factory=list)
    connects: int = 0
    _connected: bool = False

    def set(self, unit: int, table: str, address: int, *values: int) -> None:
        registers = self.tables.setdefault((unit, table), {})
        for offset, value in enumerate(values):
            registers[address + offset] = value

    def cut(self) -> None:
        self.reachable = False
        self._connected = False

    # The client seam -------------------------------------------------------------------------
    def __call__(self, device: Any, trace: Any) -> FakeLink:
        return self

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> bool:
        self.connects += 1
        self._connected = self.reachable
        return self._connected

    def close(self) -> None:
        self._connected = False

    async def _read(self, table: str, address: int, count: int, unit: int) -> FakeResponse:
        if not self._connected:
            raise ConnectionException("fake link is down")
        self.requests.append((unit, table, address, count))
        if self.drops_every_read:
            self._connected = False
            raise ConnectionException("connection closed by the peer")
        fault = self.faults.get(unit)
        if fault == "timeout":
            raise ModbusIOException("no response")
        if isinstance(fault, int):
            return FakeResponse(exception_code=fault)
        if self.lose_every and len(self.requests) % self.lose_every == 0:
            raise ModbusIOException("no response (lost on the line)")
        values = self.tables.get((unit, table), {})
        if self.aligned and (address % self.aligned or count % self.aligned):
            return FakeResponse(exception_code=2)
        if self.strict:
            if not any(u == unit for u, _ in self.tables):
                raise ModbusIOException("no response")
            if not values:
                return FakeResponse(exception_code=1)
            if any(a not in values for a in range(address, address + count)):
                return FakeResponse(exception_code=2)
        data = [values.get(a, 0) for a in range(address, address + count)]
        if table in ("coil", "discrete"):
            return FakeResponse(bits=[bool(v) for v in data])
        return FakeResponse(registers=data)

    async def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return await self._read("coil", address, count, device_id)

    async def read_discrete_inputs(
        self, address: int, *, count: int = 1, device_id: int = 1
    ) -> Any:
        return await self._read("discrete", address, count, device_id)

    async def read_holding_registers(
        self, address: int, *, count: int = 1, device_id: int = 1
    ) -> Any:
        return await self._read("holding", address, count, device_id)

    async def read_input_registers(
        self, address: int, *, count: int = 1, device_id: int = 1
    ) -> Any:
        return await self._read("input", address, count, device_id)
