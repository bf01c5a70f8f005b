"""Coalesce a device's signals into the fewest Modbus read requests its limits allow."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from collector.config import ModbusDevice, Signal, Table
from collector.decode import DecodeError, Decoder, compile_decoder, is_register_as_is
from collector.schema import FieldValue

__all__ = ["ReadRequest", "coalesce_reads"]

_BIT_TABLES = ("coil", "discrete")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read of `count` registers (or bits) from `address`, and the signals inside it."""

    table: Table
    address: int
    count: int
    signals: tuple[Signal, ...]
    # (field name, index of the signal's first value in the answer, its compiled decoder), for
    # the signals that need decoding
    layout: tuple[tuple[str, int, Decoder], ...] = field(init=False, compare=False)
    # The signals whose value is their register as it is (uint16, no scale): their names, and a
    # function taking their registers out of the answer at once — the common case of an old
    # PLC's counters and states, with no call per value.
    as_is: tuple[str, ...] = field(init=False, compare=False)
    take_as_is: Callable[[Sequence[int]], tuple[int, ...]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        plain = [s for s in self.signals if is_register_as_is(s)]
        layout = tuple(
            (signal.name, signal.wire_address - self.address, compile_decoder(signal))
            for signal in self.signals
            if not is_register_as_is(signal)
        )
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "as_is", tuple(s.name for s in plain))
        object.__setattr__(
            self, "take_as_is", _taker([s.wire_address - self.address for s in plain])
        )

    def decode(self, data: Sequence[Any], values: dict[str, FieldValue]) -> int:
        """Put the signals' values from the whole answer (registers, or bits) into `values`;
        returns how many could not be decoded (left out: a NaN, a value InfluxDB cannot hold)."""
        if self.as_is:
            values.update(zip(self.as_is, self.take_as_is(data), strict=True))
        errors = 0
        for name, at, decode in self.layout:
            try:
                values[name] = decode(data, at)
            except (DecodeError, ValueError):
                errors += 1
        return errors


def _taker(at: list[int]) -> Callable[[Sequence[int]], tuple[int, ...]]:
    if not at:
        return lambda data: ()
    if len(at) == 1:  # itemgetter of one index gives the item, not a tuple of it
        only = at[0]
        return lambda data: (data[only],)
    return itemgetter(*at)


def coalesce_reads(device: ModbusDevice) -> list[ReadRequest]:
    """Plan requests: per table, signals in address order, merged while within the limits.

    Greedy merging is optimal here: a request covers a contiguous run of the sorted signals, so
    extending each request as far as the span limit and the gap limit allow never costs a request.
    """
    requests: list[ReadRequest] = []
    for table in ("coil", "discrete", "holding", "input"):
        signals = sorted(
            (s for s in device.signals if s.wire_table == table),
            key=lambda s: (s.wire_address, s.register_count),
        )
        if not signals:
            continue
        if table in _BIT_TABLES:
            limit, gap = device.max_bits_per_request, device.gap_fill * 16
        else:
            limit, gap = device.max_registers_per_request, device.gap_fill
        if device.one_request_per_signal:
            requests.extend(_request(table, [s]) for s in signals)
        else:
            requests.extend(_request(table, group) for group in _groups(signals, limit, gap))
    return requests


def _groups(signals: Iterable[Signal], limit: int, gap: int) -> list[list[Signal]]:
    groups: list[list[Signal]] = []
    current: list[Signal] = []
    start = end = 0
    for signal in signals:
        s_start, s_end = signal.wire_address, signal.wire_address + signal.register_count
        if current and s_start - end <= gap and max(end, s_end) - start <= limit:
            current.append(signal)
            end = max(end, s_end)
            continue
        if current:
            groups.append(current)
        current, start, end = [signal], s_start, s_end
    if current:
        groups.append(current)
    return groups


def _request(table: Table, signals: list[Signal]) -> ReadRequest:
    start = min(s.wire_address for s in signals)
    end = max(s.wire_address + s.register_count for s in signals)
    return ReadRequest(table, start, end - start, tuple(signals))
