"""The server on the wire, checked with pymodbus as an independent client (TCP, RTU over TCP,
RTU on a pty), plus hand-made frames for what pymodbus refuses to send."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from simulators import Simulator
from simulators.protocol import crc16, rtu_frame, split_rtu_requests

DT = AsyncModbusTcpClient.DATATYPE


@asynccontextmanager
async def client(sim: Simulator, device: str, wait: float = 1.0) -> AsyncIterator[Any]:
    endpoint = sim.endpoints[device]
    c: Any
    if endpoint.transport == "rtu":
        c = AsyncModbusSerialClient(str(endpoint.port), timeout=wait, retries=0, baudrate=9600)
    else:
        assert endpoint.host is not None and isinstance(endpoint.port, int)
        framer = FramerType.RTU if endpoint.transport == "rtu-over-tcp" else FramerType.SOCKET
        c = AsyncModbusTcpClient(
            endpoint.host, port=endpoint.port, framer=framer, timeout=wait, retries=0
        )
    assert await c.connect(), f"cannot connect to {device}"
    try:
        yield c
    finally:
        c.close()


async def raw_mbap(sim: Simulator, device: str, unit: int, pdu: bytes) -> bytes:
    """Send one hand-made Modbus TCP request, return the response PDU."""
    endpoint = sim.endpoints[device]
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        writer.write(struct.pack(">HHHB", 7, 0, len(pdu) + 1, unit) + pdu)
        header = await asyncio.wait_for(reader.readexactly(7), 2)
        transaction, protocol, length, answered_unit = struct.unpack(">HHHB", header)
        assert (transaction, protocol, answered_unit) == (7, 0, unit)
        return await reader.readexactly(length - 1)
    finally:
        writer.close()
        await writer.wait_closed()


# -- framing ------------------------------------------------------------------------------------


def test_crc16_known_vector() -> None:
    # Read holding register 0, count 1, unit 1: the textbook frame 01 03 00 00 00 01 84 0A.
    assert rtu_frame(1, bytes.fromhex("0300000001")).hex() == "010300000001840a"
    assert crc16(bytes.fromhex("010300000001840a")) == 0


def test_rtu_splitting_handles_partial_back_to_back_and_bad_frames() -> None:
    a, b = (
        rtu_frame(1, bytes.fromhex("0300000001")),
        rtu_frame(2, bytes.fromhex("10000a00020400010002")),
    )
    assert split_rtu_requests(a[:5]) == ([], a[:5])
    assert split_rtu_requests(a + b + a[:3]) == ([a, b], a[:3])
    assert split_rtu_requests(a[:-1] + b"\x00" + b) == ([], b"")  # bad CRC: resync on silence


# -- reads, types and orders, across all three transports ---------------------------------------


async def test_tcp_reads_match_the_in_process_view(sim: Simulator) -> None:
    async with client(sim, "welder-plc") as c:
        rr = await c.read_holding_registers(0, count=31, device_id=1)
        assert not rr.isError()
        assert rr.registers == sim.read_registers("welder-plc", 1, "holding", 0, 31)
        regs = rr.registers
        energy_mwh = c.convert_from_registers(regs[0:4], DT.UINT64)
        assert energy_mwh == 48_213_774_000  # initial Wh / 0.001, nothing burnt yet
        position_nm = c.convert_from_registers(regs[4:8], DT.INT64)
        assert position_nm in (-12_500_000_000, 3_750_000_000)
        assert c.convert_from_registers(regs[8:12], DT.FLOAT64) == pytest.approx(8421.25)
        assert c.convert_from_registers(regs[20:28], DT.STRING).rstrip("\0") == "MIG-400 #0417"
        state = sim.machine_state("welder-1")
        assert regs[30] & 1 == (state == "running")  # status word, bit 0: arc on
        assert bool(regs[30] & 4) == (state in ("idle", "running"))  # bit 2: ready
        di = await c.read_discrete_inputs(0, count=2, device_id=1)
        assert di.bits[:2] == sim.read_bits("welder-plc", 1, "discrete", 0, 2)


async def test_word_swapped_moulder_values(sim: Simulator) -> None:
    async with client(sim, "moulder-plc") as c:
        regs = (await c.read_holding_registers(0, count=13, device_id=1)).registers
    cdab = c.convert_from_registers
    zone1 = cdab(regs[0:2], DT.FLOAT32, word_order="little")
    assert 170 < zone1 < 250  # a plausible barrel temperature only when decoded CDAB
    shots = cdab(regs[10:12], DT.UINT32, word_order="little")
    assert shots == 1_843_500
    screw = cdab(regs[8:10], DT.INT32, word_order="little")
    assert abs(screw + 1500) <= 30 or abs(screw - 4200) <= 30  # 0.01 mm; negative = retracted
    assert (
        regs[12] == {"off": 0, "idle": 1, "running": 2, "fault": 3}[sim.machine_state("moulder-1")]
    )


async def test_rtu_over_tcp_gateway_routes_unit_ids(sim: Simulator) -> None:
    async with client(sim, "gateway-1") as c:
        meter = await c.read_input_registers(0, count=14, device_id=1)
        furnace = await c.read_holding_registers(0, count=12, device_id=2)
        assert meter.registers == sim.read_registers("gateway-1", 1, "input", 0, 14)
        assert furnace.registers == sim.read_registers("gateway-1", 2, "holding", 0, 12)
        assert furnace.registers[0] == 850  # setpoint, int16
        # heating hours in DCBA: the bytes reversed back give tenths of an hour.
        dcba = furnace.registers[10:12]
        raw = bytes([dcba[1] & 0xFF, dcba[1] >> 8, dcba[0] & 0xFF, dcba[0] >> 8])
        assert int.from_bytes(raw, "big") == 412_305
        with pytest.raises(ModbusException):  # unit 9 is not on the bus: silence
            await c.read_holding_registers(0, count=1, device_id=9)
        # ...and the gateway still answers the next request.
        again = await c.read_input_registers(342, count=2, device_id=1)
        kwh = c.convert_from_registers(again.registers, DT.FLOAT32)
        assert kwh == pytest.approx(18234.6, abs=0.01)


async def test_rtu_on_a_pty_read_by_a_serial_client(sim: Simulator) -> None:
    async with client(sim, "rs485-1") as c:
        rr = await c.read_holding_registers(0, count=4, device_id=3)
        assert not rr.isError()
        assert rr.registers == sim.read_registers("rs485-1", 3, "holding", 0, 4)
        badc = rr.registers[0:2]
        swapped = [((r & 0xFF) << 8) | (r >> 8) for r in badc]
        assert c.convert_from_registers(swapped, DT.UINT32) == 318_764  # 31876.4 h in tenths
        bits = await c.read_discrete_inputs(0, count=2, device_id=3)
        assert bits.bits[:2] == sim.read_bits("rs485-1", 3, "discrete", 0, 2)


async def test_tcp_absent_unit_is_gateway_target_failed(sim: Simulator) -> None:
    async with client(sim, "press-plc") as c:
        rr = await c.read_holding_registers(0, count=1, device_id=2)
    assert rr.isError() and rr.exception_code == 0x0B


# -- exceptions and writes ----------------------------------------------------------------------


async def test_exception_codes(sim: Simulator) -> None:
    assert await raw_mbap(sim, "press-plc", 1, bytes([0x2B, 0x0E, 0x01, 0x00])) == b"\xab\x01"
    assert await raw_mbap(sim, "press-plc", 1, struct.pack(">BHH", 3, 0, 0)) == b"\x83\x03"
    assert await raw_mbap(sim, "press-plc", 1, struct.pack(">BHH", 3, 0, 126)) == b"\x83\x03"
    assert await raw_mbap(sim, "press-plc", 1, struct.pack(">BHH", 1, 0, 2001)) == b"\x81\x03"
    assert await raw_mbap(sim, "press-plc", 1, struct.pack(">BHH", 3, 2, 2)) == b"\x83\x02"
    assert await raw_mbap(sim, "press-plc", 1, struct.pack(">BHH", 4, 0, 1)) == b"\x84\x02"
    assert await raw_mbap(sim, "press-plc", 1, struct.pack(">BHH", 5, 8, 0x1234)) == b"\x85\x03"


async def test_writes_to_writable_points_only(sim: Simulator) -> None:
    async with client(sim, "gateway-1") as c:
        assert not (await c.write_register(0, 900, device_id=2)).isError()
        assert (await c.read_holding_registers(0, count=1, device_id=2)).registers == [900]
        refused = await c.write_register(1, 5, device_id=2)  # the process value is read-only
        assert refused.isError() and refused.exception_code == 2
        multi = await c.write_registers(0, [875], device_id=2)
        assert not multi.isError()
        assert sim.read_registers("gateway-1", 2, "holding", 0, 1) == [875]
    async with client(sim, "press-plc") as c:
        assert not (await c.write_coils(8, [True], device_id=1)).isError()
        assert (await c.read_coils(8, count=1, device_id=1)).bits[0] is True
        assert not (await c.write_coil(8, False, device_id=1)).isError()
        assert sim.read_bits("press-plc", 1, "coil", 8, 1) == [False]
        assert (await c.write_coil(0, True, device_id=1)).exception_code == 2


# -- faults -------------------------------------------------------------------------------------


async def test_timeout_fault_and_clearing_it(sim: Simulator) -> None:
    async with client(sim, "press-plc", wait=0.3) as c:
        await sim.set_fault("press-plc", "timeout")
        with pytest.raises(ModbusException):
            await c.read_holding_registers(0, count=1, device_id=1)
    await sim.clear_fault("press-plc")
    async with client(sim, "press-plc") as c:
        assert not (await c.read_holding_registers(0, count=1, device_id=1)).isError()


@pytest.mark.parametrize("device", ["press-plc", "gateway-1", "rs485-1"])
async def test_exception_fault_on_every_transport(sim: Simulator, device: str) -> None:
    unit = {"press-plc": 1, "gateway-1": 2, "rs485-1": 3}[device]
    await sim.set_fault(device, "exception", 6)
    async with client(sim, device) as c:
        rr = await c.read_holding_registers(0, count=1, device_id=unit)
    assert rr.isError() and rr.exception_code == 6


async def test_machine_fault_leaves_its_bus_neighbour_alone(sim: Simulator) -> None:
    await sim.set_fault("lathe-1", "drop")  # the meter lost power; the furnace has not
    async with client(sim, "gateway-1", wait=0.3) as c:
        with pytest.raises(ModbusException):
            await c.read_input_registers(0, count=2, device_id=1)
        assert not (await c.read_holding_registers(0, count=1, device_id=2)).isError()


async def test_drop_refuses_connections_until_cleared(sim: Simulator) -> None:
    host, port = sim.endpoints["press-plc"].host, sim.endpoints["press-plc"].port
    async with client(sim, "press-plc", wait=0.5) as c:
        await sim.set_fault("press-plc", "drop")
        with pytest.raises(ModbusException):  # the open connection was closed
            await c.read_holding_registers(0, count=1, device_id=1)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)
    await sim.clear_fault("press-plc")
    async with client(sim, "press-plc") as c:
        assert not (await c.read_holding_registers(0, count=1, device_id=1)).isError()


async def test_slow_fault_delays_the_answer(sim: Simulator) -> None:
    await sim.set_fault("moulder-plc", "slow", 0.4)
    loop = asyncio.get_running_loop()
    async with client(sim, "moulder-plc", wait=3) as c:
        began = loop.time()
        assert not (await c.read_holding_registers(0, count=2, device_id=1)).isError()
        assert loop.time() - began >= 0.35


@pytest.mark.parametrize("device", ["welder-plc", "gateway-1", "rs485-1"])
async def test_garbage_fault_is_not_a_valid_answer(sim: Simulator, device: str) -> None:
    unit = {"welder-plc": 1, "gateway-1": 1, "rs485-1": 3}[device]
    await sim.set_fault("all", "garbage")
    async with client(sim, device, wait=0.5) as c:
        try:
            rr = await c.read_holding_registers(0, count=1, device_id=unit)
        except ModbusException:
            return  # rejected as malformed or timed out waiting for a good frame
        assert rr.isError()


async def test_request_count(sim: Simulator) -> None:
    before = sim.request_count("gateway-1")
    async with client(sim, "gateway-1") as c:
        for _ in range(3):
            await c.read_input_registers(0, count=2, device_id=1)
    assert sim.request_count("gateway-1") == before + 3
