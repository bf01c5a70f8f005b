"""`aguante probe` through the Modbus client seam: pacing, unit and register scans, finding the
register behind a displayed number, watching. Registers are built by the simulators' encoder,
written apart from the collector's decoder, so the two agree only through the numbers."""

from __future__ import annotations

import asyncio
import io
import itertools
import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.cli import build_parser
from collector.config import REGISTER_COUNT, ModbusDevice, Signal
from collector.decode import decode_signal
from collector.probe import (
    Finder,
    Pacer,
    Prober,
    Watch,
    display_tolerance,
    parse_display,
    scan_registers,
    scan_units,
)
from collector.probe_cli import parse_signal_spec, run_probe
from simulators.encoding import encode
from tests.collector.fake_modbus import FakeLink


class FakeClock:
    """Time that moves only when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def fast_prober(link: FakeLink, rate: float = 1000.0) -> Prober:
    clock = FakeClock()
    return Prober(link, Pacer(rate, clock=clock, sleep=clock.sleep))


# -- pacing --------------------------------------------------------------------------------------


async def test_the_pacer_holds_requests_to_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(9):
        await pacer.wait()
        starts.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.25 - 1e-9 for gap in gaps)
    assert starts[-1] - starts[0] == pytest.approx(2.0)


async def test_a_slow_answer_does_not_earn_a_burst_later() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    await pacer.wait()
    clock.now += 5.0  # a read that took five seconds
    first = clock.now
    await pacer.wait()
    await pacer.wait()
    assert clock.now - first == pytest.approx(0.1)


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        Pacer(0)


# -- scan ------------------------------------------------------------------------------------------


async def test_scan_units_finds_the_units_that_answer() -> None:
    link = FakeLink(strict=True)
    link.set(1, "holding", 0, 7)
    link.set(3, "input", 0, 1)  # no holding table: answers exception 1, but it is there
    link.set(5, "holding", 0, 1)
    link.faults[5] = 11  # a gateway: no device behind this unit
    link.set(6, "holding", 4, 1)  # holding 0 does not exist: exception 2, still a device
    await link.connect()
    answers = await scan_units(fast_prober(link), range(1, 8))
    present = {a.unit: a.exception for a in answers if a.present}
    assert present == {1: None, 3: 1, 6: 2}
    assert [r[0] for r in link.requests] == list(range(1, 8))


async def test_scan_registers_finds_each_range_exactly() -> None:
    link = FakeLink(strict=True)
    truth = [(0, 9), (40, 59), (200, 201), (230, 262)]
    for first, last in truth:
        link.set(1, "holding", first, *range(last - first + 1))
    await link.connect()
    prober = fast_prober(link)
    scan = await scan_registers(prober, 1, "holding", 0, 300, resolution=2)
    assert scan.ranges == truth
    assert scan.stopped is None
    assert scan.requests == len(link.requests)
    assert scan.requests < 300 // 2 + 60  # far fewer than one read per address


async def test_scan_registers_says_a_missing_table_and_stops() -> None:
    link = FakeLink(strict=True)
    link.set(1, "holding", 0, 1, 2, 3)
    await link.connect()
    scan = await scan_registers(fast_prober(link), 1, "input", 0, 1000)
    assert scan.ranges == []
    assert scan.stopped is not None and scan.stopped.key == "probe.why_no_table"
    assert not scan.device_silent
    assert scan.requests == 1


async def test_scan_registers_stops_after_reads_in_a_row_go_unanswered() -> None:
    link = FakeLink(strict=True)
    link.set(1, "holding", 0, 1)
    link.faults[1] = "timeout"
    await link.connect()
    scan = await scan_registers(fast_prober(link), 1, "holding", 0, 1000, max_failures=3)
    assert scan.stopped is not None and scan.stopped.key == "probe.why_gave_up"
    assert scan.stopped.values["count"] == 3 and scan.device_silent
    assert scan.requests == 3


@pytest.mark.parametrize("code", [10, 11])
async def test_scan_registers_stops_where_a_gateway_finds_no_device(code: int) -> None:
    link = FakeLink(strict=True)
    link.set(1, "holding", 0, 1)
    link.faults[1] = code
    await link.connect()
    scan = await scan_registers(fast_prober(link), 1, "holding", 0, 1000)
    assert scan.stopped is not None and scan.stopped.key == "probe.why_no_device"
    assert scan.device_silent
    assert scan.requests == 1


async def test_a_device_failing_on_every_read_counts_as_silence() -> None:
    link = FakeLink(strict=True)
    link.set(1, "holding", 0, 1)
    link.faults[1] = 4  # slave device failure, to every read
    await link.connect()
    scan = await scan_registers(fast_prober(link), 1, "holding", 0, 65536, max_failures=3)
    assert scan.stopped is not None and scan.stopped.key == "probe.why_gave_up"
    assert scan.requests == 3


async def test_a_large_resolution_does_not_walk_address_by_address() -> None:
    link = FakeLink(strict=True)
    link.set(1, "input", 0, 1)  # the unit is there; its holding table is all gap
    link.set(1, "holding", 5000, 1)
    await link.connect()
    scan = await scan_registers(fast_prober(link), 1, "holding", 0, 1000, resolution=500)
    assert scan.ranges == []
    assert scan.requests < 40


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 480), st.integers(1, 60)), max_size=6),
    st.integers(1, 12),
)
def test_scan_registers_against_any_map(spans: list[tuple[int, int]], resolution: int) -> None:
    # Every range at least `resolution` long is found exactly; nothing that is not there is.
    present: set[int] = set()
    for first, length in spans:
        present.update(range(first, min(first + length, 500)))
    truth: list[tuple[int, int]] = []
    for address in sorted(present):
        if truth and truth[-1][1] == address - 1:
            truth[-1] = (truth[-1][0], address)
        else:
            truth.append((address, address))
    link = FakeLink(strict=True)
    link.set(1, "input", 999, 0)  # the unit is there even when its holding table is empty
    for address in present:
        link.set(1, "holding", address, address)
    link.tables[(1, "holding")] = link.tables.get((1, "holding"), {}) or {10_000: 0}

    async def scan() -> list[tuple[int, int]]:
        await link.connect()
        result = await scan_registers(
            fast_prober(link), 1, "holding", 0, 500, resolution=resolution
        )
        return result.ranges

    found = asyncio.run(scan())
    assert set(found) <= set(truth)
    assert [r for r in truth if r[1] - r[0] + 1 >= resolution] == [
        r for r in found if r[1] - r[0] + 1 >= resolution
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 240), st.integers(1, 30)), min_size=1, max_size=5),
    st.integers(1, 12),
    st.sampled_from([1, 2, 4]),
    st.sampled_from([0, 5, 7]),
)
def test_scan_registers_with_whole_values_and_a_noisy_line(
    spans: list[tuple[int, int]], resolution: int, width: int, lose_every: int
) -> None:
    # A meter that answers only whole `width`-register values (aligned reads), on a line that
    # loses every n-th request: ranges of whole values at least `resolution` long are found
    # exactly, lost answers asked again instead of taken for missing addresses.
    present: set[int] = set()
    for first, length in spans:
        first = first * width
        present.update(range(first, min(first + length * width, 1000)))
    truth: list[tuple[int, int]] = []
    for address in sorted(present):
        if truth and truth[-1][1] == address - 1:
            truth[-1] = (truth[-1][0], address)
        else:
            truth.append((address, address))
    link = FakeLink(strict=True, aligned=width, lose_every=lose_every)
    for address in present:
        link.set(1, "holding", address, address)

    async def scan() -> list[tuple[int, int]]:
        await link.connect()
        result = await scan_registers(
            fast_prober(link), 1, "holding", 0, 1000, resolution=resolution, width=width,
            max_failures=3,
        )  # fmt: skip
        assert result.stopped is None
        return result.ranges

    found = asyncio.run(scan())
    assert set(found) <= set(truth)
    long_enough = resolution + width - 1
    assert [r for r in truth if r[1] - r[0] + 1 >= long_enough] == [
        r for r in found if r[1] - r[0] + 1 >= long_enough
    ]


# -- find --------------------------------------------------------------------------------------


def _registers_with(
    value: float, kind: str, order: str, scale: float, address: int, size: int = 40
) -> list[int]:
    registers = [(i * 7919) % 50 + 1000 for i in range(size)]  # small, busy neighbours
    raw: float | int = value / scale
    if not kind.startswith("float"):
        raw = round(raw)
    encoded = encode(raw, kind, order)  # type: ignore[arg-type]
    registers[address : address + len(encoded)] = encoded
    return registers


CASES = [
    (231.4, "float32", "ABCD", 1.0),
    (231.4, "float32", "CDAB", 1.0),
    (-12.7, "float32", "BADC", 1.0),
    (88.3, "float32", "DCBA", 1.0),
    (46.3, "int16", "ABCD", 0.1),
    (-7.5, "int16", "ABCD", 0.1),
    (51234, "uint16", "ABCD", 1.0),
    (3.17, "uint16", "BADC", 0.01),
    (1843512, "uint32", "CDAB", 1.0),
    (98765.4, "uint32", "ABCD", 0.1),
    (-420.5, "int32", "DCBA", 0.1),
    (123456.789, "float64", "ABCD", 1.0),
    (-3.14159, "float64", "CDAB", 1.0),
]


@pytest.mark.parametrize(("value", "kind", "order", "scale"), CASES)
def test_find_recovers_type_order_scale_and_address(
    value: float, kind: str, order: str, scale: float
) -> None:
    registers = _registers_with(value, kind, order, scale, address=17)
    text = str(value)
    finder = Finder(base=100)
    candidates = finder.add(registers, parse_display(text), display_tolerance(text))
    if kind.startswith("int") and REGISTER_COUNT[kind] > 1 and value < 0:
        # One negative reading cannot tell a 32-bit value from its low word beside an unused
        # 0xFFFF: the worker reads the display again once it shows a positive number.
        positive = _registers_with(-value, kind, order, scale, address=17)
        candidates = finder.add(positive, -value, display_tolerance(text))
    best = candidates[0]
    assert (best.address, best.order, best.scale) == (117, order, scale)
    assert best.type == kind or kind in best.twins
    # The snippet, read by the collector's own decoder, shows the number.
    signal = Signal.model_validate({**best.signal("value", "holding"), "type": kind})
    got = decode_signal(signal, registers[17 : 17 + REGISTER_COUNT[kind]])
    assert math.isclose(float(got), value, abs_tol=display_tolerance(text))


def test_a_second_reading_narrows_the_candidates() -> None:
    # 46 on the display: the temperature register (460, tenths) and a register that holds 46.
    first = [46, 460, 3000, 12]
    finder = Finder(base=0)
    assert len(finder.add(first, 46.0, 0.5)) >= 2
    later = [46, 512, 3001, 12]
    remaining = finder.add(later, 51.2, 0.05)
    assert [(c.address, c.type, c.scale) for c in remaining] == [(1, "uint16", 0.1)]
    assert remaining[0].values == (46.0, pytest.approx(51.2))


def test_signed_and_unsigned_twins_are_one_candidate() -> None:
    finder = Finder(base=0)
    candidates = finder.add([2314, 1, 1, 1], 231.4, 0.05)
    assert candidates[0].type == "uint16" and candidates[0].twins == ("int16",)
    negative = Finder(base=0).add([(-2314) & 0xFFFF, 1, 1, 1], -231.4, 0.05)
    assert negative[0].type == "int16" and negative[0].twins == ()


def test_a_negative_reading_shows_a_wide_integer_over_its_low_word() -> None:
    # int32 low word first: at 42.13 the low word alone shows the same; at -15.00 the high word
    # is 0xFFFF, which only the 32-bit reading explains.
    finder = Finder(base=0)
    finder.add([4213, 0, 9, 9], 42.13, 0.005)
    low, high = encode(-1500, "int32", "CDAB")
    candidates = finder.add([low, high, 9, 9], -15.0, 0.005)
    assert (candidates[0].address, candidates[0].type, candidates[0].order) == (0, "int32", "CDAB")


def test_a_negative_16_bit_value_next_to_0xffff_is_not_taken_for_a_32_bit_one() -> None:
    # Unused registers often read 0xFFFF: one negative reading beside one proves nothing.
    finder = Finder(base=0)
    first = finder.add([0xFFFF, (-185) & 0xFFFF, 0, 0], -18.5, 0.05)
    assert (1, "int16") in [(c.address, c.type) for c in first]
    again = finder.add([0xFFFF, (-192) & 0xFFFF, 0, 0], -19.2, 0.05)
    assert (1, "int16") in [(c.address, c.type) for c in again]


def test_a_register_the_device_lacks_is_skipped() -> None:
    registers: list[int | None] = [None, 2314, None, 0x4367, 0x6666]
    candidates = Finder(base=0).add(registers, 231.4, 0.05)
    assert [(c.address, c.type) for c in candidates][:2] == [(1, "uint16"), (3, "float32")]
    assert all(c.address not in (0, 2) for c in candidates)


async def test_read_range_reads_one_by_one_around_a_missing_neighbour() -> None:
    link = FakeLink(strict=True)
    link.set(1, "holding", 7, 5, 6)
    link.set(1, "holding", 10, 8)
    await link.connect()
    values = await fast_prober(link).read_range(1, "holding", 7, 4)
    assert values == [5, 6, None, 8]


def test_an_address_from_a_manual_is_tried_with_its_neighbours() -> None:
    registers = [0, 0, 0, 0, 2314, 0, 0]
    near = Finder(base=10, near=15).add(registers, 231.4, 0.05)
    assert near[0].address == 14 and near[0].offset_from == 15
    exact = Finder(base=10, near=14).add(registers, 231.4, 0.05)
    assert exact[0].address == 14 and exact[0].offset_from is None


def test_display_tolerance_and_parsing() -> None:
    assert display_tolerance("231.4") == pytest.approx(0.05)
    assert display_tolerance("1843") == pytest.approx(0.5)
    assert display_tolerance("2,50") == pytest.approx(0.005)
    assert display_tolerance("1.5e3") == pytest.approx(50)
    assert parse_display(" 2,5 ") == 2.5
    for text in ("abc", "nan", "inf", "-inf", "1e400", "1e301"):
        with pytest.raises(ValueError):
            display_tolerance(text)


# -- watch ---------------------------------------------------------------------------------------


async def test_watch_follows_a_counter_and_a_running_bit() -> None:
    link = FakeLink()
    device = ModbusDevice.model_validate(
        {
            "host": "x",
            "port": 1,
            "signals": [
                parse_signal_spec("count=holding:0"),
                parse_signal_spec("running=coil:0"),
                parse_signal_spec("temp=holding:1:int16*0.1"),
            ],
        }
    )
    await link.connect()
    watch = Watch(device)
    prober = fast_prober(link)
    for count, running, temp in ((10, 0, 200), (10, 1, 215), (13, 1, 190)):
        link.set(1, "holding", 0, count, temp)
        link.set(1, "coil", 0, running)
        await watch.poll(prober)
    count_, running_, temp_ = (watch.signals[n] for n in ("count", "running", "temp"))
    assert (count_.first, count_.value, count_.changes) == (10, 13, 1)
    assert (running_.first, running_.value, running_.changes) == (False, True, 1)
    assert (running_.minimum, running_.maximum) == (0, 1)
    assert (temp_.minimum, temp_.maximum) == (pytest.approx(19.0), pytest.approx(21.5))
    assert watch.rounds == 3


def test_signal_specs() -> None:
    assert parse_signal_spec("holding:10:uint32:CDAB") == {
        "name": "holding_10",
        "table": "holding",
        "address": 10,
        "type": "uint32",
        "order": "CDAB",
    }
    assert parse_signal_spec("t=input:3:int16*0.1")["scale"] == 0.1
    assert parse_signal_spec("coil:4")["type"] == "bool"
    assert parse_signal_spec("fault=holding:30.1") == {
        "name": "fault",
        "table": "holding",
        "address": 30,
        "bit": 1,
        "type": "bool",
    }
    with pytest.raises(ValueError):
        parse_signal_spec("holding 10")


# -- the command line, with an in-memory device ---------------------------------------------------


def _run(argv: list[str], link: FakeLink) -> int:
    args = build_parser().parse_args(["probe", *argv, "--rate", "1000", "--lang", "en"])
    return run_probe(args, link)


def test_probe_find_prints_ready_snippets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = FakeLink()
    link.set(1, "holding", 0, *_registers_with(231.4, "float32", "CDAB", 1.0, 6, size=20))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = _run(["find", "--host", "h", "--unit", "1", "--expect", "231,4", "--count", "20"], link)
    out = capsys.readouterr().out
    assert code == 0
    snippet = next(line.strip() for line in out.splitlines() if line.strip().startswith("- "))
    entry: dict[str, Any] = yaml.safe_load(snippet)[0]
    assert entry == {
        "name": "value",
        "table": "holding",
        "address": 6,
        "type": "float32",
        "order": "CDAB",
    }
    assert link.requests == [(1, "holding", 0, 20)]


def test_probe_find_reads_again_for_each_number_typed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = FakeLink()
    link.set(1, "holding", 0, 46, 460, 3000)
    typed = io.StringIO("51.2\n")

    class Changing(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            link.set(1, "holding", 0, 46, 512, 3001)  # the display changed meanwhile
            return typed.readline()

    monkeypatch.setattr("sys.stdin", Changing())
    code = _run(["find", "--host", "h", "--unit", "1", "--expect", "46", "--count", "3"], link)
    out = capsys.readouterr().out
    assert code == 0
    assert len(link.requests) == 2
    assert "1 way(s)" in out and "scale: 0.1" in out


def test_probe_scan_prints_units_and_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    link = FakeLink(strict=True)
    link.set(2, "holding", 0, *range(12))
    assert _run(["scan", "--host", "h", "--units", "1-3", "--timeout", "0.1"], link) == 0
    out = capsys.readouterr().out
    assert "unit 2: answers" in out and "unit 1" not in out and "unit 3" not in out
    link.requests.clear()
    assert _run(["scan", "--host", "h", "--unit", "2", "--end", "100"], link) == 0
    out = capsys.readouterr().out
    assert "holding: 0–11" in out
    assert "input: nothing answers" in out and "exception 1" in out


def test_probe_watch_prints_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    link = FakeLink()
    link.set(1, "holding", 0, 5)
    argv = ["watch", "--host", "h", "--signal", "n=holding:0", "--rounds", "2"]
    assert _run([*argv, "--interval", "0.01"], link) == 0
    out = capsys.readouterr().out
    assert out.count("read 1") == 1 and out.count("read 2") == 1
    rows = [line.split() for line in out.splitlines() if line.startswith("n ")]
    assert rows == [["n", "holding", "0", "5", "5", "5", "0"]] * 2


def test_probe_refuses_bad_arguments_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    link = FakeLink()
    assert _run(["scan", "--units", "1-3"], link) == 2  # neither host nor serial port
    err = capsys.readouterr().err
    assert "--host" in err and "Traceback" not in err
    assert _run(["scan", "--host", "h", "--serial-port", "/dev/x"], link) == 2
    assert "not both" in capsys.readouterr().err
    assert _run(["watch", "--host", "h", "--signal", "holding-3"], link) == 2
    assert "TABLE:ADDRESS" in capsys.readouterr().err
    refused = [
        ["find", "--host", "h", "--unit", "1", "--expect", "nan"],
        ["find", "--host", "h", "--unit", "1", "--expect", "1e400"],
        ["find", "--host", "h", "--unit", "1", "--expect", "5", "--start", "-1"],
        ["find", "--host", "h", "--unit", "1", "--expect", "5", "--top", "0"],
        ["find", "--host", "h", "--unit", "1", "--expect", "5", "--register", "20001"],
        ["scan", "--host", "h", "--units", "1-x"],
        ["watch", "--host", "h", "--signal", "coil:0", "--interval", "nan"],
    ]
    for argv in refused:
        assert _run(argv, link) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("aguante probe: ") and "Traceback" not in err, (argv, err)
    assert link.requests == []


def test_probe_find_takes_a_manuals_register_number(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = FakeLink()
    link.set(1, "input", 0, *encode(229.7, "float32"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = _run(
        ["find", "--host", "h", "--unit", "1", "--expect", "229.7", "--register", "30001"], link
    )
    out = capsys.readouterr().out
    assert code == 0
    assert link.requests[0][1] == "input"
    assert "{name: value, table: input, address: 0, type: float32}" in out


def test_probe_find_asks_again_after_a_typo_at_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = FakeLink()
    link.set(1, "holding", 0, 46, 460, 3000)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("4x6\n51.2\n"))
    link_changes = [(46, 512, 3001)]

    original = link._read

    async def read(*args: Any) -> Any:
        if len(link.requests) == 1 and link_changes:
            link.set(1, "holding", 0, *link_changes.pop())
        return await original(*args)

    monkeypatch.setattr(link, "_read", read)
    code = _run(["find", "--host", "h", "--unit", "1", "--expect", "46", "--count", "3"], link)
    captured = capsys.readouterr()
    assert code == 0
    assert "“4x6” is not a number" in captured.err
    assert "1 way(s)" in captured.out
