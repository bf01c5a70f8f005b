"""Modbus on the wire, server side: PDUs for function codes 1-6, 15, 16, MBAP and RTU framing.

Hand-written (no pymodbus here) so the collector's pymodbus client is checked against an
independent implementation, and so faults can bend any byte of a reply.
"""

from __future__ import annotations

import struct
from typing import Literal, Protocol

__all__ = [
    "GATEWAY_TARGET_FAILED",
    "ILLEGAL_ADDRESS",
    "ILLEGAL_FUNCTION",
    "ILLEGAL_VALUE",
    "ModbusError",
    "Slave",
    "crc16",
    "exception_pdu",
    "handle_pdu",
    "mbap_frame",
    "rtu_frame",
    "split_rtu_requests",
]

Table = Literal["coil", "discrete", "holding", "input"]

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
GATEWAY_TARGET_FAILED = 0x0B

_READS: dict[int, tuple[Table, int]] = {
    1: ("coil", 2000),
    2: ("discrete", 2000),
    3: ("holding", 125),
    4: ("input", 125),
}


class ModbusError(Exception):
    """Raised by a slave to answer with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code:#04x}")
        self.code = code


class Slave(Protocol):
    """What a unit on the bus must offer; values are 0/1 for bit tables, 0..65535 for registers.

    Both raise ModbusError(ILLEGAL_ADDRESS) for addresses outside the unit's map.
    """

    def read(self, table: Table, address: int, count: int) -> list[int]: ...

    def write(self, table: Table, address: int, values: list[int]) -> None: ...


def exception_pdu(function: int, code: int) -> bytes:
    return bytes([(function | 0x80) & 0xFF, code])


def handle_pdu(slave: Slave, pdu: bytes) -> bytes:
    """The response PDU for a request PDU, including exception responses."""
    function = pdu[0] if pdu else 0
    try:
        return _dispatch(slave, function, pdu[1:])
    except ModbusError as exc:
        return exception_pdu(function, exc.code)


def _dispatch(slave: Slave, function: int, body: bytes) -> bytes:
    if function in _READS:
        table, limit = _READS[function]
        address, count = _unpack(">HH", body)
        if not 1 <= count <= limit:
            raise ModbusError(ILLEGAL_VALUE)
        values = slave.read(table, address, count)
        data = _pack_bits(values) if function <= 2 else struct.pack(f">{count}H", *values)
        return bytes([function, len(data)]) + data
    if function == 5:
        address, value = _unpack(">HH", body)
        if value not in (0x0000, 0xFF00):
            raise ModbusError(ILLEGAL_VALUE)
        slave.write("coil", address, [1 if value else 0])
        return bytes([function]) + body[:4]
    if function == 6:
        address, value = _unpack(">HH", body)
        slave.write("holding", address, [value])
        return bytes([function]) + body[:4]
    if function in (15, 16):
        address, count, size = _unpack(">HHB", body)
        data = body[5:]
        limit, expected = (1968, (count + 7) // 8) if function == 15 else (123, 2 * count)
        if not 1 <= count <= limit or size != expected or len(data) != expected:
            raise ModbusError(ILLEGAL_VALUE)
        if function == 15:
            slave.write("coil", address, [(data[i // 8] >> (i % 8)) & 1 for i in range(count)])
        else:
            slave.write("holding", address, list(struct.unpack(f">{count}H", data)))
        return bytes([function]) + body[:4]
    raise ModbusError(ILLEGAL_FUNCTION)


def _unpack(fmt: str, body: bytes) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if len(body) < size:
        raise ModbusError(ILLEGAL_VALUE)
    return struct.unpack(fmt, body[:size])


def _pack_bits(values: list[int]) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, bit in enumerate(values):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def mbap_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP frame: transaction id, protocol 0, length, unit id, PDU."""
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/Modbus (reflected 0x8005, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def _request_size(buffer: bytes) -> int | None:
    """Length of the RTU request starting the buffer; None if more bytes are needed, 0 if the
    function code does not tell (then only the CRC over everything received can)."""
    function = buffer[1]
    if 1 <= function <= 6:
        return 8
    if function in (15, 16):
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return 0


def split_rtu_requests(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete, CRC-checked RTU requests at the start of `buffer`, and the bytes left over.

    A frame with a bad CRC throws away everything buffered, as a device does while it waits for
    the next silence on the line: the master times out and retries.
    """
    frames: list[bytes] = []
    while len(buffer) >= 4:
        size = _request_size(buffer)
        if size is None:
            break
        if size == 0:
            if crc16(buffer) != 0:  # the CRC of a frame including its own CRC is 0
                break
            size = len(buffer)
        if len(buffer) < size:
            break
        frame, buffer = buffer[:size], buffer[size:]
        if crc16(frame) != 0:
            return frames, b""
        frames.append(frame)
    return frames, buffer
